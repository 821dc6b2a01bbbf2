//! Numbers in the docs come from committed result files (docs/results/*.json, written by
//! `pdiff demo`, `pdiff bench` and `pdiff ablation`). Each result page (docs/results/<family>.md)
//! and the README's headline table are checked here against those files: every table row, and
//! the sentences that quote timings or compare the numbers, must be exactly what the files give
//! with the formatting rules below (4 decimals for accuracies, ...). Regenerate the files with the
//! commands of docs/results/README.md, then update the pages and the README until this test
//! passes.
use pdiff_tools::ablation::AblationRow;
use pdiff_tools::bench::BenchReport;
use pdiff_tools::results::DemoResults;
use pdiff_tools::scale::ScaleReport;
use pdiff_tools::tasks_demo::TasksResults;
use pdiff_tools::train_bench::TrainBenchReport;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A document whose numbers are checked: a result page, or the README.
struct Page {
    path: &'static str,
    text: String,
}

fn page(path: &'static str) -> Page {
    Page { path, text: read(path) }
}

const README: &str = "README.md";
const MLP3: &str = "docs/results/mnist-mlp3.md";
const CNN_BN: &str = "docs/results/mnist-cnn-bn.md";
const TASKS: &str = "docs/results/mnist-tasks.md";
const WIDE: &str = "docs/results/mnist-mlp-wide.md";
const ABLATIONS: &str = "docs/results/ablations.md";
const SCALE: &str = "docs/results/scale.md";
const BENCH: &str = "docs/results/bench.md";
const TRAIN_BENCH: &str = "docs/results/train-bench.md";
const RESULTS_INDEX: &str = "docs/results/README.md";

/// Runs of whitespace as one space: a sentence may be wrapped anywhere in the page.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The rows (cells, trimmed, bold markers removed) of the first table after the line `heading`
/// of `text` (the document `path`), without its header and separator rows.
fn table_after(path: &str, text: &str, heading: &str) -> Vec<Vec<String>> {
    let start = text.lines().position(|l| l.trim_end() == heading).unwrap_or_else(|| panic!("{path} has no line {heading:?}"));
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().replace("**", "")).collect())
        .collect();
    assert!(rows.len() > 2, "{path}: no table after {heading:?}");
    rows[2..].to_vec()
}

impl Page {
    fn table_after(&self, heading: &str) -> Vec<Vec<String>> {
        table_after(self.path, &self.text, heading)
    }

    fn assert_table(&self, heading: &str, expected: Vec<Vec<String>>) {
        let path = self.path;
        let got = self.table_after(heading);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "{path}, table after {heading:?}, row {}: the page (left) vs the result files (right)", i + 1);
        }
        assert_eq!(got.len(), expected.len(), "{path}, table after {heading:?}: {} rows on the page, {} expected:\n{expected:#?}", got.len(), expected.len());
    }

    fn assert_contains(&self, sentence: &str) {
        assert!(squash(&self.text).contains(&squash(sentence)), "{} should say exactly: {sentence:?}", self.path);
    }
}

fn row(cells: &[String]) -> Vec<String> {
    cells.to_vec()
}

fn acc(x: f64) -> String {
    format!("{x:.4}")
}

/// A demo's accuracy table: originals, generated, soup, the noise baseline(s) shown, the model
/// selected on TRAIN.
fn demo_table(r: &DemoResults, noise_shown: &[f64]) -> Vec<Vec<String>> {
    let ev = &r.evaluation;
    let e = String::new;
    let s = |x: &pdiff_tools::eval::Summary| [acc(x.best), acc(x.mean), acc(x.median), acc(x.min)];
    let [ob, om, omed, omin] = s(&ev.originals);
    let [gb, gm, gmed, gmin] = s(&ev.generated);
    let mut rows = vec![
        row(&[format!("originals (K = {})", r.k), ob, om, omed, omin]),
        row(&[format!("generated (N = {})", r.n_generated), gb, gm, gmed, gmin]),
        row(&["soup (uniform average of the K originals)".into(), acc(ev.soup), e(), e(), e()]),
    ];
    for sigma in noise_shown {
        let nb = ev.noise_baselines.iter().find(|nb| nb.sigma_rel == *sigma).unwrap_or_else(|| panic!("no noise baseline {sigma}"));
        rows.push(row(&[format!("originals + noise {sigma} x tensor std (median)"), e(), e(), acc(nb.accuracy.median), e()]));
    }
    rows.push(row(&[format!("generated, best on TRAIN ({}), on TEST", acc(ev.selected_on_train.train)), acc(ev.selected_on_train.test), e(), e(), e()]));
    rows
}

/// "better (+3 images)": a verdict with its difference in test images (exact halves shown).
fn verdict_cell(c: &pdiff_tools::eval::Comparison) -> String {
    let images = if c.difference_images.abs() == 1.0 { "image" } else { "images" };
    format!("{} ({:+} {images})", c.verdict, c.difference_images)
}

