//! Hostile input through the `pdiff` CLI (docs/reliability.md, "Hostile input"): special files
//! where a file is expected, names given twice, links out of a bundle, manifest sizes beyond the
//! limits, condition vectors of the wrong length, outputs on top of inputs, runs killed by
//! SIGTERM or SIGKILL, counts beyond their bounds. Each is a clear error (exit 1) or a clean
//! stop, within seconds, and nothing the user had is lost.
//!
//! `PDIFF_TEST_BIN` runs these against another `pdiff` (an older build, to show what it did).
use pdiff_test_support::{
    assert_error, assert_no_leftovers, assert_nothing_written, copy_fixture, f32_bytes, fc_layout, raw_file, snapshot, write_checkpoints,
};
use safetensors::Dtype;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    std::env::var_os("PDIFF_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_pdiff").into())
}

/// Run `pdiff args`; a run still going after `DEADLINE` is killed and the test fails: it blocked.
fn pdiff(args: &[&str]) -> Output {
    const DEADLINE: Duration = Duration::from_secs(60);
    let mut child = Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run pdiff");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > DEADLINE {
            child.kill().unwrap();
            let o = child.wait_with_output().unwrap();
            panic!("pdiff {args:?} still running after {DEADLINE:?}: it blocked; stderr: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(ckpts: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--checkpoints", s(ckpts), "--out", s(out), "--ae-steps", "3", "--diffusion-steps", "3", "--device", "cpu"];
    args.extend_from_slice(extra);
    pdiff(&args)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

fn ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn special_files_among_the_checkpoints_are_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    // A FIFO (reading it would wait forever for a writer).
    let c = d.path().join("fifo");
    write_checkpoints(&c, &fc_layout(), 3);
    mkfifo(&c.join("c999.safetensors"));
    let out = d.path().join("out");
    assert_error(&train(&c, &out, &[]), &["c999.safetensors", "not a regular file"]);
    assert_nothing_written(&out);
    // A device (reading it would never end), through a link named like a checkpoint.
    let c = d.path().join("device");
    write_checkpoints(&c, &fc_layout(), 3);
    std::os::unix::fs::symlink("/dev/zero", c.join("c999.safetensors")).unwrap();
    assert_error(&train(&c, &out, &[]), &["c999.safetensors", "not a regular file"]);
    assert_nothing_written(&out);
}

#[test]
fn a_tensor_named_twice_in_a_checkpoint_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("ckpt");
    write_checkpoints(&c, &fc_layout(), 3);
    // "a" and "b" of the same size, then "b" renamed "a" in the header: JSON keeps one of them.
    let p = c.join("c100.safetensors");
    raw_file(&p, &[("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0])), ("b", Dtype::F32, vec![2], f32_bytes(&[3.0, 4.0]))]);
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap().replacen("\"b\"", "\"a\"", 1);
    std::fs::write(&p, [&bytes[..8], header.as_bytes(), &bytes[8 + n..]].concat()).unwrap();
    let out = d.path().join("out");
    assert_error(&train(&c, &out, &[]), &["c100.safetensors", "key 'a' appears twice"]);
    assert_nothing_written(&out);
}

#[test]
fn conditions_files_are_read_strictly() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("ckpt");
    write_checkpoints(&c, &fc_layout(), 2);
    let out = d.path().join("out");
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "dup.json",
            r#"{"conditions": {"c000.safetensors": [1], "c001.safetensors": [2], "c000.safetensors": [3]}}"#,
            &["dup.json", "key 'c000.safetensors' appears twice"],
        ),
        (
            "both.json",
            &format!(r#"{{"conditions": {{"{}": [1], "c000.safetensors": [1], "c001.safetensors": [2]}}}}"#, s(&c.join("c000.safetensors"))),
            &["both.json", "is given twice"],
        ),
        ("nan.csv", "c000.safetensors,1\nc001.safetensors,NaN\n", &["nan.csv", "'c001.safetensors': condition value NaN is not finite"]),
    ];
    for (name, text, words) in cases {
        let f = d.path().join(name);
        std::fs::write(&f, text).unwrap();
        assert_error(&train(&c, &out, &["--conditions", s(&f)]), words);
        assert_nothing_written(&out);
    }
    // Wider than any condition may be.
    let row = vec!["1"; 70_000].join(",");
    let f = d.path().join("wide.csv");
    std::fs::write(&f, format!("c000.safetensors,{row}\nc001.safetensors,{row}\n")).unwrap();
    assert_error(&train(&c, &out, &["--conditions", s(&f)]), &["wide.csv", "C = 70000 values per condition (at most 65536)"]);
    assert_nothing_written(&out);
    // A FIFO as the conditions file: refused at once.
    let fifo = d.path().join("conditions.json");
    mkfifo(&fifo);
    assert_error(&train(&c, &out, &["--conditions", s(&fifo)]), &["conditions.json", "not a regular file"]);
    assert_nothing_written(&out);
}

