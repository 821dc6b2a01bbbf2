//! The critique's yardsticks: what simple recipes make of the K originals, measured as the
//! generated models are (docs/design.md, "The tools").
//!
//! Zeng, Yin, Xu and Liu, "Generative Modeling of Weights: Generalization or Memorization?"
//! (arXiv:2506.07998, 2025) found that p-diff's models "closely match" two baselines built from
//! its training checkpoints, and compared all of them with noise added to those checkpoints.
//! Their code (github.com/boyazeng/weight_memorization, `P-diff/evaluation/baseline.py`) makes:
//! - **average of 16**: 100 models, each the uniform average of 16 training checkpoints drawn
//!   without replacement;
//! - **gaussian**: 100 models drawn from a normal distribution per parameter, with the mean and
//!   the (unbiased) standard deviation of that parameter across the training checkpoints;
//! - **noise**: each training checkpoint plus Gaussian noise of std 0.06 and, separately, 0.12.
//!
//! Those two amplitudes are absolute values for the tensors the paper generated (the last two
//! BatchNorm layers of a CIFAR-100 ResNet-18) and mean nothing for another network's tensors. We
//! keep their pair, the second twice the first, and set the first where the generated models are:
//! noise of `sigma_rel` x each tensor's std moves an original by about `sigma_rel * sqrt(D)` in
//! normalized units, so `sigma_rel = distance / sqrt(D)` puts the noisy originals at the generated
//! models' median distance to their nearest original (1x), and at twice it (2x). The question the
//! critique asks is then answered directly: at the generator's distance from its training data,
//! is plain noise as accurate?
//!
//! Every yardstick has [`DRAWS`] models; every random choice comes from the seed. Each gets its
//! test accuracies, its distance to the nearest original (as [`crate::eval::novelty`] measures it)
//! and the max IoU of its misclassified test images to any original's, and a verdict in counts of
//! test images (as every other comparison: [`crate::eval::comparison`]).
use crate::eval::{accuracies, comparison, max_iou_to, median_count, Comparison, ModelEval, NearestOriginal, Spread, Summary};
use pdiff_core::error::Result;
use pdiff_core::params::{Layout, ParamSet};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Models per yardstick (the critique's 100).
pub const DRAWS: usize = 100;
/// Originals per model of the average yardstick (the critique's 16; all K when K is smaller).
pub const AVERAGE_OF: usize = 16;
/// The noise yardsticks, as multiples of the generated models' median distance to the nearest
/// original (the critique's two amplitudes, 0.06 and 0.12: the second twice the first).
pub const NOISE_MULTIPLES: [f64; 2] = [1.0, 2.0];
/// Number of yardsticks: the average, the gaussian and the noise ones.
pub const COUNT: usize = 2 + NOISE_MULTIPLES.len();

/// Readings: distances within this factor of each other are "about as far", max IoUs within
/// this difference "about as much".
pub const DISTANCE_BAND: f64 = 1.1;
pub const IOU_BAND: f64 = 0.01;

pub const AVERAGE_NAME: &str = "average of 16";
pub const GAUSSIAN_NAME: &str = "gaussian";

/// The name of the noise yardstick at `multiple` x the generated models' distance.
pub fn noise_name(multiple: f64) -> String {
    if multiple == 1.0 {
        "noise at the generated distance".into()
    } else {
        format!("noise at {multiple}x the generated distance")
    }
}

/// `n` models, each the uniform average of `m` originals drawn without replacement (of all K
/// when K < m), host units, row-major.
pub fn average_of(set: &ParamSet, m: usize, n: usize, seed: u64) -> Vec<f32> {
    let (d, k) = (set.layout.param_count(), set.k());
    let m = m.min(k);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * d);
    let mut acc = vec![0f64; d];
    for _ in 0..n {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for i in rand::seq::index::sample(&mut rng, k, m) {
            for (a, &x) in acc.iter_mut().zip(set.row(i)) {
                *a += x as f64;
            }
        }
        out.extend(acc.iter().map(|a| (a / m as f64) as f32));
    }
    out
}

