//! The README's result tables come from committed result files (docs/results/*.json, written by
//! `pdiff demo`, `pdiff bench` and `pdiff ablation`): every table row, and the sentences that
//! quote timings, must be exactly what those files give with the formatting rules below (4
//! decimals for accuracies, ...). Regenerate the files with the commands of docs/results/README.md,
//! then update the README until this test passes.
use pdiff_tools::ablation::AblationRow;
use pdiff_tools::bench::BenchReport;
use pdiff_tools::results::DemoResults;
use pdiff_tools::scale::ScaleReport;
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

fn readme() -> String {
    read("README.md")
}

/// The rows (cells, trimmed, bold markers removed) of the first table after the line `heading`,
/// without its header and separator rows.
fn table_after(text: &str, heading: &str) -> Vec<Vec<String>> {
    let start = text.lines().position(|l| l.trim_end() == heading).unwrap_or_else(|| panic!("README has no line {heading:?}"));
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().replace("**", "")).collect())
        .collect();
    assert!(rows.len() > 2, "no table after {heading:?}");
    rows[2..].to_vec()
}

fn assert_table(text: &str, heading: &str, expected: Vec<Vec<String>>) {
    let got = table_after(text, heading);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "table after {heading:?}, row {}: README (left) vs result files (right)", i + 1);
    }
    assert_eq!(got.len(), expected.len(), "table after {heading:?}: {} rows in the README, {} expected:\n{expected:#?}", got.len(), expected.len());
}

fn assert_contains(text: &str, sentence: &str) {
    assert!(text.contains(sentence), "README should say exactly: {sentence:?}");
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
                panic!("a warning the README does not name: {w}")
            }
        })
        .collect();
    if labels.is_empty() { "none".into() } else { labels.join(", ") }
}

fn percent(mse: f64, spread: f64) -> String {
    format!("{:.1}%", 100.0 * mse / spread)
}

#[test]
fn demo_tables_match_the_result_files() {
    let text = readme();
    let mlp: DemoResults = json("docs/results/mnist-mlp3.json");
    let cnn: DemoResults = json("docs/results/mnist-cnn-bn.json");
    assert_eq!((mlp.task.as_str(), cnn.task.as_str()), ("mnist-mlp3", "mnist-cnn-bn"));
    assert_table(&text, "## The demo (mnist-mlp3)", demo_table(&mlp, &[0.05]));
    assert_table(&text, "### mnist-cnn-bn (the paper's main protocol)", demo_table(&cnn, &[]));

    // Verdicts and health, both tasks side by side.
    assert_eq!(mlp.evaluation.comparisons.len(), cnn.evaluation.comparisons.len());
    let verdicts = mlp
        .evaluation
        .comparisons
        .iter()
        .zip(&cnn.evaluation.comparisons)
        .map(|(a, b)| {
            assert_eq!(a.baseline, b.baseline);
            row(&[a.baseline.clone(), verdict_cell(a), verdict_cell(b)])
        })
        .collect();
    assert_table(&text, "### Verdicts, health and novelty", verdicts);
    let both = |f: &dyn Fn(&DemoResults) -> String| [f(&mlp), f(&cnn)];
    let line = |name: &str, f: &dyn Fn(&DemoResults) -> String| {
        let [a, b] = both(f);
        row(&[name.to_string(), a, b])
    };
    let health = vec![
        line("warnings", &|r| warning_labels(&r.warnings)),
        line("reconstruction MSE / checkpoints' spread", &|r| {
            format!("{:.1e} / {:.1e} = {}", r.reconstruction_mse, r.checkpoint_variance, percent(r.reconstruction_mse, r.checkpoint_variance))
        }),
        line("generated latents clipped", &|r| format!("{} of {}", r.latent_clipping.clipped.rows, r.latent_clipping.generated)),
        line("distance to the nearest original: generated (median)", &|r| format!("{:.3}", r.novelty.generated_to_nearest_original.median)),
        line("distance to the nearest other original: originals (median)", &|r| {
            format!("{:.3}", r.novelty.original_to_nearest_other_original.median)
        }),
        line("distance between two originals (median)", &|r| format!("{:.3}", r.novelty.original_to_original.median)),
        line("ratio of medians", &|r| r.novelty.ratio_of_medians.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())),
    ];
    assert_table(&text, "Health and novelty (`report.md` explains each):", health);

    // Timings quoted in the prose.
    let t = &mlp.timings_s;
    assert_contains(
        &text,
        &format!(
            "Time: collect {:.1} s, autoencoder {:.1} s, diffusion {:.1} s, sample {:.2} s, evaluate {:.1} s",
            t.collect, t.train_autoencoder, t.train_diffusion, t.sample, t.evaluate
        ),
    );
    let t = &cnn.timings_s;
    assert_contains(
        &text,
        &format!("Time: collect {:.0} s, training {:.0} s, evaluation {:.0} s.", t.collect, t.train_autoencoder + t.train_diffusion, t.evaluate),
    );
}

