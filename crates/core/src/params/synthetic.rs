//! Synthetic checkpoints for tests and benchmarks (`pdiff bench scale`): what K consecutive
//! checkpoints of one training run look like, without training anything.
use super::{Layout, ParamSet};
use crate::error::Result;
use rand::{Rng, SeedableRng};

/// K checkpoints of a trajectory over `layout`: a random base in [-amplitude, amplitude], then a
/// drift in which every row of a tensor moves along the same two directions (a gradient row is
/// delta_j x^T: the rows of one tensor share the inputs x), each row by its own amount, plus a
/// little noise per checkpoint; drift and noise scale with `amplitude` too. Seeded: the same
/// arguments give the same values. Rows are named `synthetic[i]`.
pub fn synthetic_trajectory(layout: Layout, k: usize, amplitude: f32, seed: u64) -> Result<ParamSet> {
    let d = layout.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let base: Vec<f32> = (0..d).map(|_| amplitude * rng.random_range(-1.0..1.0)).collect();
    let mut dirs = vec![(0f32, 0f32); d];
    for t in &layout.tensors {
        let rows = if t.shape.len() >= 2 { t.shape[0] } else { 1 };
        let cols = t.numel() / rows.max(1);
        let u: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let v: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        for r in 0..rows {
            let c: f32 = rng.random_range(0.2..1.0);
            for j in 0..cols {
                dirs[t.offset + r * cols + j] = (c * u[j], c * v[j]);
            }
        }
    }
    let mut data = Vec::with_capacity(k * d);
    for i in 0..k {
        let (a, b) = ((i as f32 / k as f32 - 0.5) * (0.1 * amplitude), (0.05 * amplitude) * (i as f32 * 0.3).sin());
        data.extend((0..d).map(|j| base[j] + a * dirs[j].0 + b * dirs[j].1 + amplitude * rng.random_range(-0.002..0.002)));
    }
    ParamSet::from_rows(layout, data, (0..k).map(|i| format!("synthetic[{i}]")).collect())
}
