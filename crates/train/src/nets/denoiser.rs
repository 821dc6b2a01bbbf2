//! The latent denoiser: (x_t [B, d], t [B] i64, condition) -> predicted noise (or v) [B, d]:
//! a time embedding, for conditional generators a condition embedding, and the body of
//! [`super::cnn_denoiser`] or [`super::mlp_denoiser`].
use super::cnn_denoiser::CnnDenoiser;
use super::mlp_denoiser::MlpDenoiser;
use super::timestep_embedding;
use pdiff_core::model::DenoiserConfig;
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct Denoiser {
    pub config: DenoiserConfig,
    pub latent_dim: i64,
    time_fc1: nn::Linear,
    time_fc2: nn::Linear,
    /// Conditional generators: the condition's embedding, added to the time embedding.
    condition: Option<ConditionEmbedding>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Cnn(CnnDenoiser),
    Mlp(MlpDenoiser),
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

impl Denoiser {
    /// Variable names (for export): time.fc1, time.fc2, cond.fc, cond.null (with a
    /// condition), then the body's (cnn: conv.{i}, norm.{i}; mlp: in, block.{i}.fc1,
    /// block.{i}.fc2, out).
    pub fn new(vs: &nn::Path, config: &DenoiserConfig, latent_dim: i64, condition_dim: Option<i64>) -> Self {
        let tdim = config.time_dim();
        let time_fc1 = nn::linear(vs / "time" / "fc1", tdim, tdim, Default::default());
        // The embedding is added to what each body works on: the latent's positions (cnn) or
        // its hidden width (mlp).
        let (emb_out, body) = match config {
            DenoiserConfig::Cnn { channels, kernel, .. } => (latent_dim, Body::Cnn(CnnDenoiser::new(vs, channels, *kernel))),
            DenoiserConfig::Mlp { hidden, blocks, .. } => (*hidden, Body::Mlp(MlpDenoiser::new(vs, latent_dim, *hidden, *blocks))),
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

    /// The network's output [B, d] for x_t [B, d], t [B] and, for a conditional denoiser, the
    /// batch's conditions.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: Option<ConditionBatch<'_>>) -> Tensor {
        let emb = self.embedding(t, cond);
        match &self.body {
            Body::Cnn(body) => body.forward(x, &emb),
            Body::Mlp(body) => body.forward(x, &emb),
        }
    }
}
