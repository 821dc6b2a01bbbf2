//! Inputs other tools, other teams or downloads produced, tried as an attacker would: special
//! files where a file is expected, names given twice, links out of a bundle, manifests whose
//! sizes would make a reader allocate or build without bound, condition buffers of the wrong
//! length. Each is an error naming what is wrong; nothing blocks, aborts or is read from outside.
use pdiff_core::diffusion::{Conditioning, SamplerKind};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::params::{ParamSet, Selection};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::Error;
use pdiff_test_support::{copy_fixture, f32_bytes, good_checkpoints, raw_file};
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// `f` must return within a few seconds (a FIFO opened for reading would block forever).
fn returns_soon<T>(f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}: blocked", t0.elapsed());
    out
}

#[test]
fn a_fifo_or_a_device_among_the_checkpoints_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = good_checkpoints(dir.path(), 2);
    let fifo = dir.path().join("c999.safetensors");
    mkfifo(&fifo);
    files.push(fifo.clone());
    for load in [ParamSet::load(&files, &Selection::AllFloat), ParamSet::load_dir(dir.path(), &Selection::AllFloat)] {
        match returns_soon(|| load) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("c999.safetensors") && e.to_string().contains("not a regular file"), "{e}"),
            other => panic!("expected an Io error naming the FIFO, got {other:?}"),
        }
    }
    let e = returns_soon(|| pdiff_core::params::peek_dir(&tempfile::tempdir().unwrap().path().join("x"), &Selection::AllFloat)).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // A device (through a link named like a checkpoint): never read without end.
    let dev = tempfile::tempdir().unwrap();
    good_checkpoints(dev.path(), 2);
    std::os::unix::fs::symlink("/dev/zero", dev.path().join("c500.safetensors")).unwrap();
    let e = returns_soon(|| ParamSet::load_dir(dev.path(), &Selection::AllFloat)).unwrap_err();
    assert!(e.to_string().contains("c500.safetensors") && e.to_string().contains("not a regular file"), "{e}");
    // The header-only path too.
    let e = returns_soon(|| pdiff_core::params::peek_dir(dev.path(), &Selection::AllFloat)).map(|_| ());
    assert!(e.is_ok() || e.unwrap_err().to_string().contains("c500.safetensors"));
}

#[test]
fn a_tensor_named_twice_in_a_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = good_checkpoints(dir.path(), 2);
    // Two entries "a.bias" in one header: serde_json would keep the last one silently.
    let p = dir.path().join("dup.safetensors");
    raw_file(&p, &[("a.bias", Dtype::F32, vec![4], f32_bytes(&[1.0; 4])), ("b.bias", Dtype::F32, vec![4], f32_bytes(&[2.0; 4]))]);
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap().replacen("\"b.bias\"", "\"a.bias\"", 1);
    assert_eq!(header.len(), n);
    let mut crafted = bytes[..8].to_vec();
    crafted.extend_from_slice(header.as_bytes());
    crafted.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, crafted).unwrap();
    for order in [vec![files[0].clone(), p.clone()], vec![p.clone(), files[0].clone()]] {
        let e = ParamSet::load(&order, &Selection::AllFloat).unwrap_err().to_string();
        assert!(e.contains("dup.safetensors") && e.contains("key 'a.bias' appears twice"), "{e}");
    }
}

fn conditions_error(file: &Path, sources: &[String]) -> String {
    match pdiff_core::params::Conditions::from_file(file, sources) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{} accepted: {c:?}", file.display()),
    }
}