/// Short names of the health warnings, for the tables.
fn warning_labels(warnings: &[String]) -> String {
    let labels: Vec<&str> = warnings
        .iter()
        .map(|w| {
            if w.starts_with("K = ") {
                "few checkpoints"
            } else if w.starts_with("the autoencoder reconstructs") {
                "reconstruction"
            } else if w.starts_with("checkpoints look permutation-misaligned") {
                "misaligned"
            } else {
                panic!("a warning the docs do not name: {w}")
            }
        })
        .collect();
    if labels.is_empty() {
        "none".into()
    } else {
        labels.join(", ")
    }
}

fn percent(mse: f64, spread: f64) -> String {
    format!("{:.1}%", 100.0 * mse / spread)
}

/// 13002 -> "13,002".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A demo's page: its accuracy table, its verdicts against every baseline and its health and
/// novelty table (the column named after the task).
fn assert_demo_page(p: &Page, r: &DemoResults, noise_shown: &[f64]) {
    p.assert_table("## Test accuracy", demo_table(r, noise_shown));
    let verdicts = r.evaluation.comparisons.iter().map(|c| row(&[c.baseline.clone(), verdict_cell(c)])).collect();
    p.assert_table("## Against the baselines", verdicts);
    let line = |name: &str, value: String| row(&[name.to_string(), value]);
    let n = &r.novelty;
    let health = vec![
        line("warnings", warning_labels(&r.warnings)),
        line(
            "reconstruction MSE / checkpoints' spread",
            format!("{:.1e} / {:.1e} = {}", r.reconstruction_mse, r.checkpoint_variance, percent(r.reconstruction_mse, r.checkpoint_variance)),
        ),
        line("generated latents clipped", format!("{} of {}", r.latent_clipping.clipped.rows, r.latent_clipping.generated)),
        line("distance to the nearest original: generated (median)", format!("{:.3}", n.generated_to_nearest_original.median)),
        line("distance to the nearest other original: originals (median)", format!("{:.3}", n.original_to_nearest_other_original.median)),
        line("distance between two originals (median)", format!("{:.3}", n.original_to_original.median)),
        line("ratio of medians", n.ratio_of_medians.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())),
    ];
    p.assert_table("## Health and novelty", health);
    assert_eq!(p.table_after("## Health and novelty").len(), 7);
    assert_yardsticks(p, r);
    // The column is named after the task whose file this is.
    let header = p.text.lines().skip_while(|l| l.trim_end() != "## Health and novelty").find(|l| l.starts_with('|')).unwrap();
    assert_eq!(header.trim(), format!("| | {} |", r.task), "{}: health table header", p.path);
}

/// A demo page's yardstick section: the table report.md writes (the generated models, then each
/// yardstick with its verdict in test images) and one sentence per yardstick saying where the
/// generated models beat, equal or lose to it.
fn assert_yardsticks(p: &Page, r: &DemoResults) {
    let heading = "## The critique's yardsticks";
    let y = r.evaluation.yardsticks.as_ref().unwrap_or_else(|| panic!("{}: the result file of {} has no yardsticks", p.path, r.task));
    let g = &r.evaluation.generated;
    let three = |s: &pdiff_tools::eval::Summary| format!("{} / {} / {}", acc(s.best), acc(s.median), acc(s.min));
    let mut rows = vec![row(&[
        "generated".into(),
        three(g),
        format!("{:.4}", y.generated_to_nearest_original.median),
        format!("{:.4}", y.generated_max_iou_to_originals.median),
        y.baselines[0].comparison.generated_median_correct.to_string(),
        String::new(),
    ])];
    for b in &y.baselines {
        let name = match b.sigma_rel {
            Some(s) => format!("{} ({s:.4} x tensor std)", b.name),
            None => b.name.clone(),
        };
        let c = &b.comparison;
        rows.push(row(&[
            name,
            three(&b.accuracy),
            format!("{:.4}", b.distance_to_nearest_original.median),
            format!("{:.4}", b.max_iou_to_originals.median),
            c.baseline_correct.to_string(),
            format!("{} ({:+})", c.verdict, c.difference_images),
        ]));
    }
    p.assert_table(heading, rows);
    for reading in y.readings() {
        p.assert_contains(&reading);
    }
}

