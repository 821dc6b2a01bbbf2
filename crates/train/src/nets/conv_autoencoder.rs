//! The convolutional autoencoder of the `paper` and `compact` presets (docs/design.md, "Model").
use pdiff_core::model::{norm_groups, AutoencoderConfig, ConvSpec};
use tch::{nn, Tensor};

/// The convolutional autoencoder of the `paper` and `compact` presets.
#[derive(Debug)]
pub(super) struct ConvAutoencoder {
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
    pub(super) fn new(vs: &nn::Path, config: &AutoencoderConfig, padded_len: usize) -> Self {
        let enc_vs = vs / "enc";
        let mut in_ch = 1;
        let mut enc_convs = Vec::new();
        for (i, c) in config.encoder.iter().enumerate() {
            let p = &enc_vs / i;
            let conv = nn::conv1d(&p / "conv", in_ch, c.channels, c.kernel, nn::ConvConfig { stride: c.stride, padding: c.padding, ..Default::default() });
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
                nn::ConvTransposeConfig { stride: c.stride, padding: c.padding, output_padding: c.output_padding(), ..Default::default() },
            );
            let norm = (!is_output).then(|| nn::group_norm(&p / "norm", norm_groups(out_ch), out_ch, Default::default()));
            dec_convs.push((conv, norm));
            in_ch = out_ch;
        }
        let dec_final = config.final_kernel.map(|k| nn::conv1d(&dec_vs / "out", in_ch, 1, k, nn::ConvConfig { padding: k / 2, ..Default::default() }));
        let dec_position_bias = (&dec_vs / "out").zeros("position_bias", &[padded_len as i64]);
        ConvAutoencoder { config: config.clone(), padded_len: padded_len as i64, enc_convs, enc_linear, dec_linear, dec_convs, dec_final, dec_position_bias }
    }

    /// Data-dependent init: start the per-position output bias at the mean of the training
    /// inputs, so the layers learn deviations from the typical checkpoint from the first step.
    /// The output layer starts at zero as well, so the untrained decoder reproduces exactly
    /// that mean and training can only improve on it (as zero-initialised residual branches).
    pub(super) fn init_position_bias(&mut self, mean: &Tensor) {
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
    pub(super) fn encode(&self, x: &Tensor) -> Tensor {
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
    pub(super) fn decode(&self, z: &Tensor) -> Tensor {
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