#[test]
fn conditions_files_name_each_checkpoint_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let sources: Vec<String> = vec!["/a/c00.safetensors".into(), "/a/c01.safetensors".into()];
    // A key given twice in JSON: refused, naming it (it used to keep the last vector).
    let e = conditions_error(&write("dup.json", r#"{"c00.safetensors": [1], "c01.safetensors": [2], "c00.safetensors": [3]}"#), &sources);
    assert!(e.contains("dup.json") && e.contains("key 'c00.safetensors' appears twice"), "{e}");
    let e = conditions_error(&write("dup2.json", r#"{"conditions": {"c00.safetensors": [1], "c01.safetensors": [2]}, "conditions": {}}"#), &sources);
    assert!(e.contains("key 'conditions' appears twice"), "{e}");
    // One checkpoint given by its path and by its file name: both places named.
    let e = conditions_error(&write("both.json", r#"{"/a/c00.safetensors": [1], "c00.safetensors": [1], "c01.safetensors": [2]}"#), &sources);
    assert!(e.contains("checkpoint '/a/c00.safetensors' is given twice") && e.contains("'/a/c00.safetensors'") && e.contains("'c00.safetensors'"), "{e}");
    // A file name two checkpoints share (two directories): ambiguous, both named.
    let two_dirs: Vec<String> = vec!["/a/c00.safetensors".into(), "/b/c00.safetensors".into()];
    let e = conditions_error(&write("amb.csv", "c00.safetensors,1\n"), &two_dirs);
    assert!(e.contains("names two checkpoints") && e.contains("/a/c00.safetensors") && e.contains("/b/c00.safetensors"), "{e}");
    // Their paths resolve it.
    let ok = pdiff_core::params::Conditions::from_file(&write("paths.csv", "/a/c00.safetensors,1\n/b/c00.safetensors,2\n"), &two_dirs).unwrap();
    assert_eq!(ok.values, [1.0, 2.0]);
    // A FIFO as the conditions file: refused at once, never waited on.
    let fifo = dir.path().join("fifo.json");
    mkfifo(&fifo);
    let e = returns_soon(|| conditions_error(&fifo, &sources));
    assert!(e.contains("fifo.json") && e.contains("not a regular file"), "{e}");
}

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
}

#[test]
fn bundle_files_must_resolve_inside_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    // A link to a file of the same bundle is fine (both sides of the policy are tested).
    let inside = copy_fixture(&tmp.path().join("inside"));
    std::fs::rename(inside.join("decoder.onnx"), inside.join("real-decoder.onnx")).unwrap();
    std::os::unix::fs::symlink("real-decoder.onnx", inside.join("decoder.onnx")).unwrap();
    Sampler::open(&inside, &cpu()).unwrap();
    // A link out of the bundle is refused, even to an identical file, naming where it points.
    let outside = copy_fixture(&tmp.path().join("outside"));
    let elsewhere = tmp.path().join("elsewhere.onnx");
    std::fs::rename(outside.join("decoder.onnx"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, outside.join("decoder.onnx")).unwrap();
    let e = Sampler::open(&outside, &cpu()).err().unwrap().to_string();
    assert!(e.contains("decoder.onnx") && e.contains("outside the bundle") && e.contains("elsewhere.onnx"), "{e}");
    // The manifest too.
    let m = copy_fixture(&tmp.path().join("manifest"));
    std::fs::rename(m.join("pdiff.json"), tmp.path().join("pdiff.json")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("pdiff.json"), m.join("pdiff.json")).unwrap();
    let e = Sampler::open(&m, &cpu()).err().unwrap().to_string();
    assert!(e.contains("pdiff.json") && e.contains("outside the bundle"), "{e}");
}

/// A copy of the fixture whose manifest `edit` changed (hashes still valid: the manifest is not
/// hashed).
fn edited(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let b = copy_fixture(dir);
    let path = b.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    b
}

#[test]
fn manifest_sizes_are_bounded_and_consistent_before_anything_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        ("latent", Box::new(|m| m["latent_dim"] = serde_json::json!(1u64 << 40)), &["latent_dim", "1099511627776"]),
        ("channels", Box::new(|m| m["autoencoder"]["encoder"][0]["channels"] = serde_json::json!(1u64 << 30)), &["autoencoder.encoder[0].channels"]),
        ("hidden", Box::new(|m| m["denoiser"]["hidden"] = serde_json::json!(1u64 << 40)), &["denoiser.hidden"]),
        ("blocks", Box::new(|m| m["denoiser"]["blocks"] = serde_json::json!(1u64 << 20)), &["denoiser.blocks"]),
        ("params", Box::new(|m| m["param_count"] = serde_json::json!(u64::MAX)), &["param_count"]),
        ("padded", Box::new(|m| m["padded_len"] = serde_json::json!(1u64 << 50)), &["padded_len"]),
        ("std", Box::new(|m| m["latent"]["std"][3] = serde_json::json!(0.0)), &["latent.std[3]"]),
        ("rank", Box::new(|m| m["layout"][0]["shape"] = serde_json::json!(vec![1; 40])), &["rank 40"]),
        ("timesteps", Box::new(|m| m["schedule"]["timesteps"] = serde_json::json!(70_000_000_000_000_000u64)), &["schedule.timesteps"]),
    ];
    for (name, edit, words) in cases {
        let b = edited(&tmp.path().join(name), edit);
        let e = returns_soon(|| pdiff_core::bundle::load_manifest(&b)).err().unwrap_or_else(|| panic!("{name}: accepted"));
        let text = e.to_string();
        assert!(matches!(e, Error::Bundle { .. }), "{name}: {text}");
        for w in words {
            assert!(text.contains(w), "{name}: {text} should name {w:?}");
        }
    }
    // A key given twice in the manifest is refused too.
    let b = copy_fixture(&tmp.path().join("dup"));
    let text = std::fs::read_to_string(b.join("pdiff.json")).unwrap();
    let doubled = text.replacen("\"param_count\"", "\"param_count\": 1, \"param_count\"", 1);
    std::fs::write(b.join("pdiff.json"), doubled).unwrap();
    let e = pdiff_core::bundle::load_manifest(&b).err().unwrap().to_string();
    assert!(e.contains("param_count") && e.contains("twice"), "{e}");
}

#[test]
fn condition_buffers_hold_exactly_one_condition_or_one_per_model() {
    // The fixture is unconditional: a condition is refused as such. The lengths are checked by
    // the request against the generator's C.
    let s = Sampler::open(&pdiff_test_support::fixture(), &cpu()).unwrap();
    let kind = SamplerKind::Ddim { steps: 2 };
    let e = s.sample(&SampleRequest::new(2).sampler(kind).condition(Conditioning { values: &[1.0], guidance: 1.0 }), &mut no_progress).unwrap_err();
    assert!(e.to_string().contains("unconditional"), "{e}");
    for (c, n, len, ok) in [(3, 2, 3, true), (3, 2, 6, true), (3, 2, 9, false), (3, 2, 4, false), (3, 1, 3, true), (2, 4, 16, false), (2, 4, 4, false)] {
        let r = pdiff_core::diffusion::check_condition_len(c, len, n);
        assert_eq!(r.is_ok(), ok, "C = {c}, n = {n}, {len} values: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains(&format!("{len} values")) && e.to_string().contains(&format!("n x C = {n} x {c}")), "{e}");
        }
    }
}

#[test]
fn temporary_names_stay_within_name_max() {
    // The longest valid name: its output's temporary sibling must be creatable too.
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(255);
    let path = dir.path().join(&long);
    pdiff_core::files::write_atomic(&path, b"data").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    let multibyte = "é".repeat(127); // 254 bytes
    pdiff_core::files::write_atomic(&dir.path().join(&multibyte), b"x").unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().contains(".tmp-")).collect();
    assert!(left.is_empty(), "{left:?}");
}
