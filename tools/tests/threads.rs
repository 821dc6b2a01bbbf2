//! Training's threads on a shared machine (docs/api.md, "Threads"): the commands that train run
//! with libgomp's passive wait policy unless the user chose one (libgomp itself says what it
//! read, through OMP_DISPLAY_ENV), `--train-threads` is bounded, and `pdiff bench train`
//! measures both stages against the matmul peak, idle and next to a busy process, with the
//! FLOPs of a step counted from the networks' shapes.
use pdiff_core::model::{DenoiserConfig, Preset};
use pdiff_tools::train_bench::{autoencoder_forward_macs, denoiser_forward_macs, TrainBenchReport};
use std::process::{Command, Output};

fn pdiff_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pdiff"));
    c.args(args).env_remove("OMP_WAIT_POLICY").env_remove("GOMP_SPINCOUNT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run pdiff")
}

/// The GOMP_SPINCOUNT values libgomp printed (one per process image that loaded it).
fn spin_counts(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GOMP_SPINCOUNT = '").and_then(|v| v.strip_suffix('\'')).map(str::to_string))
        .collect()
}

#[test]
fn training_commands_run_with_a_passive_openmp_wait_policy() {
    let verbose = [("OMP_DISPLAY_ENV", "verbose")];
    // A command that trains starts again with OMP_WAIT_POLICY=passive: libgomp's first image
    // read the default (300000 spins), the one that runs read passive (0).
    for command in ["train", "collect", "demo", "ablation", "bench"] {
        let o = pdiff_env(&[command, "--help"], &verbose);
        assert!(o.status.success(), "{command}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(spin_counts(&o), ["300000", "0"], "{command}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Commands that do not train start once, with libgomp's default.
    let o = pdiff_env(&["--version"], &verbose);
    assert_eq!(spin_counts(&o), ["300000"]);
    let o = pdiff_env(&["sample", "--help"], &verbose);
    assert_eq!(spin_counts(&o), ["300000"]);
    // The user's choice is kept, either variable.
    let o = pdiff_env(&["train", "--help"], &[("OMP_DISPLAY_ENV", "verbose"), ("OMP_WAIT_POLICY", "active")]);
    assert_eq!(spin_counts(&o), ["30000000000"]);
    let o = pdiff_env(&["train", "--help"], &[("OMP_DISPLAY_ENV", "verbose"), ("GOMP_SPINCOUNT", "1000")]);
    assert_eq!(spin_counts(&o), ["1000"]);
}

#[test]
fn train_threads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    for (value, words) in [("1025", "1025 is not in 0 ..= 1024"), ("-1", "unexpected argument '-1'"), ("x", "'x' is not a whole number")] {
        let o = pdiff_env(&["train", "--checkpoints", dir.path().to_str().unwrap(), "--out", out.to_str().unwrap(), "--train-threads", value], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{value}: {err}");
        assert!(err.contains(words), "{value}: {err}");
        assert!(!out.exists());
    }
    for (value, words) in [("0", "0 is not in 1 ..= 1024"), ("1025", "1025 is not in 1 ..= 1024")] {
        let o = pdiff_env(&["train", "--checkpoints", dir.path().to_str().unwrap(), "--out", out.to_str().unwrap(), "--timesteps-per-row", value], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{value}: {err}");
        assert!(err.contains(words), "{value}: {err}");
        assert!(!out.exists());
    }
}

/// The multiply-adds of one forward pass, counted by hand for the presets' networks.
#[test]
fn flops_follow_the_networks_shapes() {
    let (ae, den) = Preset::Compact.architecture(1000);
    // Padded to 1,024: patch convs 1 -> 16 (128 positions x 16 x 8) and 16 -> 64 (16 x 64 x 128),
    // the linear 1,024 -> 64 and back, the two transposed convs mirroring them.
    let l = 1024.0;
    assert_eq!(autoencoder_forward_macs(&ae, 1024), 128.0 * 16.0 * 8.0 + 16.0 * 64.0 * 128.0 + 2.0 * l * 64.0 + 16.0 * 64.0 * 16.0 * 8.0 + 128.0 * 16.0 * 8.0);
    // Time embedding 128 -> 128 -> 512, input 64 -> 512, 2 blocks of two 512 x 512, output.
    assert!(matches!(den, DenoiserConfig::Mlp { hidden: 512, blocks: 2, time_dim: 128 }));
    assert_eq!(denoiser_forward_macs(&den, 64, 0), 128.0 * 128.0 + 128.0 * 512.0 + 64.0 * 512.0 + 4.0 * 512.0 * 512.0 + 512.0 * 64.0);
    assert_eq!(denoiser_forward_macs(&den, 64, 10) - denoiser_forward_macs(&den, 64, 0), 10.0 * 512.0);
    // Chunked, per token: chunk -> hidden -> hidden -> token_dim and back.
    let (ae, _) = Preset::Chunked.architecture(1_000_000);
    let spec = ae.chunked.clone().unwrap();
    let (c, h, e) = (spec.chunk as f64, spec.hidden as f64, spec.token_dim as f64);
    assert_eq!((c, h, e), (1024.0, 16.0, 4.0));
    assert_eq!(autoencoder_forward_macs(&ae, 1_000_000), 2.0 * (c * h + h * h + h * e));
}

#[test]
fn bench_train_measures_each_stage_idle_and_busy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train-bench.json");
    let args = [
        "bench",
        "train",
        "--cases",
        "compact:1000,chunked:5000",
        "--k",
        "8",
        "--warmup-steps",
        "1",
        "--timed-steps",
        "3",
        "--matmul-n",
        "256",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = pdiff_env(&args, &[]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let r: TrainBenchReport = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(r.train_bench && r.cores >= 1 && r.threads == r.cores);
    assert_eq!(r.omp_wait_policy.as_deref(), Some("passive"));
    assert_eq!((r.k, r.warmup_steps, r.timed_steps, r.matmul.n), (8, 1, 3, 256));
    assert!(r.matmul.idle_gflops_per_second > 0.0 && r.matmul.busy_gflops_per_second > 0.0);
    let cases: Vec<(&str, &str, &str)> = r.rows.iter().map(|row| (row.preset.as_str(), row.stage.as_str(), row.condition.as_str())).collect();
    assert_eq!(
        cases,
        [
            ("compact", "autoencoder", "idle"),
            ("compact", "diffusion", "idle"),
            ("compact", "autoencoder", "busy"),
            ("compact", "diffusion", "busy"),
            ("chunked", "autoencoder", "idle"),
            ("chunked", "diffusion", "idle"),
            ("chunked", "autoencoder", "busy"),
            ("chunked", "diffusion", "busy"),
        ]
    );
    for row in &r.rows {
        assert!(row.ms_per_step > 0.0 && row.flops_per_step > 0.0, "{row:?}");
        let gflops = row.flops_per_step / (row.ms_per_step * 1e-3) / 1e9;
        assert!((row.gflops_per_second - gflops).abs() <= 1e-9 * gflops, "{row:?}");
        assert!((row.fraction_of_peak - gflops / r.matmul.idle_gflops_per_second).abs() <= 1e-9, "{row:?}");
    }
    // Rows of a step: the batch (min(50, K) checkpoints) for compact, the batch's tokens
    // (8 checkpoints x the 72 tokens of a 5,112-parameter layout, fewer than 128) for chunked.
    assert_eq!(r.rows[0].rows_per_step, 8);
    assert_eq!(r.rows[4].rows_per_step, 8 * 72);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("OMP_WAIT_POLICY=passive") && stdout.contains("matmul peak (256 x 256, best of 5)"), "{stdout}");
    // A second run replaces its own report; anything else at --out is refused.
    let other = dir.path().join("other.json");
    std::fs::write(&other, b"{}").unwrap();
    let mut refused = args.to_vec();
    let last = refused.len() - 1;
    refused[last] = other.to_str().unwrap();
    let o = pdiff_env(&refused, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&other).unwrap(), b"{}");
}

#[test]
fn bad_bench_train_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    for (args, words) in [
        (vec!["--cases", "paper:1000"], "the bench measures compact or chunked"),
        (vec!["--cases", "compact"], "is not PRESET:D"),
        (vec!["--cases", "compact:8"], "D = 8 is not in 16"),
        (vec!["--timed-steps", "2"], "at least 3 after 1"),
        (vec!["--matmul-n", "10"], "--matmul-n"),
    ] {
        let mut all = vec!["bench", "train", "--out", out.to_str().unwrap()];
        all.extend(&args);
        let o = pdiff_env(&all, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(words) && !err.contains("panicked"), "{args:?}: {err}");
        assert!(!out.exists());
    }
}
