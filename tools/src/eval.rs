//! Evaluation of parameter vectors on a reference task: accuracy summaries (best / mean /
//! median / min / std), the soup baseline and train-selected generated model, verdicts on
//! integer counts of test images; a novelty measure that needs no task (distances to the
//! nearest original in normalized units); and the critique's yardsticks ([`crate::yardsticks`]).
use crate::yardsticks::{self, Yardsticks};
use crate::zoo::Task;
use pdiff_core::error::Result;
use pdiff_core::params::Layout;
use serde::{Deserialize, Serialize};

/// Summary of a set of accuracies (fractions in [0, 1]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub best: f64,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub std: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let median = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        Summary { best: v[n - 1], mean, median, min: v[0], std }
    }
}

pub fn accuracy(pred: &[i64], labels: &[i64]) -> f64 {
    let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len().max(1) as f64
}

/// Per-model evaluation on one split: accuracy, the number of correctly classified examples
/// and the indices of misclassified ones.
#[derive(Clone, Debug, Default)]
pub struct ModelEval {
    pub accuracy: f64,
    pub correct: usize,
    pub wrong: Vec<u32>,
}

/// Evaluate each row (length D) of `rows` on the TRAIN or TEST split.
pub fn evaluate_rows(task: &dyn Task, layout: &Layout, rows: &[f32], train: bool) -> Result<Vec<ModelEval>> {
    let labels = task.labels(train);
    rows.chunks_exact(layout.param_count())
        .map(|row| {
            let pred = task.predict(layout, row, train)?;
            let wrong: Vec<u32> = pred.iter().zip(labels).enumerate().filter(|(_, (p, l))| p != l).map(|(i, _)| i as u32).collect();
            Ok(ModelEval { accuracy: accuracy(&pred, labels), correct: labels.len() - wrong.len(), wrong })
        })
        .collect()
}

pub fn accuracies(evals: &[ModelEval]) -> Vec<f64> {
    evals.iter().map(|e| e.accuracy).collect()
}

/// Median of integer counts, exact: an integer, or halfway between two (an even number of
/// values), both exactly representable in f64.
pub fn median_count(counts: &[usize]) -> f64 {
    let mut v = counts.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

fn correct_counts(evals: &[ModelEval]) -> Vec<usize> {
    evals.iter().map(|e| e.correct).collect()
}

/// Verdict of the generated median against a baseline, from counts of correctly classified test
/// images: "better" / "worse" when they differ by at least one image, else "equal" (a median of
/// an even number of models can fall halfway between two counts).
pub fn verdict(generated_correct: f64, baseline_correct: f64) -> &'static str {
    let diff = generated_correct - baseline_correct;
    if diff >= 1.0 {
        "better"
    } else if diff <= -1.0 {
        "worse"
    } else {
        "equal"
    }
}

/// The comparison of the generated models' median count of correctly classified test images
/// against a baseline's count (see [`Comparison`]).
pub fn comparison(baseline: String, generated_correct: f64, baseline_correct: f64, test_images: usize) -> Comparison {
    let n = test_images.max(1) as f64;
    Comparison {
        baseline,
        baseline_accuracy: baseline_correct / n,
        generated_median: generated_correct / n,
        difference: (generated_correct - baseline_correct) / n,
        test_images,
        baseline_correct,
        generated_median_correct: generated_correct,
        difference_images: generated_correct - baseline_correct,
        verdict: verdict(generated_correct, baseline_correct).into(),
    }
}

/// Intersection over union of two sorted index sets (1 when both are empty).
pub fn iou(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Mean IoU over all unordered pairs within one group.
pub fn mean_pairwise_iou(group: &[ModelEval]) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in 0..group.len() {
        for j in i + 1..group.len() {
            sum += iou(&group[i].wrong, &group[j].wrong);
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Mean IoU over all pairs across two groups.
pub fn mean_cross_iou(a: &[ModelEval], b: &[ModelEval]) -> f64 {
    let sum: f64 = a.iter().flat_map(|x| b.iter().map(move |y| iou(&x.wrong, &y.wrong))).sum();
    sum / (a.len() * b.len()).max(1) as f64
}

/// For each model of `models`, its largest IoU to any model of `reference` (skipping the
/// model itself when `same_group`).
pub fn max_iou_to(models: &[ModelEval], reference: &[ModelEval], same_group: bool) -> Vec<f64> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| reference.iter().enumerate().filter(|(j, _)| !same_group || *j != i).map(|(_, r)| iou(&m.wrong, &r.wrong)).fold(0.0, f64::max))
        .collect()
}

/// Each original perturbed by Gaussian noise of `sigma_rel` times each tensor's std.
pub fn noise_baseline(set: &pdiff_core::params::ParamSet, sigma_rel: f64, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d = set.layout.param_count();
    let mut out = set.data.clone();
    for row in out.chunks_exact_mut(d) {
        for t in &set.layout.tensors {
            let normal = Normal::new(0.0f32, (sigma_rel * t.std as f64) as f32).expect("finite std");
            for v in &mut row[t.offset..t.offset + t.numel()] {
                *v += normal.sample(&mut rng);
            }
        }
    }
    out
}

/// A noise baseline's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseBaseline {
    /// Noise std relative to each tensor's std.
    pub sigma_rel: f64,
    pub accuracy: Summary,
    pub max_iou_to_originals: Summary,
}

