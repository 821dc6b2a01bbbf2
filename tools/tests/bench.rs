//! `pdiff bench sweep`: the throughput sweep of the ONNX Runtime sampler, on the CPU
//! provider and the committed fixture bundle (scripts/gpu-check.sh runs the same sweep on the
//! CUDA provider). Timings are only checked for consistency, never against a speed. Then the
//! measurement protocol of `pdiff bench`'s rows: one warm-up run, then the median of at least 3
//! timed runs.
use pdiff_tools::bench::{measure, median, BatchSweep, MIN_RUNS, SWEEP_MAX_CALLS, SWEEP_MIN_CALLS};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdiff")).args(args).output().expect("run pdiff")
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bundle")
}

#[test]
fn sweep_measures_each_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.json");
    let o = pdiff(&["bench", "sweep", "--bundle", fixture().to_str().unwrap(), "--batch-sizes", "1,3,7", "--provider", "cpu", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let r: BatchSweep = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture().join("pdiff.json")).unwrap()).unwrap();
    assert_eq!(r.param_count as u64, manifest["param_count"].as_u64().unwrap());
    assert_eq!(r.preset, manifest["preset"].as_str().unwrap());
    assert_eq!((r.provider.as_str(), r.backend.as_str(), r.sampler.as_str()), ("cpu", "onnxruntime-cpu", "ddim-50"));
    assert_eq!(r.rows.iter().map(|row| row.batch).collect::<Vec<_>>(), [1, 3, 7]);
    for row in &r.rows {
        assert!(row.first_call_s > 0.0 && row.min_s > 0.0 && row.min_s <= row.median_s, "{row:?}");
        // The fixture's calls take milliseconds: the first is never counted, at least 3 follow.
        assert!(!row.first_call_counted && (SWEEP_MIN_CALLS..=SWEEP_MAX_CALLS).contains(&row.calls), "{row:?}");
        let expected = row.batch as f64 / row.median_s;
        assert!((row.models_per_second - expected).abs() <= 1e-9 * expected, "{row:?}");
    }
    // The printed table names the backend and every batch size.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("onnxruntime-cpu (cpu requested), ddim-50"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.split_whitespace().next().is_some_and(|b| ["1", "3", "7"].contains(&b))).count(), 3, "{stdout}");
}

#[test]
fn bad_sweeps_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.json");
    let bundle = fixture();
    let b = bundle.to_str().unwrap();
    let o = out.to_str().unwrap();
    for (args, words) in [
        (vec!["--batch-sizes", "0"], "invalid value '0' for '--batch-sizes"),
        (vec!["--batch-sizes", "1,x"], "invalid value 'x' for '--batch-sizes"),
        (vec!["--batch-sizes", "1,,2"], "invalid value '' for '--batch-sizes"),
        (vec!["--batch-sizes", "-3"], "--batch-sizes"),
        (vec!["--batch-sizes", "5,5"], "invalid batch-sizes: 5 appears twice"),
        (vec!["--batch-sizes", "1", "--callers", "0"], "invalid value '0' for '--callers"),
        (vec!["--batch-sizes", "1", "--backend", "tch"], "--backend tch is not swept"),
        (vec!["--batch-sizes", "1", "--task", "mnist-mlp3"], "unexpected argument '--task'"),
        (vec!["--batch-sizes", "1", "--checkpoints", b], "unexpected argument '--checkpoints'"),
        (vec![], "--batch-sizes <N,N,...>"),
    ] {
        let mut all = vec!["bench", "sweep", "--bundle", b, "--out", o];
        all.extend(&args);
        let r = pdiff(&all);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(words) && !err.contains("panicked"), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// `--callers 1,2`: each batch size also with two threads sampling from the one sampler at once;
/// their models count together. `--whole-loop` is reported.
#[test]
fn sweep_with_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.json");
    let o = pdiff(&[
        "bench",
        "sweep",
        "--bundle",
        fixture().to_str().unwrap(),
        "--batch-sizes",
        "2,5",
        "--callers",
        "1,2",
        "--provider",
        "cpu",
        "--whole-loop",
        "on",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let r: BatchSweep = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(r.whole_loop);
    assert_eq!(r.rows.iter().map(|row| (row.batch, row.callers)).collect::<Vec<_>>(), [(2, 1), (2, 2), (5, 1), (5, 2)]);
    for row in &r.rows {
        let expected = (row.callers * row.batch) as f64 / row.median_s;
        assert!((row.models_per_second - expected).abs() <= 1e-9 * expected, "{row:?}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("ddim-50 whole loop"));
}

#[test]
fn warm_up_then_median_of_timed_runs() {
    let mut calls = Vec::new();
    let m = measure(3, |i| {
        calls.push(i);
        // The warm-up (0) is slow, like a first call; the timed runs sleep 10 ms.
        std::thread::sleep(std::time::Duration::from_millis(if i == 0 { 800 } else { 10 }));
        Ok(i * 10)
    })
    .unwrap();
    assert_eq!(calls, [0, 1, 2, 3], "one warm-up run, then three timed runs");
    assert_eq!(m.output, 30, "the output of the last timed run");
    assert_eq!(m.seconds.len(), 3);
    // Generous bounds (a busy machine): the point is that the 0.8 s warm-up is in none of them.
    assert!(m.seconds.iter().all(|&s| (0.01..0.5).contains(&s)), "the warm-up is not timed: {:?}", m.seconds);
    assert_eq!(m.median_seconds, median(&m.seconds));
    assert!(m.peak_rss_mib.unwrap_or(1.0) > 0.0);
}

#[test]
fn fewer_than_three_runs_are_refused() {
    let mut calls = 0;
    let r = measure(MIN_RUNS - 1, |_| {
        calls += 1;
        Ok(())
    });
    match r {
        Err(pdiff_core::Error::InvalidArgument { field, message }) => {
            assert_eq!(field, "runs");
            assert!(message.contains("at least 3"), "{message}");
        }
        other => panic!("expected an invalid runs error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(calls, 0, "nothing runs");
    // An error of the work stops the measurement.
    let r = measure(3, |i| if i == 2 { Err(pdiff_core::Error::Cancelled) } else { Ok(()) });
    assert!(matches!(r, Err(pdiff_core::Error::Cancelled)));
}

#[test]
fn medians() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(&[5.0]), 5.0);
}
