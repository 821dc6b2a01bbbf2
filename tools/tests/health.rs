//! Health checks as users read them: `pdiff train` prints the generator's warnings and records
//! them in the bundle; the demo's report.md lists the warnings (latents clipped included), the
//! reconstruction error against the checkpoints' spread, verdicts in test images and the
//! task-free novelty table.
use pdiff_test_support::{fc_layout, write_checkpoints};
use pdiff_tools::results::DemoResults;
use std::path::Path;
use std::process::Command;

#[test]
fn train_prints_and_records_the_warnings() {
    let d = tempfile::tempdir().unwrap();
    let ckpts = d.path().join("ckpts");
    write_checkpoints(&ckpts, &fc_layout(), 4);
    let out = d.path().join("bundle");
    // 2 autoencoder steps: the reconstruction error is still about the whole spread.
    let o = Command::new(env!("CARGO_BIN_EXE_pdiff"))
        .args(["train", "--checkpoints", ckpts.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--ae-steps", "2", "--diffusion-steps", "2", "--device", "cpu"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let printed: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("warning: ")).collect();
    assert_eq!(printed.len(), 2, "each warning once: {stderr}");
    assert!(printed[0].starts_with("K = 4 checkpoints is few: at least 50 are recommended"), "{}", printed[0]);
    assert!(printed[1].starts_with("the autoencoder reconstructs the checkpoints with MSE"), "{}", printed[1]);
    assert!(stdout.contains("of the checkpoints' spread"), "{stdout}");
    // The bundle records the same warnings and the spread they were judged against.
    let m = pdiff_core::bundle::load_manifest(&out).unwrap();
    assert_eq!(m.warnings, printed);
    let ratio = m.history.reconstruction_ratio().expect("a recorded spread");
    assert!(ratio >= pdiff_core::training::RECONSTRUCTION_WARN_RATIO, "{ratio}");
}

fn committed_results(task: &str) -> DemoResults {
    let path = pdiff_test_support::repo_root().join("docs/results").join(format!("{task}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn report_of(r: &DemoResults, dir: &Path) -> String {
    pdiff_tools::report::write(dir, r, None).unwrap();
    std::fs::read_to_string(dir.join("report.md")).unwrap()
}

#[test]
fn report_shows_health_verdicts_and_novelty() {
    let d = tempfile::tempdir().unwrap();
    let r = committed_results("mnist-mlp3");
    let md = report_of(&r, d.path());
    assert!(md.contains("## Health\n\nNo warning: "), "{md}");
    let ratio = 100.0 * r.reconstruction_mse / r.checkpoint_variance;
    assert!(
        md.contains(&format!(
            "Reconstruction MSE {:.2e} against a spread of the checkpoints across K of {:.2e} (normalized units): {ratio:.1}%.",
            r.reconstruction_mse, r.checkpoint_variance
        )),
        "{md}"
    );
    assert!(md.contains("0 of 100 generated latents were clipped to the training range (0 of 6400 values)"), "{md}");
    // Verdicts in test images: one row per comparison, with its counts.
    for c in &r.evaluation.comparisons {
        let row = format!(
            "| {} | {:.4} | {} | {} | {:+} | **{}** |",
            c.baseline, c.baseline_accuracy, c.baseline_correct, c.generated_median_correct, c.difference_images, c.verdict
        );
        assert!(md.contains(&row), "no row {row:?} in\n{md}");
    }
    // The novelty table and its reading.
    let nv = &r.novelty;
    let g = &nv.generated_to_nearest_original;
    assert!(md.contains(&format!("| generated to the nearest original | {:.4} | {:.4} | {:.4} |", g.median, g.min, g.max)), "{md}");
    assert!(md.contains(&format!("Reading: {}.", nv.sentence())), "{md}");
    // results.json holds no per-model points: rendered again from it, the report has no plots
    // (and says why) instead of plotting empty ranges.
    assert!(md.contains("(Plots skipped: no per-model evaluation in memory"), "{md}");
    assert!(!d.path().join("accuracy.png").exists());

    // A run with warnings and clipped latents lists each as a warning.
    let mut bad = r.clone();
    bad.warnings = vec!["K = 10 checkpoints is few: ...".into()];
    bad.latent_clipping.clipped = pdiff_core::diffusion::ClipCount { rows: 3, values: 4 };
    bad.evaluation.points = vec![("originals".into(), 0.880, 0.98), ("generated".into(), 0.882, 0.95), ("generated".into(), 0.881, 0.96)];
    let d2 = tempfile::tempdir().unwrap();
    let md = report_of(&bad, d2.path());
    assert!(md.contains("- warning: K = 10 checkpoints is few: ...\n"), "{md}");
    assert!(md.contains("- warning: 3 of 100 generated latents were clipped to the training range (4 of 6400 values): the models decoded"), "{md}");
    assert!(!md.contains("No warning"), "{md}");
    // With points, the plots are drawn (when a font is installed).
    if md.contains("![accuracy](accuracy.png)") {
        assert!(d2.path().join("accuracy.png").is_file() && d2.path().join("similarity.png").is_file());
    } else {
        assert!(md.contains("(Plots skipped: no TrueType font found"), "{md}");
    }
}

/// `pdiff sample` warns when generated latents fall outside the training range (the decoder
/// clips them), on both backends; within it, it says nothing. The committed fixture bundle, with
/// its manifest's `latent.clip` narrowed so that every latent falls outside, or widened.
#[test]
fn sample_warns_of_latents_outside_the_training_range() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = pdiff_test_support::fixture();
    // The fixture (a tiny, briefly trained generator) itself strays outside its range, so the
    // quiet case is a copy with a wide range.
    let with_clip = |name: &str, bound: f32| {
        let b = dir.path().join(name);
        std::fs::create_dir(&b).unwrap();
        for e in std::fs::read_dir(&fixture).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
        }
        let path = b.join("pdiff.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let d = m["latent_dim"].as_u64().unwrap() as usize;
        m["latent"]["clip"] = serde_json::json!(vec![bound; d]);
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        (b, d)
    };
    let (narrow, d) = with_clip("narrow", 1e-6);
    let (wide, _) = with_clip("wide", 1e6);
    let sample = |bundle: &Path, backend: &str, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_pdiff"))
            .args(["sample", "--bundle", bundle.to_str().unwrap(), "-n", "3", "--steps", "5", "--provider", "cpu", "--backend", backend])
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for backend in ["onnxruntime", "tch"] {
        let err = sample(&narrow, backend, &format!("out-narrow-{backend}"));
        // (A few standardized values may sit within 1e-6 of 0: not every value is outside.)
        assert!(
            err.contains("warning: 3 of 3 generated latents were clipped to the training range (") && err.contains(&format!(" of {} values)", 3 * d)),
            "{backend}: {err}"
        );
        let err = sample(&wide, backend, &format!("out-{backend}"));
        assert!(!err.contains("clipped"), "{backend}: {err}");
    }
}