/// Similarity of the sets of misclassified test images (memorization analysis).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Similarity {
    pub original_original_mean_iou: f64,
    pub generated_generated_mean_iou: f64,
    pub original_generated_mean_iou: f64,
    /// Per original: max IoU to any other original (the scale of "same trajectory").
    pub original_max_iou_to_other_originals: Summary,
    /// Per generated model: max IoU to any original.
    pub generated_max_iou_to_originals: Summary,
}

/// One line of the plain comparison of generated models against a baseline. The verdict is
/// decided on counts of correctly classified test images (exact), the accuracies are those
/// counts divided by `test_images`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline: String,
    pub baseline_accuracy: f64,
    pub generated_median: f64,
    pub difference: f64,
    /// Number of test images.
    pub test_images: usize,
    /// Correctly classified test images: the baseline's, the generated models' median (both
    /// integers or halfway between two, for medians of an even number of models), difference.
    pub baseline_correct: f64,
    pub generated_median_correct: f64,
    pub difference_images: f64,
    /// "better" / "worse" (at least one test image apart) or "equal".
    pub verdict: String,
}

pub const NOISE_SIGMAS: [f64; 3] = [0.001, 0.05, 0.15];

/// Everything measured about originals, generated models and baselines on one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub originals: Summary,
    pub soup: f64,
    pub generated: Summary,
    pub selected_on_train: SelectedOnTrain,
    pub noise_baselines: Vec<NoiseBaseline>,
    pub similarity: Similarity,
    pub comparisons: Vec<Comparison>,
    /// The critique's yardsticks (absent from result files written before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yardsticks: Option<Yardsticks>,
    /// Per-model points for plots: (group, test accuracy, max IoU to originals).
    #[serde(skip)]
    pub points: Vec<(String, f64, f64)>,
    /// Per-model points of the accuracy-against-novelty plot: (group, test accuracy, distance to
    /// the nearest original); originals at their distance to the nearest other original.
    #[serde(skip)]
    pub novelty_points: Vec<(String, f64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelectedOnTrain {
    pub train: f64,
    pub test: f64,
    pub index: usize,
}

/// The evaluation protocol (docs/design.md, "The tools"): originals, soup, generated, generated
/// selected on TRAIN, noise baselines, memorization IoU, distances to the nearest original and
/// the critique's yardsticks (their random choices from `seed`).
pub fn evaluate_all(
    task: &dyn Task,
    set: &pdiff_core::params::ParamSet,
    generated: &[f32],
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation> {
    let layout = &set.layout;
    let total = 4 + NOISE_SIGMAS.len() + yardsticks::COUNT;
    progress(0, total);
    let orig = evaluate_rows(task, layout, &set.data, false)?;
    progress(1, total);
    let soup_row = set.mean_row();
    let soup = evaluate_rows(task, layout, &soup_row, false)?.remove(0);
    let gen_test = evaluate_rows(task, layout, generated, false)?;
    progress(2, total);
    let gen_train = evaluate_rows(task, layout, generated, true)?;
    progress(3, total);
    let best = (0..gen_train.len()).max_by(|&a, &b| gen_train[a].accuracy.partial_cmp(&gen_train[b].accuracy).unwrap().then(b.cmp(&a))).unwrap_or(0);
    let orig_self = max_iou_to(&orig, &orig, true);
    let gen_max = max_iou_to(&gen_test, &orig, false);
    let nearest = NearestOriginal::new(set);
    let orig_dist = nearest.originals_to_nearest_other();
    let gen_dist = nearest.distances(generated);
    let mut points: Vec<(String, f64, f64)> = Vec::new();
    points.extend(orig.iter().zip(&orig_self).map(|(e, m)| ("originals".to_string(), e.accuracy, *m)));
    points.extend(gen_test.iter().zip(&gen_max).map(|(e, m)| ("generated".to_string(), e.accuracy, *m)));
    let mut novelty_points: Vec<(String, f64, f64)> = Vec::new();
    novelty_points.extend(orig.iter().zip(&orig_dist).map(|(e, d)| ("originals".to_string(), e.accuracy, *d)));
    novelty_points.extend(gen_test.iter().zip(&gen_dist).map(|(e, d)| ("generated".to_string(), e.accuracy, *d)));
    novelty_points.push(("soup".to_string(), soup.accuracy, nearest.distances(&soup_row)[0]));
    let mut noise_baselines = Vec::new();
    let mut noise_counts = Vec::new();
    for (i, &sigma) in NOISE_SIGMAS.iter().enumerate() {
        let rows = noise_baseline(set, sigma, seed.wrapping_add(i as u64 + 1));
        let ev = evaluate_rows(task, layout, &rows, false)?;
        let m = max_iou_to(&ev, &orig, false);
        points.extend(ev.iter().zip(&m).map(|(e, mi)| (format!("noise {sigma}"), e.accuracy, *mi)));
        novelty_points.extend(ev.iter().zip(nearest.distances(&rows)).map(|(e, d)| (format!("noise {sigma}"), e.accuracy, d)));
        noise_baselines.push(NoiseBaseline { sigma_rel: sigma, accuracy: Summary::of(&accuracies(&ev)), max_iou_to_originals: Summary::of(&m) });
        noise_counts.push(correct_counts(&ev));
        progress(4 + i, total);
    }
    let done = 4 + NOISE_SIGMAS.len();
    let ys = yardsticks::evaluate(&nearest, &orig, &gen_test, &gen_dist, seed, &mut |rows: &[f32]| evaluate_rows(task, layout, rows, false), &mut |i| {
        progress(done + i, total)
    })?;
    novelty_points.extend(ys.points.iter().cloned());
    let originals = Summary::of(&accuracies(&orig));
    let generated_s = Summary::of(&accuracies(&gen_test));
    let test_images = task.labels(false).len();
    let generated_correct = median_count(&correct_counts(&gen_test));
    let compare = |name: String, baseline_correct: f64| comparison(name, generated_correct, baseline_correct, test_images);
    let orig_counts = correct_counts(&orig);
    let mut comparisons = vec![
        compare("originals (median)".into(), median_count(&orig_counts)),
        compare("originals (best)".into(), orig_counts.iter().copied().max().unwrap_or(0) as f64),
        compare("soup".into(), soup.correct as f64),
    ];
    for (nb, counts) in noise_baselines.iter().zip(&noise_counts) {
        comparisons.push(compare(format!("noise {} (median)", nb.sigma_rel), median_count(counts)));
    }
    progress(total, total);
    Ok(Evaluation {
        originals,
        soup: soup.accuracy,
        generated: generated_s,
        selected_on_train: SelectedOnTrain { train: gen_train[best].accuracy, test: gen_test[best].accuracy, index: best },
        noise_baselines,
        similarity: Similarity {
            original_original_mean_iou: mean_pairwise_iou(&orig),
            generated_generated_mean_iou: mean_pairwise_iou(&gen_test),
            original_generated_mean_iou: mean_cross_iou(&orig, &gen_test),
            original_max_iou_to_other_originals: Summary::of(&orig_self),
            generated_max_iou_to_originals: Summary::of(&gen_max),
        },
        comparisons,
        yardsticks: Some(ys),
        points,
        novelty_points,
    })
}

/// Median, min and max of a set of distances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let s = Summary::of(values);
        Spread { median: s.median, min: s.min, max: s.best }
    }
}