#[test]
fn mnist_mlp3_page_matches_its_result_file() {
    let p = page(MLP3);
    let r: DemoResults = json("docs/results/mnist-mlp3.json");
    assert_eq!(r.task, "mnist-mlp3");
    assert_demo_page(&p, &r, &[0.05]);
    let t = &r.timings_s;
    p.assert_contains(&format!(
        "Time: collect {:.1} s, autoencoder {:.1} s, diffusion {:.1} s, sample {:.2} s, evaluate {:.1} s",
        t.collect, t.train_autoencoder, t.train_diffusion, t.sample, t.evaluate
    ));
    p.assert_contains(&format!("({} parameters, all modelled)", thousands(r.num_params)));
    // The plain-language verdict quotes the numbers it compares.
    let ev = &r.evaluation;
    let vs_originals = &ev.comparisons[0];
    assert_eq!(vs_originals.baseline, "originals (median)");
    p.assert_contains(&format!("(by {} of the {} test images)", vs_originals.difference_images, thousands(vs_originals.test_images)));
    p.assert_contains(&format!("({} vs {})", acc(ev.generated.median), acc(ev.soup)));
    let sim = &ev.similarity;
    p.assert_contains(&format!(
        "IoU {:.2} (median), less than the originals overlap each other ({:.2})",
        sim.generated_max_iou_to_originals.median, sim.original_max_iou_to_other_originals.median
    ));
    p.assert_contains(&format!("each lies {:.1} times farther", r.novelty.ratio_of_medians.unwrap()));
}

#[test]
fn mnist_cnn_bn_page_matches_its_result_file() {
    let p = page(CNN_BN);
    let r: DemoResults = json("docs/results/mnist-cnn-bn.json");
    assert_eq!(r.task, "mnist-cnn-bn");
    assert_demo_page(&p, &r, &[]);
    let t = &r.timings_s;
    p.assert_contains(&format!("Time: collect {:.0} s, training {:.0} s, evaluation {:.0} s.", t.collect, t.train_autoencoder + t.train_diffusion, t.evaluate));
    p.assert_contains(&format!("({} parameters)", r.num_params));
}

/// The index's reading notes quote the demos' health and novelty.
#[test]
fn results_index_quotes_the_demo_files() {
    let p = page(RESULTS_INDEX);
    let mlp: DemoResults = json("docs/results/mnist-mlp3.json");
    let cnn: DemoResults = json("docs/results/mnist-cnn-bn.json");
    let ratio = |r: &DemoResults| percent(r.reconstruction_mse, r.checkpoint_variance);
    p.assert_contains(&format!("the autoencoder gets to {} of it (mnist-mlp3) and {} (mnist-cnn-bn)", ratio(&mlp), ratio(&cnn)));
    p.assert_contains(&format!(
        "(on mnist-mlp3: {:.3} against {:.3} between two originals)",
        mlp.novelty.generated_to_nearest_original.median, mlp.novelty.original_to_original.median
    ));
}

/// "DDPM-1000" / "DDIM-50" from the JSON's "ddpm" / "ddim-50".
fn sampler_name(label: &str, timesteps: usize) -> String {
    match label {
        "ddpm" => format!("DDPM-{timesteps}"),
        other => other.replace("ddim", "DDIM"),
    }
}

#[test]
fn bench_page_matches_its_result_file() {
    let p = page(BENCH);
    let b: BenchReport = json("docs/results/bench-cpu.json");
    assert!(b.runs >= pdiff_tools::bench::MIN_RUNS && b.warmup_runs >= 1, "runs {}, warm-up {}", b.runs, b.warmup_runs);
    let timesteps = pdiff_core::diffusion::Schedule::default().timesteps;
    let rows = b
        .rows
        .iter()
        .map(|r| {
            assert_eq!(r.run_seconds.len(), b.runs);
            row(&[
                r.backend.clone(),
                sampler_name(&r.sampler, timesteps),
                format!("{:.3}", r.seconds),
                format!("{:.0}", r.models_per_second),
                r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into()),
                r.test_accuracy.map(|s| acc(s.median)).unwrap_or_else(|| "-".into()),
            ])
        })
        .collect();
    p.assert_table("## Sampling 100 models", rows);
    p.assert_contains(&format!("seconds are the median of {} timed runs after {} warm-up run", b.runs, b.warmup_runs));
    let latency = |name: &str| b.single_sample_latency_s.iter().find(|(n, _)| n.starts_with(name)).map(|(_, s)| s * 1e3).unwrap();
    p.assert_contains(&format!(
        "Single-model latency (DDIM-50, median of {}): tch {:.1} ms, ONNX Runtime {:.1} ms. DDIM-50 on ONNX Runtime is {:.0}x faster than DDPM-{timesteps} on tch.",
        b.latency_runs,
        latency("tch"),
        latency("onnxruntime"),
        b.speedup_ddim_ort_vs_ddpm_tch
    ));
    let t = b.training.expect("bench-cpu.json measures training (--checkpoints)");
    p.assert_contains(&format!(
        "Training (K = {}, D = {}, {}): autoencoder {:.1} ms/step, diffusion {:.1} ms/step, peak RSS {:.0} MiB",
        t.k,
        thousands(t.param_count),
        t.preset,
        t.ae_ms_per_step,
        t.diffusion_ms_per_step,
        t.peak_rss_mib.unwrap_or(f64::NAN)
    ));
}

