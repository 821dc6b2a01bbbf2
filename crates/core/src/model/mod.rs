//! The two networks of p-diff: the parameter autoencoder and the latent denoiser
//! (docs/design.md, "Model"), with the `paper` and `compact` presets.
//!
//! This file holds their configurations, which the bundle manifest records and which need no
//! libtorch; the tch networks themselves are in `nets` (feature `train`).
//!
//! Norms are GroupNorm, which behaves the same in training and inference, so the tch graph and
//! the exported ONNX graph agree (the reference's BatchNorm left in train mode does not).
use crate::limits::{MAX_DEPTH, MAX_KERNEL, MAX_LATENT_DIM, MAX_PARAMS, MAX_WIDTH};
use serde::{Deserialize, Serialize};

mod tokens;
pub use tokens::{auto_chunk_len, TokenMap, AUTO_CHUNKED_MIN_PARAMS, CHUNKED_COMPONENTS, MAX_CHUNK_LEN};

/// Number of GroupNorm groups for a layer of `channels` channels.
pub fn norm_groups(channels: i64) -> i64 {
    let mut g = 8.min(channels);
    while channels % g != 0 {
        g -= 1;
    }
    g
}

/// GroupNorm epsilon, shared with the ONNX export.
pub const NORM_EPS: f64 = 1e-5;

/// One strided 1-D convolution of the encoder (mirrored by a transposed one in the decoder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    pub channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}

impl ConvSpec {
    /// Output padding that makes the transposed conv exactly undo the stride.
    pub fn output_padding(&self) -> i64 {
        self.stride + 2 * self.padding - self.kernel
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderConfig {
    /// Encoder convolutions, input side first (input has 1 channel).
    pub encoder: Vec<ConvSpec>,
    /// Output channels of the decoder's transposed convolutions, one per encoder conv.
    pub decoder_channels: Vec<i64>,
    /// `Some(k)`: every transposed conv is followed by GroupNorm + ELU, then a final
    /// Conv1d(decoder_channels.last -> 1, kernel k, "same" padding) gives the output (paper).
    /// `None`: the last transposed conv is the output layer (1 channel, no norm/activation),
    /// so no full-resolution hidden tensor exists (compact).
    pub final_kernel: Option<i64>,
    /// Latent size d. For a chunked autoencoder it is derived: tokens x `token_dim`.
    pub latent_dim: i64,
    /// `Some`: the chunked (tokenized) autoencoder of the `chunked` preset instead of the
    /// convolutions above (which are then empty). Absent in the manifests of other presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked: Option<ChunkedSpec>,
}

/// The chunked autoencoder (docs/design.md, "Model"): the flat vector is cut into tokens of at
/// most `chunk` scalars (each tensor row by row, a row longer than `chunk` into several tokens;
/// [`TokenMap`]), and ONE shared network with a learned per-token position embedding encodes
/// every token to `token_dim` latent values and decodes them back. Its size grows with the
/// number of tokens (~ D / chunk), not with D: the price of a dense layer over D is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkedSpec {
    /// Scalars per token (C).
    pub chunk: i64,
    /// Width of the shared per-token network's hidden layers.
    pub hidden: i64,
    /// Latent values per token (e); the latent is the token sequence, [tokens x token_dim].
    pub token_dim: i64,
    /// Tokens drawn per checkpoint in one autoencoder training step: tokens are encoded and
    /// decoded independently, so a step costs the same whatever D is.
    pub tokens_per_step: i64,
    /// The diffusion's latent: the first `components` principal directions of the K training
    /// checkpoints' token latents (fixed after the autoencoder is trained, at most K - 1), the
    /// latent then being those `components` coefficients and the denoiser an MLP over them.
    pub components: i64,
}

impl AutoencoderConfig {
    /// The fields that shape the networks, checked before any is built; the error names the
    /// field. A chunked autoencoder's `latent_dim` is derived from the layout, not checked here.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(spec) = &self.chunked {
            return spec.validate();
        }
        if self.encoder.is_empty() || self.decoder_channels.len() != self.encoder.len() {
            return Err(crate::Error::invalid("autoencoder", "decoder_channels must have one entry per encoder conv"));
        }
        if self.encoder.len() > MAX_DEPTH {
            return Err(crate::Error::invalid("autoencoder.encoder", format!("{} convolutions (at most {MAX_DEPTH})", self.encoder.len())));
        }
        for (i, c) in self.encoder.iter().enumerate() {
            in_range(&format!("autoencoder.encoder[{i}].channels"), c.channels, 1, MAX_WIDTH)?;
            in_range(&format!("autoencoder.encoder[{i}].kernel"), c.kernel, 1, MAX_KERNEL)?;
            in_range(&format!("autoencoder.encoder[{i}].stride"), c.stride, 1, MAX_KERNEL)?;
            in_range(&format!("autoencoder.encoder[{i}].padding"), c.padding, 0, c.kernel)?;
        }
        for (i, &c) in self.decoder_channels.iter().enumerate() {
            in_range(&format!("autoencoder.decoder_channels[{i}]"), c, 1, MAX_WIDTH)?;
        }
        if let Some(k) = self.final_kernel {
            in_range("autoencoder.final_kernel", k, 1, MAX_KERNEL)?;
        }
        if self.final_kernel.is_none() && self.decoder_channels.last() != Some(&1) {
            return Err(crate::Error::invalid("autoencoder", "without final_kernel the last decoder channel count must be 1"));
        }
        in_range("autoencoder.latent_dim", self.latent_dim, 1, MAX_LATENT_DIM as i64)
    }

    /// Product of the strides: the padded length must be a multiple of it (and of 64, the reference's padding).
    pub fn pad_multiple(&self) -> usize {
        if self.chunked.is_some() {
            // The chunked autoencoder pads inside its token grid, never the flat vector.
            return 1;
        }
        let s: i64 = self.encoder.iter().map(|c| c.stride).product();
        let s = s.max(1) as usize;
        let m = 64usize;
        m / gcd(m, s) * s
    }
    pub fn padded_len(&self, d: usize) -> usize {
        d.div_ceil(self.pad_multiple()) * self.pad_multiple()
    }
    /// Sequence length at the bottleneck for a padded input length.
    pub fn bottleneck_len(&self, padded: usize) -> i64 {
        let s: i64 = self.encoder.iter().map(|c| c.stride).product();
        padded as i64 / s
    }
}

