//! The parameter autoencoder: [B, Dpad] normalized parameters <-> [B, d] latents, one of the
//! networks of [`super::conv_autoencoder`] or [`super::chunked_autoencoder`].
use super::chunked_autoencoder::ChunkedAutoencoder;
use super::conv_autoencoder::ConvAutoencoder;
use pdiff_core::model::{AutoencoderConfig, TokenMap};
use pdiff_core::params::Layout;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The parameter autoencoder: [B, Dpad] normalized parameters <-> [B, d] latents.
#[derive(Debug)]
pub struct Autoencoder {
    pub config: AutoencoderConfig,
    pub padded_len: i64,
    body: AeBody,
}

#[derive(Debug)]
enum AeBody {
    Conv(ConvAutoencoder),
    Chunked(ChunkedAutoencoder),
}

impl Autoencoder {
    /// Variable names (for export): conv presets: enc.{i}.conv, enc.{i}.norm, enc.fc, dec.fc,
    /// dec.{i}.conv, dec.{i}.norm, dec.out; chunked: see [`ChunkedAutoencoder::new`].
    /// `layout` decides the chunked autoencoder's tokens.
    pub fn new(vs: &nn::Path, config: &AutoencoderConfig, padded_len: usize, layout: &Layout) -> Self {
        let body = match &config.chunked {
            Some(spec) => AeBody::Chunked(ChunkedAutoencoder::new(vs, spec, TokenMap::new(layout, spec.chunk as usize))),
            None => AeBody::Conv(ConvAutoencoder::new(vs, config, padded_len)),
        };
        Autoencoder { config: config.clone(), padded_len: padded_len as i64, body }
    }

    /// Data-dependent init from the K training inputs [K, Dpad]: the decoder starts at their
    /// mean (its output layer at zero), so training can only improve on the mean checkpoint;
    /// the chunked autoencoder also fixes each token's scale (see [`ChunkedAutoencoder`]).
    pub fn init_from_data(&mut self, data: &Tensor) {
        match &mut self.body {
            AeBody::Conv(ae) => ae.init_position_bias(&data.mean_dim(0, false, Kind::Float)),
            AeBody::Chunked(ae) => ae.init_from_data(data),
        }
    }

    /// [B, Dpad] -> [B, d]
    pub fn encode(&self, x: &Tensor) -> Tensor {
        match &self.body {
            AeBody::Conv(ae) => ae.encode(x),
            AeBody::Chunked(ae) => ae.project(&ae.token_latents(x)),
        }
    }

    /// [B, d] -> [B, Dpad]
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match &self.body {
            AeBody::Conv(ae) => ae.decode(z),
            AeBody::Chunked(ae) => ae.decode_all(z),
        }
    }

    /// The chunked autoencoder, if this is one (training works on its tokens directly).
    pub fn chunked(&self) -> Option<&ChunkedAutoencoder> {
        match &self.body {
            AeBody::Chunked(ae) => Some(ae),
            AeBody::Conv(_) => None,
        }
    }

    /// The chunked autoencoder, mutable (training fixes its principal components).
    pub fn chunked_mut(&mut self) -> Option<&mut ChunkedAutoencoder> {
        match &mut self.body {
            AeBody::Chunked(ae) => Some(ae),
            AeBody::Conv(_) => None,
        }
    }
}

impl Module for Autoencoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.decode(&self.encode(xs))
    }
}