#[test]
fn train_bench_page_matches_its_result_file() {
    let p = page(TRAIN_BENCH);
    let r: TrainBenchReport = json("docs/results/train-bench-cpu.json");
    assert!(r.train_bench);
    let rows = r
        .rows
        .iter()
        .map(|x| {
            row(&[
                thousands(x.param_count),
                x.preset.clone(),
                x.stage.clone(),
                x.condition.clone(),
                thousands(x.rows_per_step),
                format!("{:.2}", x.ms_per_step),
                format!("{:.1}", x.flops_per_step / 1e6),
                format!("{:.2}", x.gflops_per_second),
                format!("{:.1}%", 100.0 * x.fraction_of_peak),
            ])
        })
        .collect();
    p.assert_table("## Each stage against the matmul peak", rows);
    p.assert_contains(&format!(
        "matmul peak ({n} x {n}, best of {}): {:.1} GFLOP/s idle, {:.1} GFLOP/s next to the busy process",
        r.matmul.runs,
        r.matmul.idle_gflops_per_second,
        r.matmul.busy_gflops_per_second,
        n = r.matmul.n
    ));
    p.assert_contains(&format!(
        "K = {}, {} warm-up and {} timed steps per stage, {} libtorch threads on {} cores, OMP_WAIT_POLICY={}",
        r.k,
        r.warmup_steps,
        r.timed_steps,
        r.threads,
        r.cores,
        r.omp_wait_policy.as_deref().unwrap_or("unset")
    ));
    let find = |preset: &str, d: usize, stage: &str, condition: &str| {
        r.rows
            .iter()
            .find(|x| x.preset == preset && x.d_requested == d && x.stage == stage && x.condition == condition)
            .unwrap_or_else(|| panic!("{preset} {d} {stage} {condition}"))
    };
    let target = find("chunked", 1_000_000, "autoencoder", "idle");
    p.assert_contains(&format!("the chunked autoencoder's step at D = 10^6 reaches {:.1}% of the peak (the target is 30%)", 100.0 * target.fraction_of_peak));
}

#[test]
fn ablations_page_matches_its_result_file() {
    let p = page(ABLATIONS);
    let rows: Vec<AblationRow> = json("docs/results/ablation-mlp3.json");
    let expected = rows
        .iter()
        .map(|r| {
            row(&[
                r.study.clone(),
                r.k.to_string(),
                r.input_noise.to_string(),
                r.latent_noise.to_string(),
                acc(r.generated.median),
                acc(r.generated.min),
                format!("{:.2}", r.generated_max_iou_to_originals.median),
                r.reconstruction_ratio.map(|x| format!("{:.0}%", 100.0 * x)).unwrap_or_else(|| "-".into()),
                format!("{} of {}", r.latents_clipped, r.n),
                warning_labels(&r.warnings),
            ])
        })
        .collect();
    p.assert_table("## K and noise", expected);
    // The verdicts quote the K = 2 and K = 10 rows.
    let k = |k: usize| rows.iter().find(|r| r.study == "K" && r.k == k).unwrap_or_else(|| panic!("no K = {k} row"));
    let (k2, k10) = (k(2), k(10));
    p.assert_contains(&format!(
        "({}, chance), {} of the {} generated latents lie outside the training range",
        acc(k2.generated.median),
        k2.latents_clipped,
        k2.n
    ));
    p.assert_contains(&format!(
        "{} of {} generated latents left the training range and the autoencoder kept {:.0}% of the checkpoints' spread",
        k10.latents_clipped,
        k10.n,
        100.0 * k10.reconstruction_ratio.unwrap()
    ));
}

/// The seed-0 and other-seed targets the mnist-mlp-wide page claims: median within 0.5 pt of the
/// originals', worst no worse than the worst original.
fn assert_wide_targets(r: &DemoResults) {
    let (o, g) = (&r.evaluation.originals, &r.evaluation.generated);
    assert!(g.min >= o.min && g.median >= o.median - 0.005, "{WIDE} says every target holds at seed {}", r.seed);
}