/// Novelty without a task: how far each generated vector is from its nearest original, against
/// how far each original is from its nearest other original (L2 distances over the D
/// parameters in normalized units: each tensor standardized with the originals' mean and std).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Novelty {
    pub generated_to_nearest_original: Spread,
    pub original_to_nearest_other_original: Spread,
    /// Distances between every two originals: the extent of the region the originals cover
    /// (checkpoints of one trajectory are each other's close neighbours, yet far apart overall).
    pub original_to_original: Spread,
    /// Median generated-to-original distance / median original-to-original distance: about 1
    /// for new draws from the originals' distribution, near 0 for copies of originals. None
    /// when the originals' median distance is 0 (duplicated originals: no scale to compare to).
    pub ratio_of_medians: Option<f64>,
    /// "copies", "like the originals", "farther" (see [`NOVELTY_COPY_RATIO`]) or "undefined".
    pub reading: String,
}

/// A ratio of medians below this reads "likely copies", above its inverse "farther from the
/// originals than they are from each other": a factor of two either side of 1, the ratio of new
/// draws from the distribution of the originals.
pub const NOVELTY_COPY_RATIO: f64 = 0.5;

impl Novelty {
    /// The plain-language reading of [`Novelty::reading`].
    pub fn sentence(&self) -> String {
        let Some(r) = self.ratio_of_medians else {
            return "undefined: the originals' median distance to their nearest other original is 0 (duplicated checkpoints)".into();
        };
        match self.reading.as_str() {
            "copies" => format!("generated models are much closer to an original than the originals are to each other (ratio of medians {r:.2}): likely copies of originals"),
            "farther" if self.generated_to_nearest_original.median <= self.original_to_original.median => format!(
                "generated models are farther from their nearest original than the originals are from each other (ratio of medians {r:.2}), \
                 yet closer to it than two originals typically are to each other ({:.3} against {:.3}): not copies, new points within the region of the originals",
                self.generated_to_nearest_original.median,
                self.original_to_original.median
            ),
            "farther" => format!(
                "generated models are farther from their nearest original than the originals are from each other (ratio of medians {r:.2}), \
                 and than two originals typically are ({:.3} against {:.3}): outside the region of the originals, check that they work",
                self.generated_to_nearest_original.median,
                self.original_to_original.median
            ),
            _ => format!("generated models are about as far from their nearest original as the originals are from each other (ratio of medians {r:.2}): new points among the originals, not copies"),
        }
    }
}

