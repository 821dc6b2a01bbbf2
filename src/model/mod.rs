//! The two networks of p-diff, in tch: the parameter autoencoder (SPEC §2) and the latent
//! denoiser (SPEC §3), with the `paper` and `compact` presets.
//!
//! Norms are GroupNorm, which behaves the same in training and inference, so the tch graph and
//! the exported ONNX graph agree (the reference's BatchNorm left in train mode does not).
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

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
    /// Latent size d.
    pub latent_dim: i64,
}

impl AutoencoderConfig {
    /// Product of the strides: the padded length must be a multiple of it (and of 64, SPEC §1).
    pub fn pad_multiple(&self) -> usize {
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

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DenoiserConfig {
    /// Reference denoiser: 1-D CNN over the latent as a 1-channel sequence, kernel k, GroupNorm
    /// + ELU, additive skips from the first convs to their mirrors, time embedding added
    /// (broadcast over channels) before every conv.
    Cnn { channels: Vec<i64>, kernel: i64, time_dim: i64 },
    /// Compact denoiser: residual MLP over the latent vector, time embedding added in every block.
    Mlp { hidden: i64, blocks: i64, time_dim: i64 },
}

impl DenoiserConfig {
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
    /// Reference widths of the paper's code (SPEC §2-3): for GPUs.
    Paper,
    /// Patchifying autoencoder + residual-MLP denoiser: a small fraction of the compute.
    Compact,
}

impl std::str::FromStr for Preset {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "paper" => Ok(Preset::Paper),
            "compact" => Ok(Preset::Compact),
            _ => Err(crate::Error::invalid("preset", format!("'{s}' (expected 'paper' or 'compact')"))),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Paper => "paper",
            Preset::Compact => "compact",
        })
    }
}

impl Preset {
    /// Architectures for a parameter vector of D scalars.
    pub fn architecture(self, d: usize) -> (AutoencoderConfig, DenoiserConfig) {
        match self {
            Preset::Paper => {
                let enc = [64, 128, 256, 256, 32]
                    .iter()
                    .map(|&c| ConvSpec { channels: c, kernel: 7, stride: 2, padding: 3 })
                    .collect();
                // Reference latent sizes: 128 for ~2k params, 256 for ~10k, 768 for 25k-80k.
                let latent = if d <= 4096 { 128 } else if d <= 20_000 { 256 } else { 768 };
                (
                    AutoencoderConfig { encoder: enc, decoder_channels: vec![256, 256, 128, 64, 64], final_kernel: Some(7), latent_dim: latent },
                    DenoiserConfig::Cnn { channels: vec![1, 64, 128, 256, 512, 256, 128, 64, 1], kernel: 7, time_dim: 256 },
                )
            }
            Preset::Compact => (
                AutoencoderConfig {
                    encoder: vec![
                        ConvSpec { channels: 16, kernel: 8, stride: 8, padding: 0 },
                        ConvSpec { channels: 64, kernel: 8, stride: 8, padding: 0 },
                    ],
                    decoder_channels: vec![16, 1],
                    final_kernel: None,
                    latent_dim: 64,
                },
                DenoiserConfig::Mlp { hidden: 512, blocks: 2, time_dim: 128 },
            ),
        }
    }
}

/// The parameter autoencoder: [B, Dpad] normalized parameters <-> [B, d] latents.
#[derive(Debug)]
pub struct Autoencoder {
    pub config: AutoencoderConfig,
    pub padded_len: i64,
    enc_convs: Vec<(nn::Conv1D, nn::GroupNorm)>,
    enc_linear: nn::Linear,
    dec_linear: nn::Linear,
    /// Transposed convs, each with its norm (None for an output layer).
    dec_convs: Vec<(nn::ConvTranspose1D, Option<nn::GroupNorm>)>,
    dec_final: Option<nn::Conv1D>,
    /// One learned bias per (padded) parameter position, added to the output: the decoder
    /// then holds the typical checkpoint exactly and its layers model the deviations.
    dec_position_bias: Tensor,
}