#[test]
fn mnist_mlp_wide_page_matches_its_result_files() {
    let p = page(WIDE);
    let wide: DemoResults = json("docs/results/mnist-mlp-wide.json");
    assert_eq!((wide.task.as_str(), wide.preset.as_str(), wide.preset_auto), ("mnist-mlp-wide", "chunked", true));
    assert_demo_page(&p, &wide, &[0.05]);
    p.assert_contains(&format!("({} parameters, all modelled)", thousands(wide.num_params)));
    let t = &wide.timings_s;
    let rss = wide.peak_rss_mib.expect("the wide demo records its peak RSS");
    let mib = |v: Option<f64>| format!("{:.0}", v.unwrap_or(f64::NAN));
    p.assert_contains(&format!(
        "Time: collect {:.0} s, autoencoder {:.0} s, diffusion {:.0} s (generator training {:.0} s), sample {:.1} s, evaluate {:.0} s. Peak RSS: training {} MiB, sampling {} MiB, whole demo {} MiB.",
        t.collect,
        t.train_autoencoder,
        t.train_diffusion,
        t.train_autoencoder + t.train_diffusion,
        t.sample,
        t.evaluate,
        mib(rss.train),
        mib(rss.sample),
        mib(rss.demo)
    ));
    p.assert_contains(&format!(
        "reconstruction MSE {:.1e} against the checkpoints' spread {:.1e} ({})",
        wide.reconstruction_mse,
        wide.checkpoint_variance,
        percent(wide.reconstruction_mse, wide.checkpoint_variance)
    ));
    let c = &wide.latent_clipping;
    p.assert_contains(&format!("{} of {} generated latents leave the training range", c.clipped.rows, c.generated));
    assert_wide_targets(&wide);

    let others = [1u64, 2, 3, 4]
        .iter()
        .map(|&seed| {
            let r: DemoResults = json(&format!("docs/results/mnist-mlp-wide-seed{seed}.json"));
            assert_eq!((r.task.as_str(), r.seed), ("mnist-mlp-wide", seed));
            assert_wide_targets(&r);
            let (o, g, t) = (&r.evaluation.originals, &r.evaluation.generated, &r.timings_s);
            row(&[
                seed.to_string(),
                acc(o.median),
                acc(o.min),
                acc(g.median),
                acc(g.min),
                format!("{:.0}", t.train_autoencoder + t.train_diffusion),
                format!("{:.1}", t.sample),
                format!("{:.0}", r.peak_rss_mib.and_then(|p| p.demo).unwrap_or(f64::NAN)),
            ])
        })
        .collect();
    p.assert_table("## Other collections", others);
}

#[test]
fn scale_page_matches_its_result_file() {
    let p = page(SCALE);
    let scale: ScaleReport = json("docs/results/scale-cpu.json");
    assert!(scale.scale);
    let rows = scale
        .rows
        .iter()
        .map(|r| {
            row(&[
                thousands(r.param_count),
                format!("{}{}", r.preset, if r.preset_auto { " (auto)" } else { "" }),
                thousands(r.generator_params),
                format!("{:.1}%", 100.0 * r.generator_params_per_d),
                format!("{:.1}", r.ae_ms_per_step),
                format!("{:.1}", r.diffusion_ms_per_step),
                format!("{:.0}", r.train_peak_rss_mib.unwrap_or(f64::NAN)),
                format!("{:.1}", r.bundle_bytes as f64 / 1e6),
                format!("{:.0}", r.models_per_second),
                format!("{:.0}", r.sample_peak_rss_mib.unwrap_or(f64::NAN)),
            ])
        })
        .collect();
    p.assert_table("## Time, size and memory by D", rows);
    p.assert_contains(&format!(
        "K = {}, {} autoencoder + {} diffusion training steps per D, {} models sampled with DDIM-50 on {}",
        scale.k, scale.ae_steps, scale.diffusion_steps, scale.n, scale.backend
    ));
    // The reading quotes the growth of the generator: compact at 10^4, chunked from 10^5 to 10^6.
    let [small, mid, large] = &scale.rows[..] else { panic!("{SCALE} reads three sizes") };
    assert_eq!((small.preset.as_str(), mid.preset.as_str(), large.preset.as_str()), ("compact", "chunked", "chunked"));
    p.assert_contains(&format!("compact's dense layers make its generator more than {} times larger than D at 10^4", small.generator_params_per_d.floor()));
    p.assert_contains(&format!("({:.1} times from 10^5 to 10^6)", large.autoencoder_params as f64 / mid.autoencoder_params as f64));
    assert!(large.generator_params_per_d < 0.10, "{SCALE} says the generator stays under 10% of D at 10^6");
}

#[test]
fn formatting_helpers() {
    assert_eq!(thousands(13002), "13,002");
    assert_eq!(thousands(96), "96");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(sampler_name("ddpm", 1000), "DDPM-1000");
    assert_eq!(sampler_name("ddim-50", 1000), "DDIM-50");
    let t = table_after("test", "x\n## H\ntext\n| a | b |\n|---|---|\n| **1** | 2 |\n| 3 | |\n\nafter\n", "## H");
    assert_eq!(t, vec![vec!["1".to_string(), "2".into()], vec!["3".into(), "".into()]]);
    assert_eq!(squash("a\n  b c\n"), "a b c");
}

/// mnist-tasks: how far the generated models' held-out median is above the best yardstick's
/// (medians over tasks), in points; and whether they beat every yardstick on every task.
fn tasks_yardstick_margin(r: &TasksResults) -> (String, bool) {
    let y = r.yardsticks.as_ref().expect("docs/results/mnist-tasks.json has no yardsticks");
    let best = y.heldout_summary.iter().map(|t| t.accuracy).fold(f64::MIN, f64::max);
    let everywhere = y.heldout_summary.iter().all(|t| t.better == r.heldout.len());
    (format!("{:.1}", 100.0 * (r.summary.heldout_generated - best)), everywhere)
}