/// "DDPM-1000" / "DDIM-50" from the JSON's "ddpm" / "ddim-50".
fn sampler_name(label: &str, timesteps: usize) -> String {
    match label {
        "ddpm" => format!("DDPM-{timesteps}"),
        other => other.replace("ddim", "DDIM"),
    }
}

#[test]
fn benchmark_table_matches_the_result_file() {
    let text = readme();
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
    assert_table(&text, "## Benchmark (`pdiff bench`)", rows);
    assert_contains(&text, &format!("seconds are the median of {} timed runs after {} warm-up run", b.runs, b.warmup_runs));
    let latency = |name: &str| b.single_sample_latency_s.iter().find(|(n, _)| n.starts_with(name)).map(|(_, s)| s * 1e3).unwrap();
    assert_contains(
        &text,
        &format!(
            "Single-model latency (DDIM-50, median of {}): tch {:.1} ms, ONNX Runtime {:.1} ms. DDIM-50 on ONNX Runtime is {:.0}x faster than DDPM-{timesteps} on tch.",
            b.latency_runs,
            latency("tch"),
            latency("onnxruntime"),
            b.speedup_ddim_ort_vs_ddpm_tch
        ),
    );
    let t = b.training.expect("bench-cpu.json measures training (--checkpoints)");
    assert_contains(
        &text,
        &format!(
            "Training (K = {}, D = {}, {}): autoencoder {:.1} ms/step, diffusion {:.1} ms/step, peak RSS {:.0} MiB",
            t.k,
            thousands(t.param_count),
            t.preset,
            t.ae_ms_per_step,
            t.diffusion_ms_per_step,
            t.peak_rss_mib.unwrap_or(f64::NAN)
        ),
    );
}

/// 13002 -> "13,002".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn ablation_table_matches_the_result_file() {
    let text = readme();
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
    assert_table(&text, "### Ablations (`pdiff ablation`)", expected);
}

