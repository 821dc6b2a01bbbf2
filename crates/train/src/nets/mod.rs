//! The generator's networks on tch, one per file: the parameter autoencoder (convolutional or
//! chunked) and the latent denoiser (a CNN or a residual MLP body under a time and condition
//! embedding). Their configurations are pdiff-core's `model`.
mod autoencoder;
mod chunked_autoencoder;
mod cnn_denoiser;
mod conv_autoencoder;
mod denoiser;
mod mlp_denoiser;

pub use autoencoder::Autoencoder;
pub use chunked_autoencoder::ChunkedAutoencoder;
pub use denoiser::{ConditionBatch, Denoiser};

use pdiff_core::model::timestep_frequencies;
use tch::{Kind, Tensor};

/// Sinusoidal embedding of integer timesteps: [B] -> [B, dim] = [sin(t f), cos(t f)],
/// f_i = 10000^(-i / (dim/2)).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let freqs = timestep_frequencies(dim);
    let f = Tensor::from_slice(&freqs).to_device(t.device());
    let args = t.to_kind(Kind::Float).unsqueeze(1) * f.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}