/// Demo results: the verdicts against the yardsticks, in the order of the file.
fn yardstick_verdicts(r: &DemoResults) -> Vec<String> {
    r.evaluation.yardsticks.as_ref().expect("no yardsticks").baselines.iter().map(|b| b.comparison.verdict.clone()).collect()
}

#[test]
fn mnist_tasks_page_matches_its_result_file() {
    let p = page(TASKS);
    let r: TasksResults = json("docs/results/mnist-tasks.json");
    assert_eq!(r.task, "mnist-tasks");
    let s = &r.summary;
    let e = String::new;
    p.assert_table(
        "## Held-out and seen tasks",
        vec![
            row(&["generated".into(), acc(s.heldout_generated), acc(s.seen_generated)]),
            row(&["scratch (trained on the task: the upper reference)".into(), acc(s.heldout_scratch), e()]),
            row(&["originals".into(), e(), acc(s.seen_originals)]),
            row(&["nearest seen task's checkpoints (memorization)".into(), acc(s.heldout_nearest_seen), e()]),
            row(&["the same generator without condition".into(), acc(s.heldout_unconditional), e()]),
        ],
    );
    p.assert_contains(&format!("({} parameters, all generated)", thousands(r.num_params)));
    let points = |x: f64| format!("{:.1}", 100.0 * x);
    p.assert_contains(&format!(
        "the generator's models are {} points below models trained on those tasks and {} points above the best a memorizing generator could do",
        points(s.heldout_scratch - s.heldout_generated),
        points(s.heldout_generated - s.heldout_nearest_seen)
    ));
    p.assert_contains(&format!("On the seen tasks it is {} points below their own checkpoints.", points(s.seen_originals - s.seen_generated)));
    // The caution names every held-out task whose worst generated model is below 0.75.
    let weak: Vec<_> = r.heldout.iter().filter(|h| h.generated.min < 0.75).collect();
    p.assert_contains(&format!(
        "on {} of the {} held-out tasks the worst of {} generated models is near 0.7 ({}), where the task's median is {}:",
        weak.len(),
        r.heldout.len(),
        r.generated_per_task,
        weak.iter().map(|h| format!("{}: {}", h.code, acc(h.generated.min))).collect::<Vec<_>>().join(", "),
        weak.iter().map(|h| format!("{:.2}", h.generated.median)).collect::<Vec<_>>().join(" and ")
    ));
    let abl = r
        .guidance_ablation
        .iter()
        .map(|g| {
            row(&[format!("{}", g.guidance), g.validation_generated.map(acc).unwrap_or_else(|| "-".into()), acc(g.heldout_generated), acc(g.seen_generated)])
        })
        .collect();
    p.assert_table("## Guidance", abl);
    let abl = r
        .seen_tasks_ablation
        .iter()
        .map(|a| row(&[a.seen_tasks.to_string(), acc(a.heldout_generated), acc(a.heldout_nearest_seen), acc(a.seen_generated), acc(a.seen_originals)]))
        .collect();
    p.assert_table("## Number of seen tasks", abl);
    // The critique's yardsticks, tallied over the held-out and over the seen tasks as report.md
    // does (medians over tasks of each task's median; distance and max IoU: the yardstick's /
    // the generated models').
    let y = r.yardsticks.as_ref().expect("docs/results/mnist-tasks.json has no yardsticks");
    for (heading, tallies) in [("### Yardsticks on the held-out tasks", &y.heldout_summary), ("### Yardsticks on the seen tasks", &y.seen_summary)] {
        let rows = tallies
            .iter()
            .map(|t| {
                row(&[
                    t.name.clone(),
                    acc(t.accuracy),
                    acc(t.generated),
                    format!("{} / {} / {}", t.better, t.equal, t.worse),
                    format!("{:.3} / {:.3}", t.distance_to_nearest_original, t.generated_distance),
                    format!("{:.3} / {:.3}", t.max_iou_to_originals, t.generated_max_iou),
                ])
            })
            .collect();
        p.assert_table(heading, rows);
    }
    let (margin, everywhere) = tasks_yardstick_margin(&r);
    assert!(everywhere, "{TASKS} says the generator beats every yardstick on every held-out task");
    p.assert_contains(&format!("beats every yardstick on every task (by {margin} points in the median"));
    let t = &r.timings_s;
    p.assert_contains(&format!(
        "Time: collect {:.0} s, autoencoder {:.0} s, diffusion {:.0} s, generation and evaluation {:.0} s, ablations {:.0} s; {:.0} s in all",
        t.collect,
        t.train_autoencoder,
        t.train_diffusion,
        t.sample + t.evaluate,
        t.ablation,
        t.total
    ));
}