/// A conditional bundle (C = 2) trained from 4 checkpoints.
fn conditional_bundle(d: &Path) -> PathBuf {
    let c = d.join("ckpt");
    write_checkpoints(&c, &fc_layout(), 4);
    let f = d.join("conditions.csv");
    std::fs::write(&f, "c000.safetensors,0,1\nc001.safetensors,1,0\nc002.safetensors,-1,0\nc003.safetensors,0,-1\n").unwrap();
    let out = d.join("bundle");
    ok(&train(&c, &out, &["--conditions", s(&f)]));
    out
}

#[test]
fn condition_vectors_hold_exactly_the_bundles_width() {
    let d = tempfile::tempdir().unwrap();
    let b = conditional_bundle(d.path());
    let samples = d.path().join("samples");
    let sample = |condition: &str| pdiff(&["sample", "--bundle", s(&b), "-n", "2", "--steps", "3", "--condition", condition, "--out", s(&samples)]);
    // Negative values are values, not options.
    ok(&sample("-1,0"));
    let before = snapshot(&samples);
    // One value too many or too few: refused, naming the width, the previous samples kept.
    assert_error(&sample("-1,0,1"), &["invalid condition", "3 values", "expected C = 2", "or n x C = 2 x 2 = 4"]);
    assert_error(&sample("0.5"), &["invalid condition", "1 value: expected C = 2"]);
    assert_error(&sample("1,nan"), &["condition", "NaN"]);
    assert_eq!(snapshot(&samples), before);
}