impl Autoencoder {
    /// Variable names (for export): enc.{i}.conv, enc.{i}.norm, enc.fc, dec.fc, dec.{i}.conv,
    /// dec.{i}.norm, dec.out.
    pub fn new(vs: &nn::Path, config: &AutoencoderConfig, padded_len: usize) -> Self {
        let enc_vs = vs / "enc";
        let mut in_ch = 1;
        let mut enc_convs = Vec::new();
        for (i, c) in config.encoder.iter().enumerate() {
            let p = &enc_vs / i;
            let conv = nn::conv1d(
                &p / "conv",
                in_ch,
                c.channels,
                c.kernel,
                nn::ConvConfig { stride: c.stride, padding: c.padding, ..Default::default() },
            );
            let norm = nn::group_norm(&p / "norm", norm_groups(c.channels), c.channels, Default::default());
            enc_convs.push((conv, norm));
            in_ch = c.channels;
        }
        let bl = config.bottleneck_len(padded_len);
        let flat = in_ch * bl;
        let enc_linear = nn::linear(&enc_vs / "fc", flat, config.latent_dim, Default::default());
        let dec_vs = vs / "dec";
        let dec_linear = nn::linear(&dec_vs / "fc", config.latent_dim, flat, Default::default());
        let mut dec_convs = Vec::new();
        let n_dec = config.decoder_channels.len();
        for (i, (c, &out_ch)) in config.encoder.iter().rev().zip(&config.decoder_channels).enumerate() {
            let is_output = config.final_kernel.is_none() && i + 1 == n_dec;
            let p = &dec_vs / i;
            let conv = nn::conv_transpose1d(
                &p / "conv",
                in_ch,
                out_ch,
                c.kernel,
                nn::ConvTransposeConfig {
                    stride: c.stride,
                    padding: c.padding,
                    output_padding: c.output_padding(),
                    ..Default::default()
                },
            );
            let norm = (!is_output).then(|| nn::group_norm(&p / "norm", norm_groups(out_ch), out_ch, Default::default()));
            dec_convs.push((conv, norm));
            in_ch = out_ch;
        }
        let dec_final = config.final_kernel.map(|k| {
            nn::conv1d(&dec_vs / "out", in_ch, 1, k, nn::ConvConfig { padding: k / 2, ..Default::default() })
        });
        let dec_position_bias = (&dec_vs / "out").zeros("position_bias", &[padded_len as i64]);
        Autoencoder {
            config: config.clone(),
            padded_len: padded_len as i64,
            enc_convs,
            enc_linear,
            dec_linear,
            dec_convs,
            dec_final,
            dec_position_bias,
        }
    }

    /// Data-dependent init: start the per-position output bias at the mean of the training
    /// inputs, so the layers learn deviations from the typical checkpoint from the first step.
    /// The output layer starts at zero as well, so the untrained decoder reproduces exactly
    /// that mean and training can only improve on it (as zero-initialised residual branches).
    pub fn init_position_bias(&mut self, mean: &Tensor) {
        tch::no_grad(|| {
            self.dec_position_bias.copy_(mean);
            let (ws, bs) = match (&mut self.dec_final, self.dec_convs.last_mut()) {
                (Some(out), _) => (&mut out.ws, out.bs.as_mut()),
                (None, Some((conv, _))) => (&mut conv.ws, conv.bs.as_mut()),
                (None, None) => return,
            };
            let _ = ws.zero_();
            if let Some(b) = bs {
                let _ = b.zero_();
            }
        });
    }