#[test]
fn mnist_tasks_clean_checks_match_their_result_files() {
    let p = page(TASKS);
    let rows = [1u64, 2, 3]
        .iter()
        .map(|&seed| {
            let r: TasksResults = json(&format!("docs/results/mnist-tasks-seed{seed}.json"));
            assert_eq!((r.task.as_str(), r.seed), ("mnist-tasks", seed));
            let s = &r.summary;
            row(&[
                seed.to_string(),
                acc(s.heldout_generated),
                acc(s.heldout_scratch),
                acc(s.heldout_nearest_seen),
                acc(s.seen_generated),
                acc(s.seen_originals),
            ])
        })
        .collect();
    p.assert_table("## Clean checks on other seeds", rows);
    let seed2: TasksResults = json("docs/results/mnist-tasks-seed2.json");
    p.assert_contains(&format!("(seed 2: {:.0} s in all,", seed2.timings_s.total));
}

/// The README's headline table: one row per result page, linked, with the numbers of its files.
#[test]
fn readme_headline_table_matches_the_result_files() {
    let p = page(README);
    let link = |name: &str, path: &str| {
        assert!(root().join(path).is_file(), "{README} links {path}, which does not exist");
        format!("[{name}]({path})")
    };
    let mlp: DemoResults = json("docs/results/mnist-mlp3.json");
    let cnn: DemoResults = json("docs/results/mnist-cnn-bn.json");
    let tasks: TasksResults = json("docs/results/mnist-tasks.json");
    let wide: DemoResults = json("docs/results/mnist-mlp-wide.json");
    let ablation: Vec<AblationRow> = json("docs/results/ablation-mlp3.json");
    let scale: ScaleReport = json("docs/results/scale-cpu.json");
    let bench: BenchReport = json("docs/results/bench-cpu.json");
    // The yardstick summary under the table: what it says of each demo is what the files give.
    let (margin, everywhere) = tasks_yardstick_margin(&tasks);
    assert!(everywhere);
    p.assert_contains(&format!("on held-out mnist-tasks tasks it beats all of them on every task, by {margin} points"));
    let not_worse = |r: &DemoResults| yardstick_verdicts(r).iter().all(|v| v != "worse");
    assert!(not_worse(&mlp) && not_worse(&wide), "{README}: mnist-mlp3 and mnist-mlp-wide tie or beat every yardstick");
    assert_eq!(yardstick_verdicts(&cnn), ["worse", "equal", "equal", "equal"], "{README}: mnist-cnn-bn ties the yardsticks, loses to the average");
    p.assert_contains("on mnist-cnn-bn it ties them and loses to the average by one image");
    let cnn_avg = &cnn.evaluation.yardsticks.as_ref().unwrap().baselines[0].comparison;
    assert_eq!(cnn_avg.difference_images, -1.0);

    let medians = |r: &DemoResults| {
        let ev = &r.evaluation;
        format!("generated {}, originals {}", acc(ev.generated.median), acc(ev.originals.median))
    };
    let t = &tasks.summary;
    let k_rows: Vec<&AblationRow> = ablation.iter().filter(|r| r.study == "K").collect();
    let largest = scale.rows.iter().max_by_key(|r| r.param_count).unwrap();
    let fastest = bench.rows.iter().find(|r| r.backend.starts_with("onnxruntime") && r.sampler.starts_with("ddim")).expect("an ONNX Runtime DDIM row");
    let timesteps = pdiff_core::diffusion::Schedule::default().timesteps;
    let expected = vec![
        row(&[
            link("mnist-mlp3", MLP3),
            format!("the demo: all {} parameters of an MLP 784-16-16-10", thousands(mlp.num_params)),
            format!("{}, soup {}", medians(&mlp), acc(mlp.evaluation.soup)),
        ]),
        row(&[
            link("mnist-cnn-bn", CNN_BN),
            format!("the paper's protocol: a CNN's last two BatchNorm layers, {} parameters", cnn.num_params),
            format!("{}, soup {}", medians(&cnn), acc(cnn.evaluation.soup)),
        ]),
        row(&[
            link("mnist-tasks", TASKS),
            format!("an MLP 784-16-16-2 ({} parameters) for a task given as a condition", thousands(tasks.num_params)),
            format!(
                "{} held-out tasks: generated {}, trained on the task {}, nearest seen task {}",
                tasks.heldout_tasks.len(),
                acc(t.heldout_generated),
                acc(t.heldout_scratch),
                acc(t.heldout_nearest_seen)
            ),
        ]),
        row(&[
            link("mnist-mlp-wide", WIDE),
            format!("all {} parameters of an MLP 784-1024-128-10", thousands(wide.num_params)),
            format!("{}; worst model: generated {}, original {}", medians(&wide), acc(wide.evaluation.generated.min), acc(wide.evaluation.originals.min)),
        ]),
        row(&[
            link("ablations", ABLATIONS),
            "mnist-mlp3 from fewer checkpoints, with and without noise augmentation".into(),
            format!(
                "generated from K = {} checkpoints: {}",
                k_rows.iter().map(|r| r.k.to_string()).collect::<Vec<_>>().join(", "),
                k_rows.iter().map(|r| acc(r.generated.median)).collect::<Vec<_>>().join(", ")
            ),
        ]),
        row(&[
            link("scale", SCALE),
            format!("synthetic trajectories, D = {} to {}", thousands(scale.rows.iter().map(|r| r.param_count).min().unwrap()), thousands(largest.param_count)),
            format!(
                "at D = {}: {} trained generator parameters ({:.1}% of D), {:.0} models/s",
                thousands(largest.param_count),
                thousands(largest.generator_params),
                100.0 * largest.generator_params_per_d,
                largest.models_per_second
            ),
        ]),
        row(&[
            link("bench", BENCH),
            format!("{} mnist-mlp3 models", fastest.n),
            format!(
                "{} on ONNX Runtime: {:.0} models/s, {:.0}x faster than DDPM-{timesteps} on tch",
                sampler_name(&fastest.sampler, timesteps),
                fastest.models_per_second,
                bench.speedup_ddim_ort_vs_ddpm_tch
            ),
        ]),
    ];
    p.assert_table("## Results", expected);
}