/// `value` of `field` within `min ..= max`, or an error naming the field and the range.
fn in_range(field: &str, value: i64, min: i64, max: i64) -> crate::Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(crate::Error::invalid(field, format!("{value} (must be {min} ..= {max})")))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl ChunkedSpec {
    /// Every size at least 1; the error names the field.
    pub fn validate(&self) -> crate::Result<()> {
        for (field, v, max) in [
            ("chunk", self.chunk, MAX_CHUNK_LEN as i64),
            ("hidden", self.hidden, MAX_WIDTH),
            ("token_dim", self.token_dim, MAX_WIDTH),
            ("tokens_per_step", self.tokens_per_step, MAX_PARAMS as i64),
            ("components", self.components, MAX_LATENT_DIM as i64),
        ] {
            in_range(&format!("autoencoder.chunked.{field}"), v, 1, max)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DenoiserConfig {
    /// Reference denoiser: 1-D CNN over the latent as a 1-channel sequence, kernel k, GroupNorm
    /// and ELU, additive skips from the first convs to their mirrors, time embedding added
    /// (broadcast over channels) before every conv.
    Cnn { channels: Vec<i64>, kernel: i64, time_dim: i64 },
    /// Compact denoiser: residual MLP over the latent vector, time embedding added in every block.
    Mlp { hidden: i64, blocks: i64, time_dim: i64 },
}

impl DenoiserConfig {
    /// The fields that shape the network, checked before it is built; the error names the
    /// field.
    pub fn validate(&self) -> crate::Result<()> {
        let time_dim = self.time_dim();
        if time_dim % 2 != 0 {
            return Err(crate::Error::invalid("denoiser.time_dim", format!("{time_dim} (must be even: sin and cos halves)")));
        }
        in_range("denoiser.time_dim", time_dim, 2, MAX_WIDTH)?;
        match self {
            DenoiserConfig::Cnn { channels, kernel, .. } => {
                if channels.len() < 2 || channels.len() > MAX_DEPTH + 1 || channels.first() != Some(&1) || channels.last() != Some(&1) {
                    return Err(crate::Error::invalid("denoiser.channels", format!("{channels:?} (2 ..= {} entries, from 1 to 1)", MAX_DEPTH + 1)));
                }
                for (i, &c) in channels.iter().enumerate() {
                    in_range(&format!("denoiser.channels[{i}]"), c, 1, MAX_WIDTH)?;
                }
                if kernel % 2 == 0 {
                    return Err(crate::Error::invalid("denoiser.kernel", format!("{kernel} (must be odd)")));
                }
                in_range("denoiser.kernel", *kernel, 1, MAX_KERNEL)?;
            }
            DenoiserConfig::Mlp { hidden, blocks, .. } => {
                in_range("denoiser.hidden", *hidden, 1, MAX_WIDTH)?;
                in_range("denoiser.blocks", *blocks, 0, MAX_DEPTH as i64)?;
            }
        }
        Ok(())
    }

    pub fn time_dim(&self) -> i64 {
        match self {
            DenoiserConfig::Cnn { time_dim, .. } | DenoiserConfig::Mlp { time_dim, .. } => *time_dim,
        }
    }
}

/// A named architecture + optimisation preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Reference widths of the paper's code: for GPUs.
    Paper,
    /// Patchifying autoencoder + residual-MLP denoiser: a small fraction of the compute.
    Compact,
    /// Chunked (tokenized) autoencoder + a residual MLP over the principal coefficients of its
    /// token latents: generator size and training memory grow with the number of tokens
    /// (~ D / chunk), not with D. For large D.
    Chunked,
}

impl std::str::FromStr for Preset {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "paper" => Ok(Preset::Paper),
            "compact" => Ok(Preset::Compact),
            "chunked" => Ok(Preset::Chunked),
            _ => Err(crate::Error::invalid("preset", format!("'{s}' (expected 'paper', 'compact' or 'chunked')"))),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Paper => "paper",
            Preset::Compact => "compact",
            Preset::Chunked => "chunked",
        })
    }
}