/// Each parameter's mean and standard deviation across the K originals (the unbiased estimate,
/// over K - 1, as the critique's `torch.std`; 0 when K < 2).
pub fn per_parameter_mean_std(set: &ParamSet) -> (Vec<f64>, Vec<f64>) {
    let (d, k) = (set.layout.param_count(), set.k());
    let mut mean = vec![0f64; d];
    for row in set.data.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= k.max(1) as f64);
    let mut var = vec![0f64; d];
    for row in set.data.chunks_exact(d) {
        for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
            *v += (x as f64 - m).powi(2);
        }
    }
    let std = var.into_iter().map(|v| if k < 2 { 0.0 } else { (v / (k - 1) as f64).sqrt() }).collect();
    (mean, std)
}

/// `n` models drawn from the per-parameter normal fitted to the originals
/// ([`per_parameter_mean_std`]), host units, row-major.
pub fn gaussian(set: &ParamSet, n: usize, seed: u64) -> Vec<f32> {
    let (mean, std) = per_parameter_mean_std(set);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * mean.len());
    for _ in 0..n {
        out.extend(mean.iter().zip(&std).map(|(m, s)| (m + s * rng.sample::<f64, _>(StandardNormal)) as f32));
    }
    out
}

/// The noise std, relative to each tensor's std, that moves an original by `distance` in
/// normalized units (in expectation of the squared distance: `distance / sqrt(D)`).
pub fn noise_sigma_for_distance(set: &ParamSet, distance: f64) -> f64 {
    distance / (set.layout.param_count() as f64).sqrt()
}

/// `n` models, each an original plus Gaussian noise of `sigma_rel` x each tensor's std. The
/// originals are taken in seeded random order, all of them before any is taken again.
pub fn noise(set: &ParamSet, sigma_rel: f64, n: usize, seed: u64) -> Vec<f32> {
    let (d, k) = (set.layout.param_count(), set.k());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = Vec::with_capacity(n + k);
    while order.len() < n {
        let mut cycle: Vec<usize> = (0..k).collect();
        cycle.shuffle(&mut rng);
        order.extend(cycle);
    }
    let mut out = Vec::with_capacity(n * d);
    for &i in &order[..n] {
        let start = out.len();
        out.extend_from_slice(set.row(i));
        let row = &mut out[start..];
        for t in &set.layout.tensors {
            let s = sigma_rel * t.std as f64;
            for v in &mut row[t.offset..t.offset + t.numel()] {
                *v += (s * rng.sample::<f64, _>(StandardNormal)) as f32;
            }
        }
    }
    out
}

/// One yardstick's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Yardstick {
    pub name: String,
    pub models: usize,
    /// Noise yardsticks: the noise std relative to each tensor's std.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_rel: Option<f64>,
    /// Test accuracies.
    pub accuracy: Summary,
    /// Distance to the nearest original, normalized units.
    pub distance_to_nearest_original: Spread,
    /// Per model, the max IoU of its misclassified test images to any original's.
    pub max_iou_to_originals: Summary,
    /// The generated models' median against this yardstick's median, in test images.
    pub comparison: Comparison,
}

/// The yardsticks of one evaluation, and the generated models' numbers they are read against.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Yardsticks {
    pub seed: u64,
    pub draws: usize,
    pub generated_to_nearest_original: Spread,
    pub generated_max_iou_to_originals: Summary,
    pub baselines: Vec<Yardstick>,
    /// Per model: (yardstick, test accuracy, distance to the nearest original).
    #[serde(skip)]
    pub points: Vec<(String, f64, f64)>,
}

impl Yardsticks {
    /// One plain sentence per yardstick: where the generated models beat, equal or lose to it in
    /// accuracy (test images), distance to the originals and overlap of mistakes.
    pub fn readings(&self) -> Vec<String> {
        self.baselines.iter().map(|y| self.reading(y)).collect()
    }

    pub fn reading(&self, y: &Yardstick) -> String {
        let c = &y.comparison;
        let acc = match c.verdict.as_str() {
            "better" => "more accurate than",
            "worse" => "less accurate than",
            _ => "as accurate as",
        };
        let (g, b) = (self.generated_to_nearest_original.median, y.distance_to_nearest_original.median);
        let dist = if g > b * DISTANCE_BAND {
            "farther from the originals"
        } else if g * DISTANCE_BAND < b {
            "closer to the originals"
        } else {
            "about as far from the originals"
        };
        let (gi, bi) = (self.generated_max_iou_to_originals.median, y.max_iou_to_originals.median);
        let iou = if gi < bi - IOU_BAND {
            "less"
        } else if gi > bi + IOU_BAND {
            "more"
        } else {
            "about as much"
        };
        let images = if c.difference_images.abs() == 1.0 { "test image" } else { "test images" };
        format!(
            "{}: the generated models are {acc} it ({:+} {images}, median against median), {dist} (median distance {g:.3} against {b:.3}), \
             and their mistakes overlap {iou} with an original's (median max IoU {gi:.3} against {bi:.3})",
            y.name, c.difference_images
        )
    }
}

