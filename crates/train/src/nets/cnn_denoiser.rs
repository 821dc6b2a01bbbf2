//! The `paper` preset's denoiser body: a 1-D CNN over the latent as a 1-channel sequence,
//! kernel k, GroupNorm + ELU, additive skips from the first convolutions to their mirrors, the
//! embedding (time, condition) added before every convolution.
use pdiff_core::model::norm_groups;
use tch::{nn, Tensor};

#[derive(Debug)]
pub(super) struct CnnDenoiser {
    convs: Vec<nn::Conv1D>,
    norms: Vec<nn::GroupNorm>,
}

impl CnnDenoiser {
    /// Variable names: conv.{i}, norm.{i}.
    pub(super) fn new(vs: &nn::Path, channels: &[i64], kernel: i64) -> Self {
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for i in 0..channels.len() - 1 {
            let conv = nn::conv1d(vs / "conv" / i, channels[i], channels[i + 1], kernel, nn::ConvConfig { padding: kernel / 2, ..Default::default() });
            convs.push(conv);
            if i + 2 < channels.len() {
                norms.push(nn::group_norm(vs / "norm" / i, norm_groups(channels[i + 1]), channels[i + 1], Default::default()));
            }
        }
        CnnDenoiser { convs, norms }
    }

    /// x [B, d] and the embedding [B, d] (broadcast over the channels of the [B, C, d]
    /// sequence) -> [B, d].
    pub(super) fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let emb = emb.unsqueeze(1);
        let n = self.convs.len();
        let mut h = x.unsqueeze(1);
        let mut skips: Vec<Tensor> = Vec::new();
        for (i, conv) in self.convs.iter().enumerate() {
            h = (&h + &emb).apply(conv);
            if i + 1 == n {
                break;
            }
            h = h.apply(&self.norms[i]).elu();
            // Additive skips: outputs of the first convs are added to the outputs of their
            // mirrors (same channel count) in the second half.
            let mirror = n - 2 - i;
            if i < mirror && i < n / 2 - 1 {
                skips.push(h.shallow_clone());
            } else if mirror < i && mirror < skips.len() {
                h += &skips[mirror];
            }
        }
        h.squeeze_dim(1)
    }
}