#[test]
fn bundle_files_outside_the_bundle_are_never_read() {
    let d = tempfile::tempdir().unwrap();
    let samples = d.path().join("samples");
    let sample = |b: &Path| pdiff(&["sample", "--bundle", s(b), "-n", "2", "--steps", "3", "--out", s(&samples)]);
    // A link among the bundle's own files is followed (both sides of the policy).
    let inside = copy_fixture(&d.path().join("inside"));
    std::fs::rename(inside.join("decoder.onnx"), inside.join("decoder-v1.onnx")).unwrap();
    std::os::unix::fs::symlink("decoder-v1.onnx", inside.join("decoder.onnx")).unwrap();
    ok(&sample(&inside));
    let before = snapshot(&samples);
    // A link to a copy outside: refused, naming the file and where it leads.
    let outside = copy_fixture(&d.path().join("outside"));
    std::fs::rename(outside.join("decoder.onnx"), d.path().join("elsewhere.onnx")).unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere.onnx"), outside.join("decoder.onnx")).unwrap();
    assert_error(&sample(&outside), &["decoder.onnx", "elsewhere.onnx", "outside the bundle"]);
    // A link to a device.
    let device = copy_fixture(&d.path().join("device"));
    std::fs::remove_file(device.join("denoiser.onnx")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", device.join("denoiser.onnx")).unwrap();
    assert_error(&sample(&device), &["denoiser.onnx", "/dev/zero", "outside the bundle"]);
    // The manifest itself through a link out.
    let manifest = copy_fixture(&d.path().join("manifest"));
    std::fs::rename(manifest.join("pdiff.json"), d.path().join("pdiff.json")).unwrap();
    std::os::unix::fs::symlink(d.path().join("pdiff.json"), manifest.join("pdiff.json")).unwrap();
    assert_error(&sample(&manifest), &["pdiff.json", "outside the bundle"]);
    assert_eq!(snapshot(&samples), before);
}

/// A consistent bundle whose decoder keeps one 4 GiB tensor in its external data file (a sparse
/// file, every hash right), sampled with the address space limited to 4 GiB: the allocation
/// fails, which must be an error naming the file (an abort of the process before).
#[test]
fn a_tensor_larger_than_the_memory_left_is_an_error_not_an_abort() {
    use prost::Message;
    use std::os::unix::process::CommandExt;
    const SIZE: u64 = 4 << 30;
    let d = tempfile::tempdir().unwrap();
    let b = d.path().join("external");
    ok(&pdiff(&["export", "--generator", s(&pdiff_test_support::fixture()), "--out", s(&b), "--inline-graph-limit", "0"]));
    let graph = b.join("decoder.onnx");
    let mut model = pdiff_train::onnx::proto::ModelProto::decode(std::fs::read(&graph).unwrap().as_slice()).unwrap();
    let t = model.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
    t.dims = vec![(SIZE / 4) as i64];
    for e in &mut t.external_data {
        match e.key.as_deref() {
            Some("offset") => e.value = Some("0".into()),
            Some("length") => e.value = Some(SIZE.to_string()),
            _ => {}
        }
    }
    std::fs::write(&graph, model.encode_to_vec()).unwrap();
    std::fs::OpenOptions::new().write(true).open(b.join("decoder.onnx.data")).unwrap().set_len(SIZE).unwrap();
    for f in ["decoder.onnx", "decoder.onnx.data"] {
        pdiff_test_support::rehash(&b, f);
    }
    let out = d.path().join("samples");
    let mut cmd = Command::new(bin());
    cmd.args(["sample", "--bundle", s(&b), "-n", "2", "--steps", "3", "--out", s(&out)]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: SIZE, rlim_max: SIZE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_error(&o, &["out of memory: cannot allocate 4294967296 bytes for decoder external data file decoder.onnx.data"]);
    assert_nothing_written(&out);
}

#[test]
fn manifest_sizes_beyond_the_limits_are_named() {
    let d = tempfile::tempdir().unwrap();
    let samples = d.path().join("samples");
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &[&str]); 5] = [
        ("latent", |m| m["latent_dim"] = serde_json::json!(1u64 << 40), &["latent_dim 1099511627776", "1 ..= 1048576"]),
        ("d", |m| m["param_count"] = serde_json::json!(u64::MAX), &["param_count 18446744073709551615"]),
        ("width", |m| m["autoencoder"]["encoder"][0]["channels"] = serde_json::json!(1u64 << 40), &["autoencoder.encoder[0].channels", "1099511627776"]),
        ("t", |m| m["schedule"]["timesteps"] = serde_json::json!(70_000_000_000_000_000u64), &["schedule.timesteps", "70000000000000000"]),
        ("dup", |_| {}, &["key 'param_count' appears twice"]),
    ];
    for (name, edit, words) in edits {
        let b = copy_fixture(&d.path().join(name));
        let path = b.join("pdiff.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut m);
        let mut text = serde_json::to_string(&m).unwrap();
        if name == "dup" {
            text = text.replacen("\"param_count\"", "\"param_count\":1,\"param_count\"", 1);
        }
        std::fs::write(&path, text).unwrap();
        for backend in ["onnxruntime", "tch"] {
            let o = pdiff(&["sample", "--bundle", s(&b), "-n", "2", "--steps", "3", "--backend", backend, "--out", s(&samples)]);
            assert_error(&o, &[&["pdiff.json"][..], words].concat());
            assert_nothing_written(&samples);
        }
    }
}

#[test]
fn train_refuses_an_out_that_holds_or_is_inside_its_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("ckpt");
    write_checkpoints(&c, &fc_layout(), 3);
    let before = snapshot(d.path());
    for (out, words) in
        [(c.clone(), &["is this input"][..]), (c.join("bundle"), &["is inside this input"][..]), (d.path().to_path_buf(), &["holds this input"][..])]
    {
        let o = train(&c, &out, &["--force"]);
        assert_error(&o, &[&["invalid checkpoints"][..], words].concat());
        assert_eq!(snapshot(d.path()), before, "{}", out.display());
    }
}

