//! The chunked autoencoder of the `chunked` preset (docs/design.md, "Model").
use pdiff_core::model::{ChunkedSpec, TokenMap};
use tch::{nn, Kind, Tensor};

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
    /// The principal directions [components, tokens x token_dim] of the training checkpoints'
    /// token latents (orthonormal rows) and their mean [tokens x token_dim]; the latent is the
    /// coefficients (z_tok - basis_mean) basis^T. Fixed data, like `anchor`.
    basis: Tensor,
    basis_mean: Tensor,
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
    /// Variable names: enc.anchor, enc.scale, enc.basis, enc.basis_mean (fixed), enc.in, enc.position, enc.mid, enc.out, dec.in,
    /// dec.position, dec.mid, dec.out.
    pub(super) fn new(vs: &nn::Path, spec: &ChunkedSpec, tokens: TokenMap) -> Self {
        let (n, c, h, e) = (tokens.tokens() as i64, tokens.chunk as i64, spec.hidden, spec.token_dim);
        let device = vs.device();
        let enc = vs / "enc";
        let dec = vs / "dec";
        let position = nn::Init::Randn { mean: 0.0, stdev: 0.1 };
        let anchor = enc.zeros_no_train("anchor", &[tokens.param_count as i64]);
        let scale = enc.ones_no_train("scale", &[n]);
        let basis = enc.zeros_no_train("basis", &[spec.components, n * e]);
        let basis_mean = enc.zeros_no_train("basis_mean", &[n * e]);
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
            basis,
            basis_mean,
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
    pub(super) fn init_from_data(&mut self, data: &Tensor) {
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
    /// coefficients [B, components].
    pub fn project(&self, z_tok: &Tensor) -> Tensor {
        (z_tok - self.basis_mean.unsqueeze(0)).matmul(&self.basis.tr())
    }

    /// Fix the principal components (`ChunkedSpec::components`) from the token latents `z`
    /// [K, L] of the training checkpoints: the first `components` right singular vectors of z
    /// minus its mean (training resolves `components` to at most min(K - 1, L)).
    pub fn fit_principal_components(&mut self, z: &Tensor) {
        let (basis, mean) = (&mut self.basis, &mut self.basis_mean);
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

    /// The autoencoder's latent [B, components] -> [B, D].
    pub(super) fn decode_all(&self, z: &Tensor) -> Tensor {
        let b = z.size()[0];
        let z = z.matmul(&self.basis) + self.basis_mean.unsqueeze(0);
        let n = self.token_count();
        let all = Tensor::arange(n, (Kind::Int64, z.device()));
        let dev = self.decode_deviation(&z.view([b, n, self.token_dim]), &all).view([b, -1]);
        dev.index_select(1, &self.flat_index) + &self.anchor
    }
}