#[test]
fn scale_tables_match_the_result_files() {
    let text = readme();
    let wide: DemoResults = json("docs/results/mnist-mlp-wide.json");
    assert_eq!((wide.task.as_str(), wide.preset.as_str(), wide.preset_auto), ("mnist-mlp-wide", "chunked", true));
    assert_table(&text, "### mnist-mlp-wide (issue 13: a million parameters)", demo_table(&wide, &[0.05]));
    let t = &wide.timings_s;
    let rss = wide.peak_rss_mib.expect("the wide demo records its peak RSS");
    let mib = |v: Option<f64>| format!("{:.0}", v.unwrap_or(f64::NAN));
    assert_contains(
        &text,
        &format!(
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
        ),
    );
    assert_contains(
        &text,
        &format!(
            "reconstruction MSE {:.1e} against the checkpoints' spread {:.1e} ({})",
            wide.reconstruction_mse,
            wide.checkpoint_variance,
            percent(wide.reconstruction_mse, wide.checkpoint_variance)
        ),
    );

    let c = &wide.latent_clipping;
    assert_contains(&text, &format!("{} of {} generated latents leave the training range", c.clipped.rows, c.generated));
    // The README says every accuracy target holds at every seed: median within 0.5 pt of the
    // originals', worst no worse than the worst original.
    let assert_targets = |r: &DemoResults| {
        let (o, g) = (&r.evaluation.originals, &r.evaluation.generated);
        assert!(g.min >= o.min && g.median >= o.median - 0.005, "the README says every target holds at seed {}", r.seed);
    };
    assert_targets(&wide);

    let others = [1u64, 2, 3, 4]
        .iter()
        .map(|&seed| {
            let r: DemoResults = json(&format!("docs/results/mnist-mlp-wide-seed{seed}.json"));
            assert_eq!((r.task.as_str(), r.seed), ("mnist-mlp-wide", seed));
            assert_targets(&r);
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
    assert_table(&text, "Other collections (`pdiff demo --task mnist-mlp-wide --seed S`, `docs/results/mnist-mlp-wide-seed{1,2,3,4}.json`):", others);

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
    assert_table(&text, "### Scale (`pdiff bench --scale`)", rows);
    assert_contains(
        &text,
        &format!(
            "K = {}, {} autoencoder + {} diffusion training steps per D, {} models sampled with DDIM-50 on {}",
            scale.k, scale.ae_steps, scale.diffusion_steps, scale.n, scale.backend
        ),
    );
}

#[test]
fn formatting_helpers() {
    assert_eq!(thousands(13002), "13,002");
    assert_eq!(thousands(96), "96");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(sampler_name("ddpm", 1000), "DDPM-1000");
    assert_eq!(sampler_name("ddim-50", 1000), "DDIM-50");
    let t = table_after("x\n## H\ntext\n| a | b |\n|---|---|\n| **1** | 2 |\n| 3 | |\n\nafter\n", "## H");
    assert_eq!(t, vec![vec!["1".to_string(), "2".into()], vec!["3".into(), "".into()]]);
}

#[test]
fn mnist_tasks_tables_match_the_result_file() {
    use pdiff_tools::tasks_demo::TasksResults;
    let text = readme();
    let r: TasksResults = json("docs/results/mnist-tasks.json");
    assert_eq!(r.task, "mnist-tasks");
    let s = &r.summary;
    let e = String::new;
    assert_table(
        &text,
        "### mnist-tasks (conditional generation on held-out tasks)",
        vec![
            row(&["generated".into(), acc(s.heldout_generated), acc(s.seen_generated)]),
            row(&["scratch (trained on the task: the upper reference)".into(), acc(s.heldout_scratch), e()]),
            row(&["originals".into(), e(), acc(s.seen_originals)]),
            row(&["nearest seen task's checkpoints (memorization)".into(), acc(s.heldout_nearest_seen), e()]),
            row(&["the same generator without condition".into(), acc(s.heldout_unconditional), e()]),
        ],
    );
    let abl = r
        .guidance_ablation
        .iter()
        .map(|g| {
            row(&[
                format!("{}", g.guidance),
                g.validation_generated.map(acc).unwrap_or_else(|| "-".into()),
                acc(g.heldout_generated),
                acc(g.seen_generated),
            ])
        })
        .collect();
    assert_table(&text, "Guidance (chosen on the validation tasks):", abl);
    let abl = r
        .seen_tasks_ablation
        .iter()
        .map(|a| row(&[a.seen_tasks.to_string(), acc(a.heldout_generated), acc(a.heldout_nearest_seen), acc(a.seen_generated), acc(a.seen_originals)]))
        .collect();
    assert_table(&text, "Number of seen tasks:", abl);
    let t = &r.timings_s;
    assert_contains(
        &text,
        &format!(
            "Time: collect {:.0} s, autoencoder {:.0} s, diffusion {:.0} s, generation and evaluation {:.0} s, ablations {:.0} s; {:.0} s in all",
            t.collect,
            t.train_autoencoder,
            t.train_diffusion,
            t.sample + t.evaluate,
            t.ablation,
            t.total
        ),
    );
}

#[test]
fn mnist_tasks_clean_checks_match_their_result_files() {
    use pdiff_tools::tasks_demo::TasksResults;
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
    assert_table(&readme(), "Clean checks on other seeds:", rows);
    let seed2: TasksResults = json("docs/results/mnist-tasks-seed2.json");
    assert_contains(&readme(), &format!("(seed 2: {:.0} s in all,", seed2.timings_s.total));
}
