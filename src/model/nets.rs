//! The tch networks of the two model configurations of [`super`]: the parameter autoencoder
//! and the latent denoiser (feature `train`).
use super::{norm_groups, timestep_frequencies, AutoencoderConfig, ChunkedSpec, ConvSpec, DenoiserConfig, TokenMap};
use crate::params::Layout;
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

/// The chunked autoencoder (preset `chunked`): tokens of the flat vector ([`TokenMap`]) through
/// one shared network. Encoder, per token j: u = (x_j - anchor_j) / scale_j (padding slots 0),
/// h = LeakyReLU(W_in u + b + P_enc[j]), h = LeakyReLU(W_mid h + b), z_j = W_out h + b
/// (token_dim values). Decoder: h = ELU(W_in z_j + b + P_dec[j]), h = ELU(W_mid h + b),
/// x_j = anchor_j + scale_j (W_out h + b). `anchor` (the mean training input, D values) and
/// `scale` (each token's RMS deviation from it across the K inputs, one value per token) are
/// fixed at init, not trained: they are data, like the manifest's normalization. Everything
/// trained has the size of the token (chunk) or of the token count, not of D.
#[derive(Debug)]
pub struct ChunkedAutoencoder {
    pub tokens: TokenMap,
    token_dim: i64,
    /// [tokens, chunk] flat index of every grid slot (0 for padding).
    grid_index: Tensor,
    /// [tokens, chunk] 1 for a parameter, 0 for padding.
    slot_mask: Tensor,
    /// [D] the grid slot of every flat index.
    flat_index: Tensor,
    anchor: Tensor,
    scale: Tensor,
    /// `components` > 0: the principal directions [components, tokens x token_dim] of the
    /// training checkpoints' token latents (orthonormal rows) and their mean [tokens x
    /// token_dim]; the latent is the coefficients (z_tok - mean) basis^T. Fixed data, like
    /// `anchor`.
    principal: Option<(Tensor, Tensor)>,
    enc_in: nn::Linear,
    enc_position: Tensor,
    enc_mid: nn::Linear,
    enc_out: nn::Linear,
    dec_in: nn::Linear,
    dec_position: Tensor,
    dec_mid: nn::Linear,
    dec_out: nn::Linear,
}

/// Below this a token's RMS deviation is taken as this (a token that never changes).
const TOKEN_SCALE_FLOOR: f64 = 1e-6;

impl ChunkedAutoencoder {
    /// Variable names: enc.anchor, enc.scale, enc.basis, enc.basis_mean (fixed; the basis
    /// only with principal components), enc.in, enc.position, enc.mid, enc.out, dec.in,
    /// dec.position, dec.mid, dec.out.
    fn new(vs: &nn::Path, spec: &ChunkedSpec, tokens: TokenMap) -> Self {
        let (n, c, h, e) = (tokens.tokens() as i64, tokens.chunk as i64, spec.hidden, spec.token_dim);
        let device = vs.device();
        let enc = vs / "enc";
        let dec = vs / "dec";
        let position = nn::Init::Randn { mean: 0.0, stdev: 0.1 };
        let anchor = enc.zeros_no_train("anchor", &[tokens.param_count as i64]);
        let scale = enc.ones_no_train("scale", &[n]);
        let principal = (spec.components > 0).then(|| (enc.zeros_no_train("basis", &[spec.components, n * e]), enc.zeros_no_train("basis_mean", &[n * e])));
        let enc_in = nn::linear(&enc / "in", c, h, Default::default());
        let enc_position = enc.var("position", &[n, h], position);
        let enc_mid = nn::linear(&enc / "mid", h, h, Default::default());
        let enc_out = nn::linear(&enc / "out", h, e, Default::default());
        let dec_in = nn::linear(&dec / "in", e, h, Default::default());
        let dec_position = dec.var("position", &[n, h], position);
        let dec_mid = nn::linear(&dec / "mid", h, h, Default::default());
        let dec_out = nn::linear(&dec / "out", h, c, Default::default());
        let grid_index = Tensor::from_slice(&tokens.grid_index()).view([n, c]).to_device(device);
        let slot_mask = Tensor::from_slice(&tokens.slot_mask()).view([n, c]).to_device(device);
        let flat_index = Tensor::from_slice(&tokens.flat_index()).to_device(device);
        ChunkedAutoencoder {
            tokens,
            token_dim: e,
            grid_index,
            slot_mask,
            flat_index,
            anchor,
            scale,
            principal,
            enc_in,
            enc_position,
            enc_mid,
            enc_out,
            dec_in,
            dec_position,
            dec_mid,
            dec_out,
        }
    }