const ADAPTERS: &str = "docs/results/adapters.md";

#[test]
fn adapters_page_matches_its_result_files() {
    use pdiff_tools::adapters::AdapterReport;
    let p = page(ADAPTERS);
    let r: AdapterReport = json("docs/results/adapters-cpu.json");
    let py: serde_json::Value = json("docs/results/adapters-python-host.json");
    assert_eq!(r.host_accuracies.len(), r.models);
    assert_eq!(r.tools_accuracies.len(), r.models);
    let equal = r.host_accuracies.iter().zip(&r.tools_accuracies).filter(|(a, b)| a == b).count();
    assert_eq!(equal, r.equal_accuracies, "the report's count of equal accuracies");
    p.assert_contains(&format!("Machine: {}.", r.machine));
    p.assert_contains(&format!(
        "{} of {} accuracies equal the tools' evaluation (libtorch) of the same models; logits within {:.2e} absolute, {:.2e} relative",
        r.equal_accuracies, r.models, r.max_abs_logit_diff, r.max_rel_logit_diff
    ));
    assert_eq!(py["models"].as_u64(), Some(r.models as u64));
    p.assert_contains(&format!(
        "The Python host ({}, `onnxruntime.LoraAdapter` and `RunOptions.add_active_adapter`, one session): {} of {} equal the tools' evaluation",
        py["host"].as_str().unwrap(),
        py["equal_to_tools"],
        py["models"]
    ));
    let t = &r.timings;
    let rows = [("plain model", &t.plain_run), ("exposed, no adapter", &t.exposed_run), ("exposed, with an adapter", &t.adapter_run)]
        .iter()
        .map(|(name, l)| row(&[name.to_string(), format!("{:.3}", l.p50_ms), format!("{:.3}", l.p99_ms)]))
        .collect();
    p.assert_table("## A Run with an adapter", rows);
    p.assert_contains(&format!("{} runs of each", t.runs));
    p.assert_contains(&format!("adapter Run p50 / plain Run p50: {:.2} (target: at most 1.5)", t.adapter_over_plain_p50));
    p.assert_contains(&format!(
        "{:.0} models/s in one session (each model's adapter loaded from memory, one image), {:.1} models/s with a session per model",
        t.one_session_models_per_s, t.session_per_model_models_per_s
    ));
    match &r.conditional {
        Some(c) => p.assert_contains(&format!(
            "task {} ({} requests, {}, guidance {}): p50 {:.2} ms, p99 {:.2} ms (targets: 15 ms and 30 ms); the first request's model classifies the task's test split at {} through the host, {} through the tools",
            c.task,
            c.requests,
            c.sampler,
            c.guidance,
            c.p50_ms,
            c.p99_ms,
            acc(c.host_accuracy),
            acc(c.tools_accuracy)
        )),
        None => p.assert_contains("not measured"),
    }
}

/// The LoRA task-family prototype's table in docs/decisions.md: each row's medians are those of
/// its result file (docs/results/research/vit-lora-run<N>.json, scripts/research).
#[test]
fn lora_prototype_table_matches_its_result_files() {
    let path = "docs/decisions.md";
    let text = read(path);
    let rows = table_after(path, &text, "## 2026-12-08: a LoRA task family for conditional PEFT adapters (prototype, targets not met yet)");
    assert_eq!(rows.len(), 3, "{path}: one row per prototype run");
    for (i, cells) in rows.iter().enumerate() {
        let r: serde_json::Value = json(&format!("docs/results/research/vit-lora-run{}.json", i + 1));
        let m = &r["median_over_tasks"];
        let want: Vec<String> = ["trained", "nearest", "average", "generated"].iter().map(|k| format!("{:.3}", m[*k].as_f64().unwrap())).collect();
        assert_eq!(cells[1..].to_vec(), want, "{path}, prototype row {}: the page (left) vs the result file (right)", i + 1);
    }
}