impl Preset {
    /// The preset for a parameter vector of D scalars when the user names none: `compact` up
    /// to [`AUTO_CHUNKED_MIN_PARAMS`] (the preset of every published small-D number), `chunked`
    /// above, where compact's two dense layers of 64 x D weights (plus gradients and AdamW's
    /// two moments) stop fitting a CPU's time and memory.
    pub fn auto(d: usize) -> Preset {
        if d < AUTO_CHUNKED_MIN_PARAMS {
            Preset::Compact
        } else {
            Preset::Chunked
        }
    }

    /// Architectures for a parameter vector of D scalars. For `chunked`, `latent_dim` is 0
    /// here: it is tokens x token_dim, and the tokens depend on the layout ([`TokenMap`]).
    pub fn architecture(self, d: usize) -> (AutoencoderConfig, DenoiserConfig) {
        match self {
            Preset::Paper => {
                let enc = [64, 128, 256, 256, 32].iter().map(|&c| ConvSpec { channels: c, kernel: 7, stride: 2, padding: 3 }).collect();
                // Reference latent sizes: 128 for ~2k params, 256 for ~10k, 768 for 25k-80k.
                let latent = if d <= 4096 {
                    128
                } else if d <= 20_000 {
                    256
                } else {
                    768
                };
                (
                    AutoencoderConfig { encoder: enc, decoder_channels: vec![256, 256, 128, 64, 64], final_kernel: Some(7), latent_dim: latent, chunked: None },
                    DenoiserConfig::Cnn { channels: vec![1, 64, 128, 256, 512, 256, 128, 64, 1], kernel: 7, time_dim: 256 },
                )
            }
            Preset::Compact => (
                AutoencoderConfig {
                    encoder: vec![ConvSpec { channels: 16, kernel: 8, stride: 8, padding: 0 }, ConvSpec { channels: 64, kernel: 8, stride: 8, padding: 0 }],
                    decoder_channels: vec![16, 1],
                    final_kernel: None,
                    latent_dim: 64,
                    chunked: None,
                },
                DenoiserConfig::Mlp { hidden: 512, blocks: 2, time_dim: 128 },
            ),
            Preset::Chunked => (
                AutoencoderConfig {
                    encoder: Vec::new(),
                    decoder_channels: Vec::new(),
                    final_kernel: None,
                    latent_dim: 0,
                    chunked: Some(ChunkedSpec {
                        chunk: auto_chunk_len(d) as i64,
                        hidden: 16,
                        token_dim: 4,
                        tokens_per_step: 128,
                        components: CHUNKED_COMPONENTS,
                    }),
                },
                DenoiserConfig::Mlp { hidden: 64, blocks: 2, time_dim: 64 },
            ),
        }
    }
}

/// The frequencies of [`timestep_embedding`], shared with the ONNX export.
pub fn timestep_frequencies(dim: i64) -> Vec<f32> {
    let half = dim / 2;
    (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32).collect()
}