    /// [B, Dpad] -> [B, d]
    pub fn encode(&self, x: &Tensor) -> Tensor {
        // The encoder sees the deviation from the typical checkpoint (the decoder's position
        // bias): checkpoints of one trajectory differ by ~1% of a tensor's spread, a signal the
        // first GroupNorm brings to unit scale instead of drowning it in the shared pattern.
        let mut h = (x - self.dec_position_bias.detach()).unsqueeze(1);
        for ((conv, norm), spec) in self.enc_convs.iter().zip(&self.config.encoder) {
            h = conv1d_fast(&h, conv, spec).apply(norm).leaky_relu();
        }
        h.flatten(1, -1).apply(&self.enc_linear)
    }

    /// [B, d] -> [B, Dpad]
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let b = z.size()[0];
        let c = self.config.encoder.last().map(|c| c.channels).unwrap_or(1);
        let mut h = z.apply(&self.dec_linear).view([b, c, self.config.bottleneck_len(self.padded_len as usize)]);
        for ((conv, norm), spec) in self.dec_convs.iter().zip(self.config.encoder.iter().rev()) {
            h = conv_transpose1d_fast(&h, conv, spec);
            if let Some(norm) = norm {
                h = h.apply(norm).elu();
            }
        }
        if let Some(out) = &self.dec_final {
            h = h.apply(out);
        }
        h.squeeze_dim(1) + &self.dec_position_bias
    }
}

/// True when a conv is a pure patch operation (kernel == stride, no padding): libtorch's CPU
/// (transposed) convolution is slow for it (col2im), a reshape + matmul is the same arithmetic.
fn is_patch(spec: &ConvSpec) -> bool {
    spec.kernel == spec.stride && spec.padding == 0
}

/// Conv1d; patch convs as [B, L, C*k] x [C*k, O].
fn conv1d_fast(h: &Tensor, conv: &nn::Conv1D, spec: &ConvSpec) -> Tensor {
    if !is_patch(spec) {
        return h.apply(conv);
    }
    let (b, c, l) = h.size3().expect("[B, C, L]");
    let k = spec.kernel;
    let o = conv.ws.size()[0];
    // h[b, c, i*k + j] -> [B, L/k, C*k] with (c, j) order, matching weight [O, C, k].
    let patches = h.view([b, c, l / k, k]).permute([0, 2, 1, 3]).reshape([b, l / k, c * k]);
    let y = patches.matmul(&conv.ws.view([o, c * k]).tr());
    let y = match &conv.bs {
        Some(bias) => y + bias,
        None => y,
    };
    y.permute([0, 2, 1])
}

/// ConvTranspose1d; patch convs as [B, L, C] x [C, O*k], then interleave.
fn conv_transpose1d_fast(h: &Tensor, conv: &nn::ConvTranspose1D, spec: &ConvSpec) -> Tensor {
    if !is_patch(spec) {
        return h.apply(conv);
    }
    let (b, c, l) = h.size3().expect("[B, C, L]");
    let k = spec.kernel;
    let o = conv.ws.size()[1];
    // out[b, o, i*k + j] = sum_c W[c, o, j] h[b, c, i] + bias[o]; weight is [C, O, k].
    let y = h.transpose(1, 2).matmul(&conv.ws.view([c, o * k]));
    let y = y.view([b, l, o, k]).permute([0, 2, 1, 3]).reshape([b, o, l * k]);
    match &conv.bs {
        Some(bias) => y + bias.view([1, o, 1]),
        None => y,
    }
}

/// Sinusoidal embedding of integer timesteps: [B] -> [B, dim] = [sin(t f), cos(t f)],
/// f_i = 10000^(-i / (dim/2)).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let freqs = timestep_frequencies(dim);
    let f = Tensor::from_slice(&freqs).to_device(t.device());
    let args = t.to_kind(Kind::Float).unsqueeze(1) * f.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}

/// The frequencies of [`timestep_embedding`], shared with the ONNX export.
pub fn timestep_frequencies(dim: i64) -> Vec<f32> {
    let half = dim / 2;
    (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32).collect()
}

/// The latent denoiser: (x_t [B, d], t [B] i64) -> predicted noise [B, d].
#[derive(Debug)]
pub struct Denoiser {
    pub config: DenoiserConfig,
    pub latent_dim: i64,
    time_fc1: nn::Linear,
    time_fc2: nn::Linear,
    body: DenoiserBody,
}

