//! How the chunked autoencoder cuts a flat parameter vector into tokens (docs/design.md,
//! "Model"; docs/bundle-format.md, "Chunked generators"). Needs no libtorch: the exported
//! decoder graph carries the same map as constants.
//!
//! Tokens follow the layout's rows: tensor by tensor, a tensor of rank >= 2 row by row (a row
//! is everything under one index of the first axis: a neuron's incoming weights, a conv
//! filter), a tensor of rank 0 or 1 as one row. A row of at most `chunk` scalars is one token,
//! zero-padded to `chunk`; a longer row is cut into ceil(len / chunk) tokens, the last one
//! padded. Why rows: the changes along a training trajectory of one neuron's incoming weights
//! are sums of the same inputs (a gradient row is delta_j x^T), so tokens that each hold one
//! row share a basis that one shared network can learn; uniform cuts across row boundaries mix
//! unrelated pieces in a position that differs token to token.
use crate::params::Layout;

/// The largest token: bigger tokens make fewer tokens (a shorter latent sequence), but the
/// shared network's input and output layers grow with it.
pub const MAX_CHUNK_LEN: usize = 1024;

/// From this many parameters on, [`super::Preset::auto`] chooses `chunked`. Below it `compact`
/// keeps its numbers (mnist-mlp3: 13,002 parameters; its 2 x 64 x D dense weights are 1.7 M);
/// at 50,000 compact's dense weights are 6.4 M (26 MB, and 3 times that with gradients and
/// AdamW's moments), and they grow linearly from there.
pub const AUTO_CHUNKED_MIN_PARAMS: usize = 50_000;

/// Principal components of the token latents that the `chunked` preset's diffusion runs in
/// (at most K - 1). Checkpoints of a training trajectory differ along few directions: on
/// mnist-mlp-wide (K = 200, 4,660 token latent values) 2 directions hold 97% of the latents'
/// variance and 20 hold 99.98%. A denoiser over the whole token sequence has to learn that
/// every other direction is pure noise, and did not (its samples left the training range in
/// every latent); over the coefficients it need not. Why 8: the coefficients are standardized,
/// so every component weighs the same to the denoiser, and K = 200 points do not pin down a
/// density in many dimensions (8 hold 99.93% of the variance there, 16 hold 99.99%). Over 32,
/// even a well-fit denoiser (100,000 steps: samples as close to their nearest training latent
/// as training latents are to each other) decoded 1 of 300 models one test image below the
/// worst original (mnist-mlp-wide, seed 4), and over 16 the seed-0 demo had one such model of
/// 100; over 8, 0 of 300 at seeds 0 and 4 (docs/design.md, "Training").
pub const CHUNKED_COMPONENTS: i64 = 8;

/// The token length the `chunked` preset uses for D parameters: the power of two at or above
/// sqrt(D), between 64 and [`MAX_CHUNK_LEN`]. With about sqrt(D) tokens of about sqrt(D)
/// scalars, the shared network's layers (~ chunk) and the position embeddings (~ tokens) both
/// grow as sqrt(D).
pub fn auto_chunk_len(d: usize) -> usize {
    let root = (d as f64).sqrt().ceil() as usize;
    root.next_power_of_two().clamp(64, MAX_CHUNK_LEN)
}

/// The tokens of a layout: token i holds `len[i]` scalars starting at `offset[i]` of the flat
/// vector, in slots 0 .. len[i] of its `chunk` slots (the rest are padding).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenMap {
    pub chunk: usize,
    pub offset: Vec<usize>,
    pub len: Vec<usize>,
    /// D, the flat vector's length.
    pub param_count: usize,
}

impl TokenMap {
    pub fn new(layout: &Layout, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        let (mut offset, mut len) = (Vec::new(), Vec::new());
        for t in &layout.tensors {
            let numel = t.numel();
            let rows = if t.shape.len() >= 2 { t.shape[0].max(1) } else { 1 };
            let row_len = numel.checked_div(rows).unwrap_or(0);
            for r in 0..rows {
                let start = t.offset + r * row_len;
                let mut done = 0;
                while done < row_len {
                    let n = chunk.min(row_len - done);
                    offset.push(start + done);
                    len.push(n);
                    done += n;
                }
            }
        }
        TokenMap { chunk, offset, len, param_count: layout.param_count() }
    }

    pub fn tokens(&self) -> usize {
        self.offset.len()
    }

    /// Length of the token grid, tokens x chunk.
    pub fn grid_len(&self) -> usize {
        self.tokens() * self.chunk
    }

    /// For every grid slot (token-major), the flat index it holds, or 0 for a padding slot (its
    /// value is then masked by [`TokenMap::slot_mask`]).
    pub fn grid_index(&self) -> Vec<i64> {
        let mut idx = vec![0i64; self.grid_len()];
        for (i, (&o, &n)) in self.offset.iter().zip(&self.len).enumerate() {
            for s in 0..n {
                idx[i * self.chunk + s] = (o + s) as i64;
            }
        }
        idx
    }

    /// 1 for a grid slot that holds a parameter, 0 for padding.
    pub fn slot_mask(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.grid_len()];
        for (i, &n) in self.len.iter().enumerate() {
            m[i * self.chunk..i * self.chunk + n].fill(1.0);
        }
        m
    }

    /// For every flat index, the grid slot that holds it (the decoder's gather back to D).
    pub fn flat_index(&self) -> Vec<i64> {
        let mut idx = vec![0i64; self.param_count];
        for (i, (&o, &n)) in self.offset.iter().zip(&self.len).enumerate() {
            for s in 0..n {
                idx[o + s] = (i * self.chunk + s) as i64;
            }
        }
        idx
    }
}