/// Make and measure every yardstick of the originals of `nearest`: `eval` evaluates rows (host
/// units) on the TEST split; `originals` and `generated` are the originals' and the generated
/// models' evaluations, `generated_distances` the generated models' distances to the nearest
/// original (the noise is set from their median). `progress(i)` after the i-th yardstick.
pub fn evaluate(
    nearest: &NearestOriginal,
    originals: &[ModelEval],
    generated: &[ModelEval],
    generated_distances: &[f64],
    seed: u64,
    eval: &mut dyn FnMut(&[f32]) -> Result<Vec<ModelEval>>,
    progress: &mut dyn FnMut(usize),
) -> Result<Yardsticks> {
    let set = nearest.set;
    let test_images = generated.first().or(originals.first()).map(|e| e.correct + e.wrong.len()).unwrap_or(0);
    let generated_correct = median_count(&generated.iter().map(|e| e.correct).collect::<Vec<_>>());
    let generated_distance = Spread::of(generated_distances);
    let mut out = Yardsticks {
        seed,
        draws: DRAWS,
        generated_to_nearest_original: generated_distance,
        generated_max_iou_to_originals: Summary::of(&max_iou_to(generated, originals, false)),
        baselines: Vec::with_capacity(COUNT),
        points: Vec::new(),
    };
    // Each yardstick's own stream, so that one of them does not move when another changes.
    let stream = |i: u64| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x5941_5244 + i);
    for i in 0..COUNT {
        let (name, sigma_rel, rows) = match i {
            0 => (AVERAGE_NAME.to_string(), None, average_of(set, AVERAGE_OF, DRAWS, stream(0))),
            1 => (GAUSSIAN_NAME.to_string(), None, gaussian(set, DRAWS, stream(1))),
            _ => {
                let multiple = NOISE_MULTIPLES[i - 2];
                let sigma = noise_sigma_for_distance(set, multiple * generated_distance.median);
                (noise_name(multiple), Some(sigma), noise(set, sigma, DRAWS, stream(i as u64)))
            }
        };
        let evals = eval(&rows)?;
        let distances = nearest.distances(&rows);
        drop(rows);
        let accs = accuracies(&evals);
        out.points.extend(accs.iter().zip(&distances).map(|(&a, &d)| (name.clone(), a, d)));
        let counts: Vec<usize> = evals.iter().map(|e| e.correct).collect();
        out.baselines.push(Yardstick {
            comparison: comparison(format!("{name} (median)"), generated_correct, median_count(&counts), test_images),
            name,
            models: evals.len(),
            sigma_rel,
            accuracy: Summary::of(&accs),
            distance_to_nearest_original: Spread::of(&distances),
            max_iou_to_originals: Summary::of(&max_iou_to(&evals, originals, false)),
        });
        progress(i + 1);
    }
    Ok(out)
}

/// [`evaluate`] for originals given as rows of `layout` (normalized with their own statistics):
/// `eval` evaluates the originals, the generated models and the yardsticks alike. None with fewer
/// than 2 originals (no spread to fit).
pub fn evaluate_of_rows(
    layout: &Layout,
    originals: &[Vec<f32>],
    generated: &[f32],
    seed: u64,
    eval: &mut dyn FnMut(&[f32]) -> Result<Vec<ModelEval>>,
) -> Result<Option<Yardsticks>> {
    if originals.len() < 2 {
        return Ok(None);
    }
    let names = (0..originals.len()).map(|i| format!("memory[{i}]")).collect();
    let set = ParamSet::from_rows(layout.clone(), originals.concat(), names)?;
    let nearest = NearestOriginal::new(&set);
    let orig = eval(&set.data)?;
    let gen = eval(generated)?;
    let gen_dist = nearest.distances(generated);
    evaluate(&nearest, &orig, &gen, &gen_dist, seed, eval, &mut |_| {}).map(Some)
}