    pub fn token_count(&self) -> i64 {
        self.tokens.tokens() as i64
    }

    /// anchor = mean input; scale = each token's RMS deviation from it over the K inputs
    /// (floored), so every token reaches the shared network at unit scale whatever its tensor's
    /// spread; the output layer starts at zero (the untrained decoder gives the mean).
    fn init_from_data(&mut self, data: &Tensor) {
        tch::no_grad(|| {
            let mean = data.mean_dim(0, false, Kind::Float);
            self.anchor.copy_(&mean);
            let (n, k) = (self.token_count(), data.size()[0]);
            let all = Tensor::arange(n, (Kind::Int64, data.device()));
            let mut sum = Tensor::zeros([n], (Kind::Float, data.device()));
            // In slices of rows: the whole [K, tokens, chunk] grid can be larger than the data.
            for start in (0..k).step_by(16) {
                let rows = data.narrow(0, start, 16.min(k - start));
                let dev = self.deviation(&rows, &all);
                sum += dev.square().sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float);
            }
            let slots = self.slot_mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1.0);
            let rms = (sum / (slots * k as f64)).sqrt().clamp_min(TOKEN_SCALE_FLOOR);
            self.scale.copy_(&rms);
            let _ = self.dec_out.ws.zero_();
            if let Some(b) = self.dec_out.bs.as_mut() {
                let _ = b.zero_();
            }
        });
    }

    /// Every token of x [B, D] to latents, flat: [B, tokens x token_dim].
    pub fn token_latents(&self, x: &Tensor) -> Tensor {
        let b = x.size()[0];
        self.encode_tokens(x, None).view([b, -1])
    }

    /// Token latents [B, tokens x token_dim] -> the autoencoder's latent: their principal
    /// coefficients [B, components], or themselves without principal components.
    pub fn project(&self, z_tok: &Tensor) -> Tensor {
        match &self.principal {
            Some((basis, mean)) => (z_tok - mean.unsqueeze(0)).matmul(&basis.tr()),
            None => z_tok.shallow_clone(),
        }
    }

    /// With principal components (`ChunkedSpec::components`), fix them from the token latents
    /// `z` [K, L] of the training checkpoints: the first `components` right singular vectors of
    /// z minus its mean (training resolves `components` to at most min(K - 1, L)). No-op
    /// without.
    pub fn fit_principal_components(&mut self, z: &Tensor) {
        let Some((basis, mean)) = self.principal.as_mut() else {
            return;
        };
        tch::no_grad(|| {
            let mu = z.mean_dim(0, false, Kind::Float);
            let (_, _, v) = (z - mu.unsqueeze(0)).svd(true, true);
            basis.copy_(&v.narrow(1, 0, basis.size()[0]).tr());
            mean.copy_(&mu);
        });
    }

    /// The tokens `tok` [T] of x [B, D] as deviations from the anchor, [B, T, chunk] (padding 0).
    pub fn deviation(&self, x: &Tensor, tok: &Tensor) -> Tensor {
        let rows = Tensor::arange(x.size()[0], (Kind::Int64, x.device()));
        self.deviation_of_rows(x, &rows, tok)
    }

    /// The tokens `tok` [T] of rows `rows` [B] of data [K, D], as [`Self::deviation`], reading
    /// only those B x T x chunk values (not B whole rows of D).
    pub fn deviation_of_rows(&self, data: &Tensor, rows: &Tensor, tok: &Tensor) -> Tensor {
        let (b, t, c) = (rows.size()[0], tok.size()[0], self.tokens.chunk as i64);
        let d = data.size()[1];
        let idx = self.grid_index.index_select(0, tok).view([1, -1]);
        let mask = self.slot_mask.index_select(0, tok);
        let xg = data.reshape([-1]).take(&(rows.unsqueeze(1) * d + &idx)).view([b, t, c]);
        let ag = self.anchor.index_select(0, &idx.view([-1])).view([1, t, c]);
        (xg - ag) * mask
    }

    /// Every token (or those of `tok`) of x [B, D] to latents [B, T, token_dim].
    pub fn encode_tokens(&self, x: &Tensor, tok: Option<&Tensor>) -> Tensor {
        let all;
        let tok = match tok {
            Some(t) => t,
            None => {
                all = Tensor::arange(self.token_count(), (Kind::Int64, x.device()));
                &all
            }
        };
        let dev = self.deviation(x, tok);
        self.encode_deviation(&dev, tok)
    }

    /// Deviations [B, T, chunk] of tokens `tok` -> latents [B, T, token_dim].
    pub fn encode_deviation(&self, dev: &Tensor, tok: &Tensor) -> Tensor {
        let scale = self.scale.detach().index_select(0, tok).view([1, -1, 1]);
        let pos = self.enc_position.index_select(0, tok).unsqueeze(0);
        let h = ((dev / scale).apply(&self.enc_in) + pos).leaky_relu();
        h.apply(&self.enc_mid).leaky_relu().apply(&self.enc_out)
    }

    /// Latents [B, T, token_dim] of tokens `tok` -> deviations [B, T, chunk] (padding slots are
    /// whatever the network gives: callers mask or drop them).
    pub fn decode_deviation(&self, z: &Tensor, tok: &Tensor) -> Tensor {
        let scale = self.scale.detach().index_select(0, tok).view([1, -1, 1]);
        let pos = self.dec_position.index_select(0, tok).unsqueeze(0);
        let h = (z.apply(&self.dec_in) + pos).elu();
        h.apply(&self.dec_mid).elu().apply(&self.dec_out) * scale
    }

    /// Each token's scale (its RMS deviation from the anchor across the training inputs), [T].
    pub fn token_scale(&self, tok: &Tensor) -> Tensor {
        self.scale.detach().index_select(0, tok)
    }

    /// Slot mask of tokens `tok`, [T, chunk].
    pub fn slot_mask(&self, tok: &Tensor) -> Tensor {
        self.slot_mask.index_select(0, tok)
    }

    /// The autoencoder's latent ([B, components], or [B, tokens x token_dim]) -> [B, D].
    fn decode_all(&self, z: &Tensor) -> Tensor {
        let b = z.size()[0];
        let z = match &self.principal {
            Some((basis, mean)) => z.matmul(basis) + mean.unsqueeze(0),
            None => z.shallow_clone(),
        };
        let n = self.token_count();
        let all = Tensor::arange(n, (Kind::Int64, z.device()));
        let dev = self.decode_deviation(&z.view([b, n, self.token_dim]), &all).view([b, -1]);
        dev.index_select(1, &self.flat_index) + &self.anchor
    }
}

