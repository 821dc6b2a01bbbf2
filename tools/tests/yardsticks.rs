//! The critique's yardsticks (average of 16, per-parameter gaussian, noise at the generated
//! distance): how their models are made, that they are seeded, how they are measured and judged
//! (verdicts in test images), and where they appear (results.json, report.md and its plot,
//! `pdiff eval`). No demo run: synthetic sets, a stand-in evaluator and the committed result files.
use pdiff_core::params::{Layout, ParamSet};
use pdiff_tools::eval::{ModelEval, NearestOriginal};
use pdiff_tools::results::DemoResults;
use pdiff_tools::tasks_results::{TaskYardsticks, TasksResults, TasksYardsticks, YardstickTally};
use pdiff_tools::yardsticks::{self, average_of, gaussian, noise, noise_sigma_for_distance, per_parameter_mean_std, Yardsticks, AVERAGE_OF, DRAWS};
use rand::{Rng, SeedableRng};
use std::process::Command;

fn set_of(rows: &[Vec<f32>], shapes: &[(&str, Vec<usize>)]) -> ParamSet {
    let layout = Layout::from_shapes(shapes).unwrap();
    ParamSet::from_rows(layout, rows.concat(), (0..rows.len()).map(|i| format!("memory[{i}]")).collect()).unwrap()
}

/// K rows of D values, seeded: per parameter a mean and a spread of its own.
fn random_set(k: usize, d: usize, seed: u64) -> ParamSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centre: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let spread: Vec<f32> = (0..d).map(|_| rng.random_range(0.01..0.3)).collect();
    let rows: Vec<Vec<f32>> = (0..k).map(|_| (0..d).map(|j| centre[j] + spread[j] * rng.random_range(-1.7f32..1.7)).collect()).collect();
    set_of(&rows, &[("w", vec![d / 2]), ("b", vec![d - d / 2])])
}

#[test]
fn the_average_of_identical_checkpoints_is_them() {
    let row: Vec<f32> = (0..12).map(|j| 0.1 + 0.37 * (j as f32).sin()).collect();
    for k in [20, 10] {
        let set = set_of(&vec![row.clone(); k], &[("w", vec![3, 3]), ("b", vec![3])]);
        let models = average_of(&set, AVERAGE_OF, DRAWS, 7);
        assert_eq!(models.len(), DRAWS * 12, "K = {k}: 100 models of D values");
        for m in models.chunks_exact(12) {
            assert_eq!(m, row.as_slice(), "K = {k}");
        }
    }
}