#[derive(Debug)]
enum DenoiserBody {
    Cnn { convs: Vec<nn::Conv1D>, norms: Vec<nn::GroupNorm> },
    Mlp { input: nn::Linear, blocks: Vec<(nn::Linear, nn::Linear)>, output: nn::Linear },
}

impl Denoiser {
    /// Variable names (for export): time.fc1, time.fc2, then cnn: conv.{i}, norm.{i};
    /// mlp: in, block.{i}.fc1, block.{i}.fc2, out.
    pub fn new(vs: &nn::Path, config: &DenoiserConfig, latent_dim: i64) -> Self {
        let tdim = config.time_dim();
        let time_fc1 = nn::linear(vs / "time" / "fc1", tdim, tdim, Default::default());
        let (emb_out, body) = match config {
            DenoiserConfig::Cnn { channels, kernel, .. } => {
                let mut convs = Vec::new();
                let mut norms = Vec::new();
                for i in 0..channels.len() - 1 {
                    let conv = nn::conv1d(
                        vs / "conv" / i,
                        channels[i],
                        channels[i + 1],
                        *kernel,
                        nn::ConvConfig { padding: kernel / 2, ..Default::default() },
                    );
                    convs.push(conv);
                    if i + 2 < channels.len() {
                        norms.push(nn::group_norm(vs / "norm" / i, norm_groups(channels[i + 1]), channels[i + 1], Default::default()));
                    }
                }
                (latent_dim, DenoiserBody::Cnn { convs, norms })
            }
            DenoiserConfig::Mlp { hidden, blocks, .. } => {
                let input = nn::linear(vs / "in", latent_dim, *hidden, Default::default());
                let blocks = (0..*blocks)
                    .map(|i| {
                        let p = vs / "block" / i;
                        (nn::linear(&p / "fc1", *hidden, *hidden, Default::default()), nn::linear(&p / "fc2", *hidden, *hidden, Default::default()))
                    })
                    .collect();
                let output = nn::linear(vs / "out", *hidden, latent_dim, Default::default());
                (*hidden, DenoiserBody::Mlp { input, blocks, output })
            }
        };
        let time_fc2 = nn::linear(vs / "time" / "fc2", tdim, emb_out, Default::default());
        Denoiser { config: config.clone(), latent_dim, time_fc1, time_fc2, body }
    }

    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let temb = timestep_embedding(t, self.config.time_dim()).apply(&self.time_fc1).silu().apply(&self.time_fc2);
        match &self.body {
            DenoiserBody::Cnn { convs, norms } => {
                // temb: [B, d], broadcast over channels of the [B, C, d] sequence.
                let temb = temb.unsqueeze(1);
                let n = convs.len();
                let mut h = x.unsqueeze(1);
                let mut skips: Vec<Tensor> = Vec::new();
                for (i, conv) in convs.iter().enumerate() {
                    h = (&h + &temb).apply(conv);
                    if i + 1 == n {
                        break;
                    }
                    h = h.apply(&norms[i]).elu();
                    // Additive skips: outputs of the first convs are added to the outputs of
                    // their mirrors (same channel count) in the second half.
                    let mirror = n - 2 - i;
                    if i < mirror && i < n / 2 - 1 {
                        skips.push(h.shallow_clone());
                    } else if mirror < i && mirror < skips.len() {
                        h = h + &skips[mirror];
                    }
                }
                h.squeeze_dim(1)
            }
            DenoiserBody::Mlp { input, blocks, output } => {
                let mut h = x.apply(input);
                for (fc1, fc2) in blocks {
                    h = &h + (&h + &temb).silu().apply(fc1).silu().apply(fc2);
                }
                h.silu().apply(output)
            }
        }
    }
}

impl Module for Autoencoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.decode(&self.encode(xs))
    }
}