/// Start `pdiff args` and return once a stdout line starts with `ready` (the run is under way).
fn start(args: &[&str], ready: &str) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with(ready) {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "pdiff {args:?} ended before {ready:?}");
    }
    (child, stdout)
}

#[test]
fn sigterm_and_sighup_clean_up_like_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("ckpt");
    write_checkpoints(&c, &fc_layout(), 4);
    let out = d.path().join("out");
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let args = ["train", "--checkpoints", s(&c), "--out", s(&out), "--ae-steps", "1000000", "--device", "cpu"];
        let (child, _stdout) = start(&args, "K = ");
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, signal) };
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "signal {signal}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("cancelled"));
        assert_nothing_written(&out);
    }
}

/// The staging directory a run of `pdiff sample` into `out` is filling, once it exists: beside
/// `out` when it replaces a previous output, inside it when it fills an empty directory.
fn staging_of(out: &Path) -> Option<PathBuf> {
    let beside = format!(".{}.tmp-", out.file_name().unwrap().to_str().unwrap());
    let entries = |dir: &Path| std::fs::read_dir(dir).map(|r| r.map(|e| e.unwrap().path()).collect::<Vec<_>>()).unwrap_or_default();
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    entries(out.parent().unwrap())
        .into_iter()
        .filter(|p| name(p).starts_with(&beside))
        .chain(entries(out).into_iter().filter(|p| name(p).starts_with(".pdiff-staging-")))
        .find(|p| p.join(".pdiff-staging.json").is_file())
}

#[test]
fn what_a_killed_run_left_is_recognized_and_cleaned() {
    let d = tempfile::tempdir().unwrap();
    let b = copy_fixture(&d.path().join("bundle"));
    let sample = |out: &Path, n: &str| pdiff(&["sample", "--bundle", s(&b), "-n", n, "--steps", "3", "--out", s(out)]);
    // Into a previous output (staged beside it) and into an empty directory (staged inside).
    let previous = d.path().join("previous");
    ok(&sample(&previous, "2"));
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for out in [previous, empty] {
        // A long run, killed outright once it stages its output.
        let args = ["sample", "--bundle", s(&b), "-n", "1000000", "--steps", "3", "--out", s(&out)];
        let (mut child, _stdout) = start(&args, "[");
        let t0 = Instant::now();
        while staging_of(&out).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(60), "no staging directory appeared for {}", out.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let live = staging_of(&out).unwrap();
        if live.starts_with(&out) {
            // While it fills the directory, another run into it is told whose the files are.
            let o = sample(&out, "2");
            assert_error(&o, &["being written by another libpdiff run", &format!("process {}", child.id())]);
        } else {
            // While it replaces the output, another run stages its own and leaves the live one be.
            ok(&sample(&out, "2"));
        }
        assert!(live.join(".pdiff-staging.json").is_file(), "a live run's staging directory was removed");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(staging_of(&out).is_some(), "SIGKILL leaves the staging directory");
        // The next run removes what the dead one left and writes the output.
        ok(&sample(&out, "3"));
        assert_no_leftovers(d.path());
        assert_no_leftovers(&out);
        assert!(out.join("gen_0002.safetensors").is_file());
    }
}

#[test]
fn counts_beyond_their_bounds_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let b = copy_fixture(&d.path().join("bundle"));
    let out = d.path().join("samples");
    for (extra, words) in [
        (&["-n", "0"][..], &["--n", "0 is not in 1 ..= 1000000000"][..]),
        (&["-n", "100000000000"], &["--n", "100000000000 is not in 1 ..= 1000000000"]),
        (&["--steps", "1000000000"], &["invalid steps", "1000000000 steps", "only T = 1000"]),
        (&["--threads", "100000"], &["--threads", "100000 is not in 0 ..= 1024"]),
        (&["-n", "-3"], &["'-3'"]),
    ] {
        let mut args = vec!["sample", "--bundle", s(&b), "--out", s(&out)];
        args.extend_from_slice(extra);
        assert_error(&pdiff(&args), words);
        assert_nothing_written(&out);
    }
}