#[test]
fn each_average_is_of_16_distinct_originals_or_of_all_when_fewer() {
    // Original i is the indicator of coordinate i: an average names the originals it took.
    let indicator = |k: usize| -> ParamSet {
        let rows: Vec<Vec<f32>> = (0..k).map(|i| (0..k).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect();
        set_of(&rows, &[("w", vec![k])])
    };
    let set = indicator(20);
    let models = average_of(&set, AVERAGE_OF, DRAWS, 3);
    assert_eq!(models.len(), DRAWS * 20);
    let mut subsets = std::collections::BTreeSet::new();
    for m in models.chunks_exact(20) {
        let taken: Vec<usize> = (0..20).filter(|&j| m[j] != 0.0).collect();
        assert_eq!(taken.len(), 16, "16 distinct originals: {m:?}");
        assert!(taken.iter().all(|&j| m[j] == 1.0 / 16.0), "{m:?}");
        subsets.insert(taken);
    }
    assert!(subsets.len() > 90, "random draws, not one subset: {} distinct of 100", subsets.len());

    // K = 10 < 16: every model is the average of all K (the soup).
    let small = indicator(10);
    let models = average_of(&small, AVERAGE_OF, DRAWS, 3);
    assert_eq!(models.len(), DRAWS * 10);
    assert!(models.iter().all(|&v| (v - 0.1).abs() < 1e-7), "{:?}", &models[..10]);
}

#[test]
fn the_gaussian_has_the_originals_mean_and_std_per_parameter() {
    let (k, d) = (40, 6);
    let mut set = random_set(k, d, 11);
    // A parameter constant across the originals: std 0, every draw equals it.
    for i in 0..k {
        set.data[i * d + 2] = 0.25;
    }
    let (mean, std) = per_parameter_mean_std(&set);
    for j in 0..d {
        let col: Vec<f64> = (0..k).map(|i| set.data[i * d + j] as f64).collect();
        let m = col.iter().sum::<f64>() / k as f64;
        let s = (col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        assert!((mean[j] - m).abs() < 1e-9 && (std[j] - s).abs() < 1e-9, "parameter {j}: {} {} vs {m} {s}", mean[j], std[j]);
    }
    assert_eq!(std[2], 0.0);

    let n = 20_000;
    let draws = gaussian(&set, n, 5);
    assert_eq!(draws.len(), n * d);
    for j in 0..d {
        let col: Vec<f64> = draws.chunks_exact(d).map(|r| r[j] as f64).collect();
        let m = col.iter().sum::<f64>() / n as f64;
        let s = (col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        if std[j] == 0.0 {
            assert!(col.iter().all(|&x| x == 0.25), "parameter {j}");
            continue;
        }
        // Five standard errors of the mean; 4% of the std (about eight standard errors).
        assert!((m - mean[j]).abs() < 5.0 * std[j] / (n as f64).sqrt(), "parameter {j}: mean {m} vs {}", mean[j]);
        assert!((s / std[j] - 1.0).abs() < 0.04, "parameter {j}: std {s} vs {}", std[j]);
    }
    // Independent draws across parameters and models, not one noise vector scaled.
    assert_ne!(&draws[..d], &draws[d..2 * d]);
}

#[test]
fn noise_sits_at_the_asked_distance_and_takes_every_original_in_turn() {
    let (k, d) = (30, 2000);
    // Originals far apart (several units in normalized units) against noise at 0.8.
    let set = random_set(k, d, 2);
    let nearest = NearestOriginal::new(&set);
    let target = 0.8;
    let sigma = noise_sigma_for_distance(&set, target);
    assert!((sigma - target / (d as f64).sqrt()).abs() < 1e-12);
    let rows = noise(&set, sigma, DRAWS, 9);
    assert_eq!(rows.len(), DRAWS * d);
    let dist = nearest.distances(&rows);
    let mut sorted = dist.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[DRAWS / 2];
    assert!((median / target - 1.0).abs() < 0.05, "median distance {median} against {target}");
    // Each noisy model's nearest original is its source: 100 models of 30 originals take each
    // 3 or 4 times (all of them before any again).
    let mut uses = vec![0usize; k];
    for r in rows.chunks_exact(d) {
        let (src, _) = (0..k).map(|i| (i, nearest.distance(r, set.row(i)))).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        uses[src] += 1;
    }
    assert!(uses.iter().all(|&u| u == 3 || u == 4), "{uses:?}");
    // No noise: copies of originals, at distance 0.
    let copies = noise(&set, 0.0, 5, 9);
    assert!(nearest.distances(&copies).iter().all(|&x| x == 0.0));
}

#[test]
fn the_same_seed_gives_the_same_models() {
    let set = random_set(24, 10, 4);
    assert_eq!(average_of(&set, AVERAGE_OF, DRAWS, 1), average_of(&set, AVERAGE_OF, DRAWS, 1));
    assert_ne!(average_of(&set, AVERAGE_OF, DRAWS, 1), average_of(&set, AVERAGE_OF, DRAWS, 2));
    assert_eq!(gaussian(&set, DRAWS, 1), gaussian(&set, DRAWS, 1));
    assert_ne!(gaussian(&set, DRAWS, 1), gaussian(&set, DRAWS, 2));
    assert_eq!(noise(&set, 0.01, DRAWS, 1), noise(&set, 0.01, DRAWS, 1));
    assert_ne!(noise(&set, 0.01, DRAWS, 1), noise(&set, 0.01, DRAWS, 2));
    // The whole evaluation: the same seed, the same numbers.
    let a = serde_json::to_string(&stand_in_yardsticks(&set, &[1765, 1765, 1764], 5)).unwrap();
    let b = serde_json::to_string(&stand_in_yardsticks(&set, &[1765, 1765, 1764], 5)).unwrap();
    let c = serde_json::to_string(&stand_in_yardsticks(&set, &[1765, 1765, 1764], 6)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

const TEST_IMAGES: usize = 2004;

/// A model that classifies `correct` of the 2,004 test images right, wrong on the first others.
fn model(correct: usize) -> ModelEval {
    ModelEval { accuracy: correct as f64 / TEST_IMAGES as f64, correct, wrong: (0..(TEST_IMAGES - correct) as u32).collect() }
}

/// The yardsticks of `set` with a stand-in evaluator: in each call, models alternately classify
/// 1,760 and 1,770 test images right (median 1,765); the originals 1,760 each, the generated
/// models `generated` each.
fn stand_in_yardsticks(set: &ParamSet, generated: &[usize], seed: u64) -> Yardsticks {
    let d = set.layout.param_count();
    let nearest = NearestOriginal::new(set);
    let originals: Vec<ModelEval> = (0..set.k()).map(|_| model(1760)).collect();
    let gen_rows: Vec<f32> = (0..generated.len()).flat_map(|i| set.row(i % set.k()).iter().map(|v| v + 0.01).collect::<Vec<_>>()).collect();
    let gen: Vec<ModelEval> = generated.iter().map(|&c| model(c)).collect();
    let gen_dist = nearest.distances(&gen_rows);
    let mut calls = Vec::new();
    let y = yardsticks::evaluate(
        &nearest,
        &originals,
        &gen,
        &gen_dist,
        seed,
        &mut |rows: &[f32]| {
            calls.push(rows.len() / d);
            Ok((0..rows.len() / d).map(|i| model(if i % 2 == 0 { 1760 } else { 1770 })).collect())
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(calls, vec![DRAWS; yardsticks::COUNT], "each yardstick: one call of 100 models");
    y
}

#[test]
fn verdicts_count_test_images() {
    let set = random_set(24, 10, 8);
    let names = ["average of 16", "gaussian", "noise at the generated distance", "noise at 2x the generated distance"];
    for (generated, verdict, diff) in
        [(vec![1766, 1766, 1765], "better", 1.0), (vec![1765, 1765], "equal", 0.0), (vec![1765, 1766], "equal", 0.5), (vec![1764, 1770, 1700], "worse", -1.0)]
    {
        let y = stand_in_yardsticks(&set, &generated, 3);
        assert_eq!(y.draws, DRAWS);
        assert_eq!(y.baselines.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), names);
        for b in &y.baselines {
            let c = &b.comparison;
            assert_eq!(b.models, DRAWS);
            assert_eq!((c.test_images, c.baseline_correct), (TEST_IMAGES, 1765.0), "{}", b.name);
            assert_eq!((c.verdict.as_str(), c.difference_images), (verdict, diff), "{generated:?} against {}", b.name);
            assert_eq!(c.baseline_accuracy, 1765.0 / TEST_IMAGES as f64);
            assert_eq!((b.accuracy.min, b.accuracy.best), (1760.0 / 2004.0, 1770.0 / 2004.0));
            // The stand-in's models get the originals' mistakes or a superset: max IoU 1 or
            // 244/234's inverse.
            assert_eq!(b.max_iou_to_originals.best, 1.0);
            assert!((b.max_iou_to_originals.min - 234.0 / 244.0).abs() < 1e-12, "{:?}", b.max_iou_to_originals);
        }
        let (s1, s2) = (y.baselines[2].sigma_rel.unwrap(), y.baselines[3].sigma_rel.unwrap());
        assert!(s1 > 0.0 && (s2 / s1 - 2.0).abs() < 1e-12, "{s1} {s2}");
        assert!(y.baselines[..2].iter().all(|b| b.sigma_rel.is_none()));
        // Per-model points for the plot: one per model of each yardstick.
        assert_eq!(y.points.len(), DRAWS * yardsticks::COUNT);
        let readings = y.readings();
        assert_eq!(readings.len(), 4);
        let word = match verdict {
            "better" => "more accurate than",
            "worse" => "less accurate than",
            _ => "as accurate as",
        };
        assert!(readings.iter().all(|r| r.contains(word)), "{readings:?}");
    }
    // Noise at the generated distance sits there: "about as far" in the reading.
    let y = stand_in_yardsticks(&set, &[1765; 5], 3);
    assert!(y.readings()[2].contains("about as far from the originals"), "{}", y.readings()[2]);
}

#[test]
fn tallies_count_tasks_by_verdict() {
    let set = random_set(24, 10, 8);
    let better = stand_in_yardsticks(&set, &[1766], 1);
    let equal = stand_in_yardsticks(&set, &[1765], 1);
    let worse = stand_in_yardsticks(&set, &[1700], 1);
    let t = YardstickTally::over(&[&better, &equal, &worse, &better]);
    assert_eq!(t.len(), yardsticks::COUNT);
    for x in &t {
        assert_eq!((x.better, x.equal, x.worse), (2, 1, 1), "{}", x.name);
        assert_eq!(x.accuracy, 1765.0 / 2004.0);
        // The median of two generated medians: halfway between 1,765 and 1,766 images.
        assert!((x.generated - 1765.5 / 2004.0).abs() < 1e-15, "{}", x.generated);
    }
    assert!(YardstickTally::over(&[]).is_empty());
}

#[test]
fn yardsticks_of_rows_need_two_originals() {
    let layout = Layout::from_shapes(&[("w", vec![4])]).unwrap();
    let mut eval = |rows: &[f32]| Ok((0..rows.len() / 4).map(|_| model(1765)).collect());
    let one = yardsticks::evaluate_of_rows(&layout, &[vec![0.1, 0.2, 0.3, 0.4]], &[0.1, 0.2, 0.3, 0.5], 1, &mut eval).unwrap();
    assert!(one.is_none());
    let rows: Vec<Vec<f32>> = (0..10).map(|i| vec![0.1 * i as f32, 0.2, 0.3 - 0.01 * i as f32, 0.4]).collect();
    let y = yardsticks::evaluate_of_rows(&layout, &rows, &[0.1, 0.2, 0.3, 0.5], 1, &mut eval).unwrap().unwrap();
    assert_eq!(y.baselines.len(), yardsticks::COUNT);
    // K = 10 < 16: every average is the soup, all at one distance.
    let d = &y.baselines[0].distance_to_nearest_original;
    assert!((d.max - d.min).abs() < 1e-9, "{d:?}");
    assert!(y.baselines.iter().all(|b| b.comparison.verdict == "equal"));
}

fn committed<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = pdiff_test_support::repo_root().join("docs/results").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn results_and_report_show_the_yardsticks_and_their_plot() {
    // A result file written before the yardsticks (mnist-mlp-wide's other seeds): it still parses,
    // and says it has none.
    let mut r: DemoResults = committed("mnist-mlp-wide-seed1.json");
    assert!(r.evaluation.yardsticks.is_none());
    let d0 = tempfile::tempdir().unwrap();
    pdiff_tools::report::write(d0.path(), &r, None).unwrap();
    let md = std::fs::read_to_string(d0.path().join("report.md")).unwrap();
    assert!(md.contains("## The critique's yardsticks\n\nNo yardsticks in this result file"), "{md}");
    assert!(!d0.path().join("novelty.png").exists());

    let set = random_set(24, 10, 8);
    let y = stand_in_yardsticks(&set, &[1766, 1766, 1765], 3);
    r.evaluation.novelty_points = y.points.clone();
    r.evaluation.novelty_points.extend([("originals".to_string(), 0.878, 0.2), ("generated".to_string(), 0.881, 0.3), ("soup".to_string(), 0.880, 0.0)]);
    r.evaluation.yardsticks = Some(y.clone());
    // In results.json at the top level, and back.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["yardsticks"]["baselines"].as_array().unwrap().len(), yardsticks::COUNT);
    assert_eq!(json["yardsticks"]["baselines"][0]["comparison"]["verdict"], "better");
    let back: DemoResults = serde_json::from_value(json).unwrap();
    assert_eq!(serde_json::to_string(&back.evaluation.yardsticks).unwrap(), serde_json::to_string(&r.evaluation.yardsticks).unwrap());

    let d = tempfile::tempdir().unwrap();
    pdiff_tools::report::write(d.path(), &r, None).unwrap();
    let md = std::fs::read_to_string(d.path().join("report.md")).unwrap();
    assert!(md.contains("## The critique's yardsticks\n\nZeng et al. 2025"), "{md}");
    assert!(md.contains("arXiv:2506.07998"), "{md}");
    let g = &r.evaluation.generated;
    assert!(
        md.contains(&format!(
            "| generated | {:.4} / {:.4} / {:.4} | {:.4} | {:.4} | 1766 | |",
            g.best, g.median, g.min, y.generated_to_nearest_original.median, y.generated_max_iou_to_originals.median
        )),
        "{md}"
    );
    for b in &y.baselines {
        let name = b.sigma_rel.map(|s| format!("{} ({s:.4} x tensor std)", b.name)).unwrap_or_else(|| b.name.clone());
        let row = format!(
            "| {name} | {:.4} / {:.4} / {:.4} | {:.4} | {:.4} | 1765 | **better** (+1) |",
            b.accuracy.best, b.accuracy.median, b.accuracy.min, b.distance_to_nearest_original.median, b.max_iou_to_originals.median
        );
        assert!(md.contains(&row), "no row {row:?} in\n{md}");
    }
    for line in y.readings() {
        assert!(md.contains(&format!("- {line}.\n")), "{line}");
    }
    // The accuracy-against-novelty plot beside the others (when a font is installed).
    if md.contains("![accuracy against novelty](novelty.png)") {
        let png = std::fs::read(d.path().join("novelty.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    } else {
        assert!(md.contains("(Accuracy-against-novelty plot skipped: no TrueType font found"), "{md}");
    }
}

#[test]
fn the_tasks_report_shows_the_yardsticks() {
    // Written before the yardsticks.
    let mut r: TasksResults = committed("mnist-tasks-seed1.json");
    assert!(r.yardsticks.is_none());
    let set = random_set(24, 10, 8);
    let a = stand_in_yardsticks(&set, &[1766], 1);
    let b = stand_in_yardsticks(&set, &[1700], 2);
    r.yardsticks = Some(TasksYardsticks {
        draws: DRAWS,
        heldout: vec![
            TaskYardsticks { code: r.heldout[0].code.clone(), from: r.seen_tasks[0].clone(), yardsticks: a.clone() },
            TaskYardsticks { code: r.heldout[1].code.clone(), from: r.seen_tasks[1].clone(), yardsticks: b.clone() },
        ],
        heldout_summary: YardstickTally::over(&[&a, &b]),
        seen_summary: YardstickTally::over(&[&a, &a, &b]),
    });
    let json = serde_json::to_string(&r).unwrap();
    let back: TasksResults = serde_json::from_str(&json).unwrap();
    assert_eq!(back.yardsticks.as_ref().unwrap().heldout.len(), 2);

    let d = tempfile::tempdir().unwrap();
    pdiff_tools::tasks_report::write(d.path(), &r, &Default::default()).unwrap();
    let md = std::fs::read_to_string(d.path().join("report.md")).unwrap();
    assert!(md.contains("## The critique's yardsticks\n\nZeng et al. 2025"), "{md}");
    let ys = r.yardsticks.as_ref().unwrap();
    for t in &ys.seen_summary {
        let row = format!(
            "| {} | {:.4} | {:.4} | 2 / 0 / 1 | {:.3} / {:.3} | {:.3} / {:.3} |",
            t.name, t.accuracy, t.generated, t.distance_to_nearest_original, t.generated_distance, t.max_iou_to_originals, t.generated_max_iou
        );
        assert!(md.contains(&row), "no row {row:?} in\n{md}");
    }
    let h = &ys.heldout[1];
    let row = format!("| {} ({}) | average of 16 | {:.4} | {:.4} | **worse** (-65) |", h.code, h.from, 1765.0 / 2004.0, 1700.0 / 2004.0);
    assert!(md.contains(&row), "no row {row:?} in\n{md}");
    if md.contains("![accuracy against novelty](novelty.png)") {
        assert!(d.path().join("novelty.png").is_file());
    } else {
        assert!(md.contains("no TrueType font found"), "{md}");
    }
}

#[test]
fn mnist_tasks_evaluations_count_what_the_accuracies_say() {
    use pdiff_tools::zoo::mnist_tasks::{DigitSet, MnistTasks};
    let tasks = MnistTasks::new(None).unwrap();
    let layout = MnistTasks::layout();
    let d = layout.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let rows: Vec<f32> = (0..3 * d).map(|_| rng.random_range(-0.3f32..0.3)).collect();
    let task = DigitSet::from_code("0110100101").unwrap();
    let evals = tasks.evals(&layout, &rows, task, false).unwrap();
    let accs = tasks.accuracies(&layout, &rows, task, false).unwrap();
    assert_eq!(evals.len(), 3);
    for (e, a) in evals.iter().zip(&accs) {
        assert_eq!(e.accuracy, *a);
        assert_eq!(e.correct + e.wrong.len(), tasks.test_len());
        assert!(e.wrong.windows(2).all(|w| w[0] < w[1]), "sorted, distinct indices");
    }
}

/// `pdiff eval` prints the yardsticks, seeded by `--yardstick-seed`.
#[test]
fn eval_prints_the_yardsticks() {
    let d = tempfile::tempdir().unwrap();
    let entries: Vec<(&str, Vec<usize>)> = pdiff_tools::zoo::mlp3::TENSORS.iter().map(|(n, s)| (*n, s.to_vec())).collect();
    let layout = Layout::from_shapes(&entries).unwrap();
    let (orig, gen) = (d.path().join("orig"), d.path().join("gen"));
    pdiff_test_support::write_checkpoints(&orig, &layout, 20);
    pdiff_test_support::write_checkpoints(&gen, &layout, 4);
    let run = |seed: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_pdiff"))
            .args(["eval", "--task", "mnist-mlp3", "--checkpoints", orig.to_str().unwrap(), "--generated", gen.to_str().unwrap(), "--yardstick-seed", seed])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run("3");
    assert!(out.contains("yardsticks (100 models each, seed 3); generated: distance to the nearest original"), "{out}");
    for name in ["  average of 16: best", "  gaussian: best", "  noise at the generated distance (", "  noise at 2x the generated distance ("] {
        assert!(out.contains(name), "no {name:?} in\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with("reading: ")).count(), 4, "{out}");
    assert_eq!(out, run("3"), "the same seed, the same output");
}
