//! The `compact` and `chunked` presets' denoiser body: a residual MLP over the latent vector,
//! the embedding (time, condition) added in every block.
use tch::{nn, Tensor};

#[derive(Debug)]
pub(super) struct MlpDenoiser {
    input: nn::Linear,
    blocks: Vec<(nn::Linear, nn::Linear)>,
    output: nn::Linear,
}

impl MlpDenoiser {
    /// Variable names: in, block.{i}.fc1, block.{i}.fc2, out.
    pub(super) fn new(vs: &nn::Path, latent_dim: i64, hidden: i64, blocks: i64) -> Self {
        let input = nn::linear(vs / "in", latent_dim, hidden, Default::default());
        let blocks = (0..blocks)
            .map(|i| {
                let p = vs / "block" / i;
                (nn::linear(&p / "fc1", hidden, hidden, Default::default()), nn::linear(&p / "fc2", hidden, hidden, Default::default()))
            })
            .collect();
        let output = nn::linear(vs / "out", hidden, latent_dim, Default::default());
        MlpDenoiser { input, blocks, output }
    }

    /// x [B, d] and the embedding [B, hidden] -> [B, d].
    pub(super) fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let mut h = x.apply(&self.input);
        for (fc1, fc2) in &self.blocks {
            h = &h + (&h + emb).silu().apply(fc1).silu().apply(fc2);
        }
        h.silu().apply(&self.output)
    }
}
