//! Reliability: every bad input of the README's Reliability table, through the `pdiff` CLI.
//! Each case asserts the exit status (1: a clear error, never a panic or abort), the words of
//! the error, and that no output was created or an existing output was left unchanged.
use pdiff_core::params::Layout;
use pdiff_test_support::{
    assert_error, assert_no_leftovers, assert_nothing_written, copy_fixture, f32_bytes, fc_layout, foreign_dir, raw_file, rehash, snapshot, write_checkpoints,
};
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdiff")).args(args).output().expect("run pdiff")
}

/// Run `pdiff train` on `ckpts` into a fresh output dir; return (output, out dir).
fn train(ckpts: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let out = ckpts.parent().unwrap().join("bundle-out");
    let mut args =
        vec!["train", "--checkpoints", ckpts.to_str().unwrap(), "--out", out.to_str().unwrap(), "--ae-steps", "3", "--diffusion-steps", "3", "--device", "cpu"];
    args.extend_from_slice(extra);
    (pdiff(&args), out)
}

fn case(f: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    f(dir.path());
}

#[test]
fn truncated_checkpoint() {
    case(|d| {
        let c = d.join("ckpt");
        let files = write_checkpoints(&c, &fc_layout(), 3);
        let bytes = std::fs::read(&files[1]).unwrap();
        std::fs::write(&files[1], &bytes[..bytes.len() / 2]).unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["c001.safetensors", "not a readable safetensors file"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn not_a_safetensors_file() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        std::fs::write(c.join("c002.safetensors"), b"PK\x03\x04 this is a zip, not safetensors").unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["c002.safetensors", "not a readable safetensors file"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn corrupt_header() {
    case(|d| {
        let c = d.join("ckpt");
        let files = write_checkpoints(&c, &fc_layout(), 2);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        bytes[8] = b'x'; // the header's opening brace: the JSON no longer parses
        std::fs::write(&files[0], &bytes).unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["c000.safetensors"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn integer_tensor_selected() {
    case(|d| {
        let c = d.join("ckpt");
        std::fs::create_dir_all(&c).unwrap();
        for i in 0..2 {
            raw_file(
                &c.join(format!("c{i}.safetensors")),
                &[("w", Dtype::F32, vec![3], f32_bytes(&[1.0, 2.0, i as f32])), ("steps", Dtype::I64, vec![1], 5i64.to_le_bytes().to_vec())],
            );
        }
        let (o, out) = train(&c, &["--select", "steps"]);
        assert_error(&o, &["steps", "not floating point"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn no_floating_tensor_at_all() {
    case(|d| {
        let c = d.join("ckpt");
        std::fs::create_dir_all(&c).unwrap();
        for i in 0..2 {
            raw_file(&c.join(format!("c{i}.safetensors")), &[("steps", Dtype::I64, vec![1], (i as i64).to_le_bytes().to_vec())]);
        }
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["selection is empty"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn half_precision_is_converted_not_refused() {
    case(|d| {
        let c = d.join("ckpt");
        std::fs::create_dir_all(&c).unwrap();
        for i in 0..3 {
            let v: Vec<u8> = (0..8).flat_map(|j| half::f16::from_f32(0.5 + 0.01 * (i * j) as f32).to_le_bytes()).collect();
            raw_file(&c.join(format!("c{i}.safetensors")), &[("w", Dtype::F16, vec![8], v)]);
        }
        let set = pdiff_core::params::ParamSet::load_dir(&c, &pdiff_core::params::Selection::AllFloat).unwrap();
        assert_eq!(set.layout.param_count(), 8);
        assert_eq!(set.row(2)[3], half::f16::from_f32(0.5 + 0.01 * 6.0).to_f32());
    });
}

#[test]
fn shapes_differ_between_checkpoints() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        let other = Layout::from_shapes(&[("fc.weight", vec![4, 5]), ("fc.bias", vec![4])]).unwrap();
        other.save_safetensors(&vec![0.1; other.param_count()], &c.join("c002.safetensors")).unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["c002.safetensors", "fc.weight", "[4, 5]", "[4, 6]"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn missing_tensor_in_one_checkpoint() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        let only_w = Layout::from_shapes(&[("fc.weight", vec![4, 6])]).unwrap();
        only_w.save_safetensors(&[0.1; 24], &c.join("c002.safetensors")).unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["c002.safetensors", "fc.bias", "missing"]);
        assert_nothing_written(&out);
    });
}

fn with_value(d: &Path, value: f32, words: &[&str]) {
    let c = d.join("ckpt");
    write_checkpoints(&c, &fc_layout(), 2);
    let l = fc_layout();
    let mut v = vec![0.2f32; l.param_count()];
    v[25] = value; // inside fc.bias
    l.save_safetensors(&v, &c.join("c002.safetensors")).unwrap();
    let (o, out) = train(&c, &[]);
    assert_error(&o, words);
    assert_nothing_written(&out);
}

#[test]
fn nan_value() {
    case(|d| with_value(d, f32::NAN, &["c002.safetensors", "fc.bias", "non-finite value NaN"]));
}

#[test]
fn inf_value() {
    case(|d| with_value(d, f32::INFINITY, &["c002.safetensors", "fc.bias", "non-finite value inf"]));
}

#[test]
fn selection_matches_nothing() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        let (o, out) = train(&c, &["--select", "conv*.weight"]);
        assert_error(&o, &["conv*.weight", "no floating-point tensor matches"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn one_checkpoint() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 1);
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["K = 1", "at least 2"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn empty_directory() {
    case(|d| {
        let c = d.join("ckpt");
        std::fs::create_dir_all(&c).unwrap();
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["ckpt", "no *.safetensors checkpoint in this directory"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn missing_directory() {
    case(|d| {
        let c = d.join("nowhere");
        let (o, out) = train(&c, &[]);
        assert_error(&o, &["nowhere"]);
        assert_nothing_written(&out);
    });
}

/// A checkpoint of one f32 tensor of `shape` whose data is a hole of the file (sparse: no disk
/// space), so that it can be absurdly large and still a well-formed safetensors file.
fn sparse_checkpoint(path: &Path, name: &str, shape: &[usize]) {
    let bytes = 4 * shape.iter().product::<usize>() as u64;
    let mut header = format!(r#"{{"{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[0,{bytes}]}}}}"#).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file_bytes = (header.len() as u64).to_le_bytes().to_vec();
    file_bytes.extend_from_slice(&header);
    std::fs::write(path, &file_bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(file_bytes.len() as u64 + bytes).unwrap();
}

/// The number after `prefix` in `text`, up to the next space.
fn number_after(text: &str, prefix: &str) -> f64 {
    let rest = &text[text.find(prefix).unwrap_or_else(|| panic!("{prefix:?} not in {text}")) + prefix.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap_or_else(|e| panic!("number after {prefix:?} in {text}: {e}"))
}

#[test]
fn absurd_size_is_refused_up_front() {
    // Two checkpoints of 2^31 parameters (8 GiB each, sparse files, the most one may hold):
    // training them would exhaust memory, so `pdiff train` must refuse from the headers alone,
    // before any data is read.
    case(|d| {
        let c = d.join("ckpt");
        std::fs::create_dir_all(&c).unwrap();
        let shape = [1usize << 15, 1 << 16];
        for i in 0..2 {
            sparse_checkpoint(&c.join(format!("c{i}.safetensors")), "huge", &shape);
        }
        let d_params = shape[0] * shape[1];
        // The CLI's default preset is chosen by D (chunked here).
        let need = pdiff_core::training::estimate_training_bytes(d_params, 2, &pdiff_core::training::TrainConfig::auto(d_params));
        let avail = pdiff_core::training::available_memory_bytes().expect("linux meminfo");
        assert!(need > avail as u128, "estimate {need} should exceed available {avail}");
        let gib = |b: f64| b / (1u64 << 30) as f64;

        let (o, out) = train(&c, &[]);
        let need_text = format!("D = {d_params}, K = 2 needs about {:.1} GiB to train but ", gib(need as f64));
        assert_error(&o, &["invalid parameters", &need_text, "GiB of memory is available"]);
        // The available figure is the system's MemAvailable when the CLI ran: close to ours.
        let err = String::from_utf8_lossy(&o.stderr);
        let shown = number_after(&err, "to train but ");
        assert!((shown - gib(avail as f64)).abs() < 2.0, "available {shown} GiB shown, {:.1} GiB now: {err}", gib(avail as f64));
        assert_nothing_written(&out);

        // A checkpoint file larger than any checkpoint may be (256 GiB) is refused by its size.
        let big = d.join("big");
        std::fs::create_dir_all(&big).unwrap();
        for i in 0..2 {
            sparse_checkpoint(&big.join(format!("c{i}.safetensors")), "huge", &[1 << 18, 1 << 18]);
        }
        let (o, out) = train(&big, &[]);
        assert_error(&o, &["c0.safetensors", "bytes is more than the 34359738368 bytes allowed for this file"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn bad_option_values() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        for (extra, words) in [
            (vec!["--preset", "huge"], vec!["preset", "huge"]),
            (vec!["--batch-size", "0"], vec!["--batch-size", "0 is not in 1 ..= 1048576"]),
            (vec!["--ae-lr=-1"], vec!["ae_lr"]),
            (vec!["--ema", "1.5"], vec!["ema"]),
            (vec!["--device", "tpu"], vec!["device", "tpu"]),
        ] {
            let (o, out) = train(&c, &extra);
            assert_error(&o, &words);
            assert_nothing_written(&out);
        }
    });
}

#[test]
fn cuda_required_for_training_without_gpu() {
    if tch::Cuda::is_available() {
        return;
    }
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 2);
        let out = d.join("bundle-out");
        let o = pdiff(&["train", "--checkpoints", c.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cuda"]);
        assert_error(&o, &["device unavailable", "CUDA"]);
        assert_nothing_written(&out);
    });
}

#[test]
fn diverging_training_stops_and_keeps_the_last_good_bundle() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 4);
        // A good bundle first.
        let (o, out) = train(&c, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let before = std::fs::read(out.join("pdiff.json")).unwrap();
        // Then a run whose learning rate makes the loss non-finite, into the same place.
        let (o, _) = train(&c, &["--ae-lr", "1e30", "--ae-steps", "50"]);
        assert_error(&o, &["diverged", "autoencoder step"]);
        assert_eq!(std::fs::read(out.join("pdiff.json")).unwrap(), before, "the last good bundle must be unchanged");
    });
}

#[test]
fn interrupted_training_leaves_nothing() {
    case(|d| {
        let c = d.join("ckpt");
        write_checkpoints(&c, &fc_layout(), 4);
        let out = d.join("bundle-out");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pdiff"))
            .args(["train", "--checkpoints", c.to_str().unwrap(), "--out", out.to_str().unwrap(), "--ae-steps", "1000000", "--device", "cpu"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Interrupt only once training has begun (the "K = " line follows the handler's
        // installation), however slowly the process started on a loaded machine.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("K = ") {
            line.clear();
            let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(read > 0, "pdiff train ended before training began");
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("cancelled"));
        assert_nothing_written(&out);
    });
}

/// A trained bundle to damage in the bundle cases.
fn bundle(d: &Path) -> PathBuf {
    let c = d.join("ckpt");
    write_checkpoints(&c, &fc_layout(), 4);
    let (o, out) = train(&c, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn sample(b: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let out = b.parent().unwrap().join("samples");
    let mut args = vec!["sample", "--bundle", b.to_str().unwrap(), "-n", "2", "--steps", "5", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (pdiff(&args), out)
}

#[test]
fn bundle_damage_is_named() {
    case(|d| {
        let b = bundle(d);
        let pristine = d.join("pristine");
        std::fs::create_dir_all(&pristine).unwrap();
        for e in std::fs::read_dir(&b).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), pristine.join(e.file_name())).unwrap();
        }
        let restore = || {
            for e in std::fs::read_dir(&pristine).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
            }
        };
        let edit_manifest = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("pdiff.json")).unwrap()).unwrap();
            f(&mut m);
            std::fs::write(b.join("pdiff.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        };
        // missing file
        std::fs::remove_file(b.join("decoder.onnx")).unwrap();
        let (o, out) = sample(&b, &[]);
        assert_error(&o, &["decoder.onnx"]);
        assert_nothing_written(&out);
        restore();
        // corrupt / tampered file
        let mut w = std::fs::read(b.join("denoiser.onnx")).unwrap();
        let n = w.len();
        w[n - 10] ^= 1;
        std::fs::write(b.join("denoiser.onnx"), w).unwrap();
        let (o, out) = sample(&b, &[]);
        assert_error(&o, &["denoiser.onnx", "sha256 mismatch"]);
        assert_nothing_written(&out);
        restore();
        // manifest from a future format version
        edit_manifest(&|m| m["format_version"] = 7.into());
        let (o, out) = sample(&b, &[]);
        assert_error(&o, &["format_version 7", "not supported"]);
        assert_nothing_written(&out);
        restore();
        // manifest without a version / not JSON
        edit_manifest(&|m| {
            m.as_object_mut().unwrap().remove("format_version");
        });
        let (o, _) = sample(&b, &[]);
        assert_error(&o, &["format_version is missing"]);
        std::fs::write(b.join("pdiff.json"), b"{ not json").unwrap();
        let (o, _) = sample(&b, &[]);
        assert_error(&o, &["pdiff.json is not valid JSON"]);
        restore();
        // manifest whose layout does not cover param_count
        edit_manifest(&|m| m["param_count"] = 999.into());
        let (o, _) = sample(&b, &[]);
        assert_error(&o, &["pdiff.json", "padded_len 64 differs from 1024", "D = 999"]);
        restore();
        // bundle directory missing
        let (o, out) = sample(&d.join("no-bundle"), &[]);
        assert_error(&o, &["no-bundle"]);
        assert_nothing_written(&out);
        // the pristine bundle still works
        let (o, out) = sample(&b, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.join("gen_0001.safetensors").exists());
    });
}

#[test]
fn bundle_layout_must_match_the_host_model() {
    case(|d| {
        let b = bundle(d);
        let m = pdiff_core::bundle::load_manifest(&b).unwrap();
        let layout = m.layout();
        layout.check_matches(&[("fc.weight", vec![4, 6]), ("fc.bias", vec![4])]).unwrap();
        let e = layout.check_matches(&[("fc.weight", vec![6, 4]), ("fc.bias", vec![4])]).unwrap_err();
        assert!(e.to_string().contains("fc.weight") && e.to_string().contains("[6, 4]"), "{e}");
        let e = layout.check_matches(&[("fc.weight", vec![4, 6])]).unwrap_err();
        assert!(e.to_string().contains("fc.bias"), "{e}");
        let e = layout.check_matches(&[("fc.weight", vec![4, 6]), ("fc.bias", vec![4]), ("head.bias", vec![2])]).unwrap_err();
        assert!(e.to_string().contains("head.bias"), "{e}");
    });
}

#[test]
fn onnx_runtime_library_problems() {
    case(|d| {
        let b = bundle(d);
        let (o, out) = sample(&b, &["--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"]);
        assert_error(&o, &["ONNX Runtime library not found", "/nonexistent"]);
        assert_nothing_written(&out);
        // A file that is not a loadable ONNX Runtime (here: not even a shared library).
        let fake = d.join("libonnxruntime.so.1.99.0");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let (o, out) = sample(&b, &["--ort-lib", fake.to_str().unwrap()]);
        assert_error(&o, &["cannot load", "libonnxruntime.so.1.99.0"]);
        assert_nothing_written(&out);
        // CUDA execution provider required on a runtime without it.
        if !pdiff_core::runtime::cuda_available(&Default::default()).unwrap_or(false) {
            let (o, out) = sample(&b, &["--provider", "cuda"]);
            assert_error(&o, &["CUDA execution provider required"]);
            assert_nothing_written(&out);
        }
        // Sampler options out of range.
        let (o, _) = sample(&b, &["--sampler", "euler"]);
        assert_error(&o, &["sampler", "euler"]);
        let (o, _) = sample(&b, &["--steps", "0"]);
        assert_error(&o, &["--steps", "0 is not in 1.."]);
    });
}

#[test]
fn existing_output_is_replaced_only_on_success() {
    case(|d| {
        let b = bundle(d);
        let (o, out) = sample(&b, &[]);
        assert_eq!(o.status.code(), Some(0));
        let before = std::fs::read(out.join("gen_0000.safetensors")).unwrap();
        // A failing sample into the same output directory leaves it as it was.
        let (o, _) = sample(&b, &["--steps", "0"]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(std::fs::read(out.join("gen_0000.safetensors")).unwrap(), before);
    });
}

// --- Outputs never destroy what pdiff did not write (README rows 33-42) ---------------------

/// Every command that writes a directory, aimed at `out` (cheap arguments: each of these cases
/// is refused before any work; `bundle` and `ckpts` are inputs that exist).
fn writing_commands(out: &str, bundle: &str, ckpts: &str) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("collect", s(&["collect", "--k", "2", "--out", out])),
        ("train", s(&["train", "--checkpoints", ckpts, "--out", out, "--ae-steps", "3", "--diffusion-steps", "3", "--device", "cpu"])),
        ("export", s(&["export", "--generator", bundle, "--out", out])),
        ("sample", s(&["sample", "--bundle", bundle, "-n", "2", "--steps", "5", "--out", out])),
        ("demo", s(&["demo", "--k", "2", "-n", "2", "--out", out])),
        ("ablation", s(&["ablation", "--checkpoints", ckpts, "--out", out])),
    ]
}

fn pdiff_owned(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdiff")).args(args).output().expect("run pdiff")
}

#[test]
fn existing_regular_file_at_out_is_refused_by_every_command() {
    case(|d| {
        let b = bundle(d);
        let out = d.join("results.txt");
        std::fs::write(&out, "a file of the user's").unwrap();
        for (cmd, args) in writing_commands(out.to_str().unwrap(), b.to_str().unwrap(), d.join("ckpt").to_str().unwrap()) {
            for force in [false, true] {
                let before = snapshot(d);
                let mut args = args.clone();
                if force {
                    args.push("--force".into());
                }
                let o = pdiff_owned(&args);
                assert_error(&o, &["results.txt", "is a regular file, not a directory", "choose another --out"]);
                assert!(!String::from_utf8_lossy(&o.stderr).contains("--force to"), "{cmd}: a file is never forced");
                assert_eq!(snapshot(d), before, "{cmd} (force {force}) changed something");
            }
        }
    });
}

#[test]
fn foreign_directory_at_out_is_refused_by_every_command() {
    case(|d| {
        let b = bundle(d);
        let out = foreign_dir(&d.join("home"));
        for (cmd, args) in writing_commands(out.to_str().unwrap(), b.to_str().unwrap(), d.join("ckpt").to_str().unwrap()) {
            let before = snapshot(d);
            let o = pdiff_owned(&args);
            assert_error(
                &o,
                &[
                    "home",
                    "already exists and holds files libpdiff did not write (notes.txt, photos)",
                    "choose another --out, or pass --force to write beside them",
                ],
            );
            assert_eq!(snapshot(d), before, "{cmd} changed something");
        }
    });
}

#[test]
fn foreign_directory_with_force_keeps_the_foreign_files_byte_identical() {
    case(|d| {
        let b = bundle(d);
        // sample, then export and train: each writes beside the user's files.
        let out = foreign_dir(&d.join("home"));
        let theirs = snapshot(&out);
        let (o, _) = sample(&b, &["--out", out.to_str().unwrap(), "--force", "-n", "3"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let after = snapshot(&out);
        for (p, bytes) in &theirs {
            assert_eq!(&after[p], bytes, "{} changed", p.display());
        }
        assert!(out.join("gen_0002.safetensors").is_file());
        // Forced again with fewer models: pdiff's own extra file goes, the user's stay.
        let (o, _) = sample(&b, &["--out", out.to_str().unwrap(), "--force", "-n", "2"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let after = snapshot(&out);
        for (p, bytes) in &theirs {
            assert_eq!(&after[p], bytes, "{} changed", p.display());
        }
        assert!(out.join("gen_0001.safetensors").is_file() && !out.join("gen_0002.safetensors").exists());
        // The loader still reads the generated models (it takes *.safetensors only).
        assert_eq!(pdiff_core::params::list_checkpoints(&out).unwrap().len(), 2);

        let bdir = foreign_dir(&d.join("exported"));
        let theirs = snapshot(&bdir);
        let o = pdiff(&["export", "--generator", b.to_str().unwrap(), "--out", bdir.to_str().unwrap(), "--force"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let after = snapshot(&bdir);
        for (p, bytes) in &theirs {
            assert_eq!(&after[p], bytes, "{} changed", p.display());
        }
        pdiff_core::bundle::load_manifest(&bdir).expect("a verified bundle beside the user's files");
    });
}

#[test]
fn force_never_overwrites_a_foreign_file_with_one_of_its_names() {
    case(|d| {
        let b = bundle(d);
        let out = foreign_dir(&d.join("home"));
        std::fs::write(out.join("gen_0001.safetensors"), "someone else's model").unwrap();
        let before = snapshot(d);
        let (o, _) = sample(&b, &["--out", out.to_str().unwrap(), "--force"]);
        assert_error(&o, &["home", "holds files libpdiff did not write under names this output needs (gen_0001.safetensors)"]);
        assert_eq!(snapshot(d), before);
    });
}

#[test]
fn symbolic_link_at_out_is_refused_even_with_force() {
    case(|d| {
        let b = bundle(d);
        let target = d.join("real");
        std::fs::create_dir(&target).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let before = snapshot(d);
        for extra in [&[][..], &["--force"][..]] {
            let mut args = vec!["--out", link.to_str().unwrap()];
            args.extend_from_slice(extra);
            let (o, _) = sample(&b, &args);
            assert_error(&o, &["link", "is a symbolic link (to ", "real", "not a directory"]);
            assert_eq!(snapshot(d), before);
        }
    });
}

#[test]
fn output_of_another_kind_at_out_is_refused_even_with_force() {
    case(|d| {
        // The classic slip: samples written over the bundle they come from.
        let b = bundle(d);
        let before = snapshot(d);
        for extra in [&[][..], &["--force"][..]] {
            let mut args = vec!["--out", b.to_str().unwrap()];
            args.extend_from_slice(extra);
            let (o, _) = sample(&b, &args);
            assert_error(&o, &["bundle-out", "holds a libpdiff bundle output, not samples"]);
            assert_eq!(snapshot(d), before);
        }
    });
}

#[test]
fn previous_output_of_the_same_command_is_replaced() {
    case(|d| {
        let b = bundle(d);
        let (o, out) = sample(&b, &["-n", "3", "--seed", "1"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let first = std::fs::read(out.join("gen_0000.safetensors")).unwrap();
        let (o, out) = sample(&b, &["-n", "2", "--seed", "2"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert_ne!(std::fs::read(out.join("gen_0000.safetensors")).unwrap(), first, "a new seed, new models");
        let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, [".pdiff-output.json", "gen_0000.safetensors", "gen_0001.safetensors"], "the old gen_0002 went with the old output");
        // A bundle re-trained into the same --out, and re-exported onto itself.
        let (o, _) = train(&d.join("ckpt"), &["--seed", "5"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let o = pdiff(&["export", "--generator", b.to_str().unwrap(), "--out", b.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        pdiff_core::bundle::load_manifest(&b).unwrap();
        assert_no_leftovers(out.parent().unwrap());
    });
}

#[test]
fn empty_directory_at_out_is_filled() {
    case(|d| {
        let b = bundle(d);
        let out = d.join("empty");
        std::fs::create_dir(&out).unwrap();
        let (o, _) = sample(&b, &["--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.join("gen_0001.safetensors").is_file());
        assert_no_leftovers(&out);
    });
}

#[test]
fn bench_out_replaces_only_a_previous_report_unless_forced() {
    case(|d| {
        let b = bundle(d);
        let out = d.join("bench.json");
        let bench = |extra: &[&str]| {
            let mut args = vec!["bench", "--bundle", b.to_str().unwrap(), "-n", "2", "--out", out.to_str().unwrap()];
            args.extend_from_slice(extra);
            pdiff(&args)
        };
        // A file that is not a bench report: refused (before any benchmarking), then forced.
        std::fs::write(&out, "my thesis draft").unwrap();
        let o = bench(&[]);
        assert_error(&o, &["bench.json", "already exists and is not a pdiff bench report", "choose another --out, or pass --force to replace it"]);
        assert_eq!(std::fs::read(&out).unwrap(), b"my thesis draft");
        let o = bench(&["--force"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report = std::fs::read(&out).unwrap();
        assert!(pdiff_tools::bench::is_report(&report));
        // A previous report: replaced without --force.
        let o = bench(&[]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(pdiff_tools::bench::is_report(&std::fs::read(&out).unwrap()));
        // A directory at --out: refused, even forced.
        let dir = foreign_dir(&d.join("results"));
        let before = snapshot(&dir);
        for extra in [&[][..], &["--force"][..]] {
            let mut args = vec!["bench", "--bundle", b.to_str().unwrap(), "-n", "2", "--out", dir.to_str().unwrap()];
            args.extend_from_slice(extra);
            assert_error(&pdiff(&args), &["results", "is a directory, not a file"]);
            assert_eq!(snapshot(&dir), before);
        }
    });
}

#[test]
fn ablation_checkpoints_inside_its_out_are_refused() {
    case(|d| {
        let out = d.join("ablation-out");
        let ckpts = out.join("checkpoints");
        write_checkpoints(&ckpts, &fc_layout(), 2);
        let before = snapshot(d);
        let o = pdiff(&["ablation", "--checkpoints", ckpts.to_str().unwrap(), "--out", out.to_str().unwrap(), "--force"]);
        assert_error(&o, &["invalid checkpoints", "the output", "holds this input", "which this run would replace or write into"]);
        assert_eq!(snapshot(d), before);
    });
}

/// Bundles other tools could write, each wrong in one way, through `pdiff sample` into a
/// previous output: exit 1 with a message naming the file and what is wrong (never 101, 134 or
/// a signal), and the previous output byte for byte as it was.
#[test]
fn foreign_bundles_are_errors_and_change_nothing() {
    case(|d| {
        let out = d.join("samples");
        let good = copy_fixture(&d.join("good"));
        let first = pdiff(&["sample", "--bundle", good.to_str().unwrap(), "-n", "2", "--steps", "5", "--out", out.to_str().unwrap()]);
        assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
        let before = snapshot(&out);
        let mut n = 0;
        let mut check = |edit: &dyn Fn(&Path), extra: &[&str], words: &[&str]| {
            n += 1;
            let b = copy_fixture(&d.join(format!("case{n}")));
            edit(&b);
            let mut args = vec!["sample", "--bundle", b.to_str().unwrap(), "-n", "2", "--steps", "5", "--out", out.to_str().unwrap()];
            args.extend_from_slice(extra);
            let o = pdiff(&args);
            assert_error(&o, words);
            assert_eq!(snapshot(&out), before, "case {n} ({words:?}) changed the previous output");
        };
        // The denoiser's output renamed 'eps' -> 'epz' (the same length, so the protobuf stays
        // valid: the node's output (field 2) and the graph output's name (field 1)).
        check(
            &|b| {
                let path = b.join("denoiser.onnx");
                let mut bytes = std::fs::read(&path).unwrap();
                let mut renamed = 0;
                for i in 0..bytes.len().saturating_sub(4) {
                    if (bytes[i] == 0x12 || bytes[i] == 0x0a) && &bytes[i + 1..i + 5] == b"\x03eps" {
                        bytes[i + 4] = b'z';
                        renamed += 1;
                    }
                }
                assert!(renamed >= 2, "renamed {renamed} occurrences of 'eps'");
                std::fs::write(&path, bytes).unwrap();
                rehash(b, "denoiser.onnx");
            },
            &[],
            &["denoiser.onnx", "output 'eps' is missing", "'epz'"],
        );
        // The manifest's widths disagree with the graphs (the last tensor one column narrower
        // than the decoder gives, the padded length unchanged: consistent in itself).
        check(
            &|b| {
                let path = b.join("pdiff.json");
                let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let shape = m["layout"].as_array_mut().unwrap().last_mut().unwrap()["shape"].as_array_mut().unwrap();
                let rows = shape[0].as_u64().unwrap();
                let last = shape.last_mut().unwrap();
                *last = serde_json::json!(last.as_u64().unwrap() - 1);
                let d = m["param_count"].as_u64().unwrap();
                m["param_count"] = serde_json::json!(d - rows);
                std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            },
            &[],
            &["decoder.onnx", "output 'params' has size", "the manifest says"],
        );
        // The manifest is a FIFO (reading it would block forever).
        check(
            &|b| {
                let path = b.join("pdiff.json");
                std::fs::remove_file(&path).unwrap();
                let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            },
            &[],
            &["pdiff.json", "not a regular file"],
        );
        // A huge manifest (a sparse 65 MiB file): refused by its size, not read.
        check(
            &|b| {
                let f = std::fs::OpenOptions::new().write(true).open(b.join("pdiff.json")).unwrap();
                f.set_len(65 << 20).unwrap();
            },
            &[],
            &["pdiff.json", "more than the 67108864 bytes allowed"],
        );
        // A schedule of 7e16 timesteps (it once aborted the host allocating its tables).
        check(
            &|b| {
                let path = b.join("pdiff.json");
                let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                m["schedule"]["timesteps"] = serde_json::json!(70_000_000_000_000_000u64);
                std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            },
            &[],
            &["schedule.timesteps", "must be 2 ..= 100000"],
        );
        // More DDIM steps than the schedule has timesteps.
        check(&|_| {}, &["--steps", "100001"], &["invalid steps", "DDIM with 100001 steps", "only T ="]);
    });
}