/// The convolutional autoencoder of the `paper` and `compact` presets.
#[derive(Debug)]
struct ConvAutoencoder {
    config: AutoencoderConfig,
    padded_len: i64,
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

impl ConvAutoencoder {
    /// Variable names (for export): enc.{i}.conv, enc.{i}.norm, enc.fc, dec.fc, dec.{i}.conv,
    /// dec.{i}.norm, dec.out.
    fn new(vs: &nn::Path, config: &AutoencoderConfig, padded_len: usize) -> Self {
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
        ConvAutoencoder {
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
    fn init_position_bias(&mut self, mean: &Tensor) {
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
    fn encode(&self, x: &Tensor) -> Tensor {
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
    fn decode(&self, z: &Tensor) -> Tensor {
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


/// The latent denoiser: (x_t [B, d], t [B] i64) -> predicted noise [B, d].
#[derive(Debug)]
pub struct Denoiser {
    pub config: DenoiserConfig,
    pub latent_dim: i64,
    time_fc1: nn::Linear,
    time_fc2: nn::Linear,
    /// Conditional generators: the condition's embedding, added to the time embedding.
    condition: Option<ConditionEmbedding>,
    body: DenoiserBody,
}

/// The condition c [B, C] embedded by one Linear layer to the width of the time embedding; a
/// row whose mask is 0 gets a learned "no condition" embedding instead (classifier-free
/// guidance: the same network is also the unconditional model).
///
/// One linear layer, on purpose: a task code's embedding is then the sum of its bits' columns,
/// an inductive bias towards composing unseen codes from seen bits. And it trains: with a
/// second, 512-wide layer behind it, the few distinct codes of a dataset made Adam move every
/// weight of that layer the same way at once, the embedding grew past the time embedding within
/// a few hundred steps and the denoiser stopped learning (diffusion loss stuck at 1.0).
#[derive(Debug)]
struct ConditionEmbedding {
    fc: nn::Linear,
    null: Tensor,
}

/// A batch's conditions: values [B, C] and mask [B] (1: conditioned on the row's values, 0: the
/// unconditional "no condition" embedding).
pub struct ConditionBatch<'a> {
    pub values: &'a Tensor,
    pub mask: &'a Tensor,
}

#[derive(Debug)]
enum DenoiserBody {
    Cnn { convs: Vec<nn::Conv1D>, norms: Vec<nn::GroupNorm> },
    Mlp { input: nn::Linear, blocks: Vec<(nn::Linear, nn::Linear)>, output: nn::Linear },
    /// Per-token residual MLP; `mix` adds each block's pooled summary (mean over tokens) back.
    Tokens {
        token_dim: i64,
        input: nn::Linear,
        position: Tensor,
        position_fc: nn::Linear,
        blocks: Vec<(nn::Linear, nn::Linear, nn::Linear)>,
        output: nn::Linear,
    },
}

impl Denoiser {
    /// Variable names (for export): time.fc1, time.fc2, cond.fc, cond.null (with a
    /// condition), then cnn: conv.{i}, norm.{i}; mlp: in, block.{i}.fc1, block.{i}.fc2, out;
    /// tokens: in, position, position_fc, block.{i}.fc1, block.{i}.fc2, block.{i}.mix, out.
    pub fn new(vs: &nn::Path, config: &DenoiserConfig, latent_dim: i64, condition_dim: Option<i64>) -> Self {
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
            DenoiserConfig::Tokens { token_dim, hidden, blocks, position_dim, .. } => {
                let tokens = latent_dim / token_dim.max(&1);
                let input = nn::linear(vs / "in", *token_dim, *hidden, Default::default());
                let position = vs.var("position", &[tokens, *position_dim], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
                let position_fc = nn::linear(vs / "position_fc", *position_dim, *hidden, Default::default());
                let blocks = (0..*blocks)
                    .map(|i| {
                        let p = vs / "block" / i;
                        (
                            nn::linear(&p / "fc1", *hidden, *hidden, Default::default()),
                            nn::linear(&p / "fc2", *hidden, *hidden, Default::default()),
                            nn::linear(&p / "mix", *hidden, *hidden, Default::default()),
                        )
                    })
                    .collect();
                let output = nn::linear(vs / "out", *hidden, *token_dim, Default::default());
                (*hidden, DenoiserBody::Tokens { token_dim: *token_dim, input, position, position_fc, blocks, output })
            }
        };
        let time_fc2 = nn::linear(vs / "time" / "fc2", tdim, emb_out, Default::default());
        let condition = condition_dim.map(|c| {
            let mut fc = nn::linear(vs / "cond" / "fc", c, emb_out, Default::default());
            // Zero-initialised: the condition enters as nothing and grows as training finds it
            // useful (as the autoencoder's output layer does).
            tch::no_grad(|| {
                let _ = fc.ws.zero_();
                if let Some(b) = fc.bs.as_mut() {
                    let _ = b.zero_();
                }
            });
            ConditionEmbedding { fc, null: (vs / "cond").zeros("null", &[emb_out]) }
        });
        Denoiser { config: config.clone(), latent_dim, time_fc1, time_fc2, condition, body }
    }

    /// The tokens denoiser's position embedding, position_fc applied to the learned table,
    /// [tokens, hidden] (a constant of the exported graph); `None` for other denoisers.
    pub fn position_embedding(&self) -> Option<Tensor> {
        match &self.body {
            DenoiserBody::Tokens { position, position_fc, .. } => Some(tch::no_grad(|| position.apply(position_fc))),
            _ => None,
        }
    }

    /// The embedding added in every block: time, plus the condition's (conditional generators;
    /// `cond` None means "no condition" for every row).
    fn embedding(&self, t: &Tensor, cond: Option<ConditionBatch<'_>>) -> Tensor {
        let temb = timestep_embedding(t, self.config.time_dim()).apply(&self.time_fc1).silu().apply(&self.time_fc2);
        let Some(ce) = &self.condition else {
            return temb;
        };
        let null = ce.null.unsqueeze(0);
        match cond {
            Some(c) => {
                let mask = c.mask.to_kind(Kind::Float).unsqueeze(1);
                let cemb = c.values.apply(&ce.fc);
                temb + &cemb * &mask + null * (1.0 - mask)
            }
            None => temb + null,
        }
    }

    /// Predicted noise [B, d] for x_t [B, d], t [B] and, for a conditional denoiser, the batch's
    /// conditions.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: Option<ConditionBatch<'_>>) -> Tensor {
        let temb = self.embedding(t, cond);
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
            DenoiserBody::Tokens { token_dim, input, position, position_fc, blocks, output } => {
                let b = x.size()[0];
                let temb = temb.unsqueeze(1);
                let mut h = x.view([b, -1, *token_dim]).apply(input) + position.apply(position_fc).unsqueeze(0);
                for (fc1, fc2, mix) in blocks {
                    h = &h + (&h + &temb).silu().apply(fc1).silu().apply(fc2);
                    h = &h + h.mean_dim(1, true, Kind::Float).apply(mix);
                }
                h.silu().apply(output).view([b, -1])
            }
        }
    }
}

impl Module for Autoencoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.decode(&self.encode(xs))
    }
}
