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

use pdiff_core::model::{timestep_frequencies, AutoencoderConfig, DenoiserConfig, TokenMap};
use pdiff_core::params::Layout;
use tch::{Kind, Tensor};

/// Sinusoidal embedding of integer timesteps: [B] -> [B, dim] = [sin(t f), cos(t f)],
/// f_i = 10000^(-i / (dim/2)).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let freqs = timestep_frequencies(dim);
    let f = Tensor::from_slice(&freqs).to_device(t.device());
    let args = t.to_kind(Kind::Float).unsqueeze(1) * f.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}

/// The weights the networks of these configurations hold, as (the configuration field that sizes
/// them, how many values): a lower bound (norms and biases are left out), computed without
/// building anything. A loader compares it with the values its weight files hold before it
/// builds the networks, so a manifest whose fields would make libtorch allocate without bound
/// is refused, naming the field, instead of reaching libtorch.
pub fn weight_values(ae: &AutoencoderConfig, den: &DenoiserConfig, layout: &Layout, padded_len: usize, condition_dim: Option<usize>) -> Vec<(String, u128)> {
    let u = |v: i64| v.max(0) as u128;
    let mut terms: Vec<(String, u128)> = Vec::new();
    let latent = match &ae.chunked {
        Some(spec) => {
            let tokens = TokenMap::new(layout, spec.chunk.max(1) as usize).tokens() as u128;
            let (c, h, e) = (u(spec.chunk), u(spec.hidden), u(spec.token_dim));
            terms.push(("param_count".into(), layout.param_count() as u128));
            terms.push(("autoencoder.chunked.hidden".into(), 2 * c * h + 2 * tokens * h + 2 * h * h + 2 * h * e));
            terms.push(("autoencoder.chunked.components".into(), u(spec.components) * tokens * e));
            u(spec.components)
        }
        None => {
            let mut in_ch = 1u128;
            let mut len = padded_len as u128;
            for (i, c) in ae.encoder.iter().enumerate() {
                terms.push((format!("autoencoder.encoder[{i}].channels"), in_ch * u(c.channels) * u(c.kernel)));
                in_ch = u(c.channels);
                len /= u(c.stride).max(1);
            }
            terms.push(("autoencoder.latent_dim".into(), 2 * in_ch * len * u(ae.latent_dim)));
            for (i, (c, &out)) in ae.encoder.iter().rev().zip(&ae.decoder_channels).enumerate() {
                terms.push((format!("autoencoder.decoder_channels[{i}]"), in_ch * u(out) * u(c.kernel)));
                in_ch = u(out);
            }
            if let Some(k) = ae.final_kernel {
                terms.push(("autoencoder.final_kernel".into(), in_ch * u(k)));
            }
            terms.push(("padded_len".into(), padded_len as u128));
            u(ae.latent_dim)
        }
    };
    let t = u(den.time_dim());
    let emb = match den {
        DenoiserConfig::Cnn { channels, kernel, .. } => {
            for (i, w) in channels.windows(2).enumerate() {
                terms.push((format!("denoiser.channels[{}]", i + 1), u(w[0]) * u(w[1]) * u(*kernel)));
            }
            latent
        }
        DenoiserConfig::Mlp { hidden, blocks, .. } => {
            let h = u(*hidden);
            terms.push(("denoiser.hidden".into(), 2 * latent * h));
            terms.push(("denoiser.hidden and denoiser.blocks".into(), u(*blocks) * 2 * h * h));
            h
        }
    };
    terms.push(("denoiser.time_dim".into(), t * t + t * emb));
    if let Some(c) = condition_dim {
        terms.push(("condition.dim".into(), c as u128 * emb));
    }
    terms
}