/// Distances to the nearest original, in normalized units: the L2 distance over the D
/// parameters after standardizing each tensor with the originals' mean and std (the mean cancels
/// in a difference, so each tensor's squared differences are divided by its variance, without a
/// normalized copy of the originals). The measure of [`novelty`] and of the yardsticks.
pub struct NearestOriginal<'a> {
    pub set: &'a pdiff_core::params::ParamSet,
}

impl<'a> NearestOriginal<'a> {
    pub fn new(set: &'a pdiff_core::params::ParamSet) -> Self {
        NearestOriginal { set }
    }

    /// Distance between two rows (host units) in normalized units.
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f64 {
        self.set
            .layout
            .tensors
            .iter()
            .map(|t| {
                let r = t.offset..t.offset + t.numel();
                squared_l2(&a[r.clone()], &b[r]) / (t.std as f64).powi(2)
            })
            .sum::<f64>()
            .sqrt()
    }

    fn nearest(&self, row: &[f32], skip: Option<usize>) -> f64 {
        let d = self.set.layout.param_count();
        self.set.data.chunks_exact(d).enumerate().filter(|(j, _)| Some(*j) != skip).map(|(_, o)| self.distance(row, o)).fold(f64::INFINITY, f64::min)
    }

    /// For each row of `rows` (D values each, host units), its distance to the nearest original.
    pub fn distances(&self, rows: &[f32]) -> Vec<f64> {
        rows.chunks_exact(self.set.layout.param_count()).map(|r| self.nearest(r, None)).collect()
    }

    /// For each original, its distance to the nearest other original.
    pub fn originals_to_nearest_other(&self) -> Vec<f64> {
        let d = self.set.layout.param_count();
        self.set.data.chunks_exact(d).enumerate().map(|(i, o)| self.nearest(o, Some(i))).collect()
    }

    /// Distances between every two originals.
    pub fn pairwise(&self) -> Vec<f64> {
        let rows: Vec<&[f32]> = self.set.data.chunks_exact(self.set.layout.param_count()).collect();
        (0..rows.len()).flat_map(|i| (i + 1..rows.len()).map(move |j| (i, j))).map(|(i, j)| self.distance(rows[i], rows[j])).collect()
    }
}

/// Squared Euclidean distance: eight f32 lanes over blocks of 256 values (vectorized), each
/// block's sum accumulated in f64.
fn squared_l2(a: &[f32], b: &[f32]) -> f64 {
    let mut total = 0f64;
    for (ca, cb) in a.chunks(256).zip(b.chunks(256)) {
        let mut lanes = [0f32; 8];
        let (mut ia, mut ib) = (ca.chunks_exact(8), cb.chunks_exact(8));
        for (x, y) in (&mut ia).zip(&mut ib) {
            for l in 0..8 {
                let diff = x[l] - y[l];
                lanes[l] += diff * diff;
            }
        }
        let tail: f32 = ia.remainder().iter().zip(ib.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
        total += lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// [`Novelty`] of `generated` (rows of D values, host units) against the originals of `set`.
pub fn novelty(set: &pdiff_core::params::ParamSet, generated: &[f32]) -> Novelty {
    let nearest = NearestOriginal::new(set);
    let gen_dist = nearest.distances(generated);
    let orig_dist = nearest.originals_to_nearest_other();
    let (g, o) = (Spread::of(&gen_dist), Spread::of(&orig_dist));
    let ratio = (o.median > 0.0).then(|| g.median / o.median);
    let reading = match ratio {
        None => "undefined",
        Some(r) if r < NOVELTY_COPY_RATIO => "copies",
        Some(r) if r > 1.0 / NOVELTY_COPY_RATIO => "farther",
        Some(_) => "like the originals",
    };
    Novelty {
        generated_to_nearest_original: g,
        original_to_nearest_other_original: o,
        original_to_original: Spread::of(&nearest.pairwise()),
        ratio_of_medians: ratio,
        reading: reading.into(),
    }
}
