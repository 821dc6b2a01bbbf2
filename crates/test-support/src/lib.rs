//! Helpers shared by libpdiff's test suites (pdiff-core's, pdiff-train's, the C ABI's and the
//! tools'): the committed fixture bundle, synthetic checkpoints, error matchers, snapshots of
//! directories and the checks every CLI error case makes. Nothing here needs libtorch.
use pdiff_core::model::Preset;
use pdiff_core::params::{Layout, ParamSet};
use pdiff_core::training::{DeviceChoice, TrainConfig};
use pdiff_core::Error;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// tests/fixtures/tiny-bundle: a bundle of a tiny generator (D = 144, latent 16, written by
/// `regenerate_fixture_bundle` in crates/train/tests/onnx_graphs.rs), so that serving is tested
/// without training.
pub fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-bundle")
}

/// A copy of the fixture bundle at `dest` (created), to damage or rewrite.
pub fn copy_fixture(dest: &Path) -> PathBuf {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    dest.to_path_buf()
}

/// The manifest's sha256 of `file` recomputed after an edit (a bundle another tool wrote,
/// consistent in itself).
pub fn rehash(bundle: &Path, file: &str) {
    use sha2::Digest;
    let path = bundle.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // Streamed: a test's file may be a multi-GiB sparse file.
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(bundle.join(file)).unwrap(), &mut hasher).unwrap();
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    m["sha256"][file] = serde_json::json!(hex);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Largest absolute difference between `a` and `b`, relative to the largest |value| of `a`.
pub fn max_rel_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write a safetensors file with arbitrary dtypes (the library only writes f32).
pub fn raw_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// "a.weight" [4, 8] then "a.bias" [4]: D = 36 (deliberately not in alphabetical order).
pub fn small_layout() -> Layout {
    Layout::from_shapes(&[("a.weight", vec![4, 8]), ("a.bias", vec![4])]).unwrap()
}

/// "fc.weight" [4, 6] then "fc.bias" [4]: D = 28, the layout of the CLI's error cases.
pub fn fc_layout() -> Layout {
    Layout::from_shapes(&[("fc.weight", vec![4, 6]), ("fc.bias", vec![4])]).unwrap()
}

/// Row `i` of a synthetic trajectory: a fixed base vector plus a small per-row perturbation.
pub fn trajectory_row(i: usize, d: usize) -> Vec<f32> {
    (0..d).map(|j| 0.5 * (j as f32 * 0.37).sin() + 0.02 * ((i * 7 + j * 3) as f32 * 0.61).cos()).collect()
}

/// K well-formed checkpoints of `layout` (rows of one trajectory) in `dir` (created):
/// `c000.safetensors`, `c001.safetensors`, ...
pub fn write_checkpoints(dir: &Path, layout: &Layout, k: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..k)
        .map(|i| {
            let p = dir.join(format!("c{i:03}.safetensors"));
            layout.save_safetensors(&trajectory_row(i, layout.param_count()), &p).unwrap();
            p
        })
        .collect()
}

/// K good checkpoints of [`small_layout`] in `dir`.
pub fn good_checkpoints(dir: &Path, k: usize) -> Vec<PathBuf> {
    write_checkpoints(dir, &small_layout(), k)
}

/// The K of [`trajectory_set`].
pub const K: usize = 8;

/// A small trajectory (K = 8 of [`small_layout`]) that [`small_config`] trains on in well under
/// a second.
pub fn trajectory_set() -> ParamSet {
    let l = small_layout();
    let d = l.param_count();
    let data: Vec<f32> = (0..K).flat_map(|i| trajectory_row(i, d)).collect();
    ParamSet::from_rows(l, data, (0..K).map(|i| format!("epoch{i}")).collect()).unwrap()
}

/// A training configuration of a few steps, on the CPU.
pub fn small_config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 30;
    c.diffusion_steps = 30;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.seed = seed;
    c
}

/// Unpack an `Error::Tensor`, failing the test on any other result.
pub fn tensor_err<T: std::fmt::Debug>(r: pdiff_core::Result<T>) -> (PathBuf, String, String, String) {
    match r {
        Err(e @ Error::Tensor { .. }) => {
            let shown = e.to_string();
            let Error::Tensor { file, tensor, message } = e else { unreachable!() };
            (file, tensor, message, shown)
        }
        other => panic!("expected Error::Tensor, got {other:?}"),
    }
}

/// Unpack an `Error::Checkpoint`, failing the test on any other result.
pub fn checkpoint_err<T: std::fmt::Debug>(r: pdiff_core::Result<T>) -> (PathBuf, String, String) {
    match r {
        Err(e @ Error::Checkpoint { .. }) => {
            let shown = e.to_string();
            let Error::Checkpoint { file, message } = e else { unreachable!() };
            (file, message, shown)
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

/// Unpack an `Error::InvalidArgument` as (field, message), failing the test on any other result.
pub fn invalid_err<T: std::fmt::Debug>(r: pdiff_core::Result<T>) -> (String, String) {
    match r {
        Err(Error::InvalidArgument { field, message }) => (field, message),
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
}

/// Every file and symbolic link under `dir`: relative path -> bytes, `<dir>` for a directory,
/// `link to X` for a link.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_symlink() {
                out.insert(rel, format!("link to {}", std::fs::read_link(&p).unwrap().display()).into_bytes());
            } else if meta.is_dir() {
                out.insert(rel.clone(), b"<dir>".to_vec());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `dir` with a user's files in it: notes.txt and photos/cat.jpg.
pub fn foreign_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    std::fs::write(dir.join("notes.txt"), "my notes, not pdiff's").unwrap();
    std::fs::write(dir.join("photos/cat.jpg"), [0xffu8, 0xd8, 0xff, 0xe0]).unwrap();
    dir.to_path_buf()
}

/// No staging, aside or temporary entry left in `dir` (the parent of an output, or the output).
pub fn assert_no_leftovers(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-") || n.starts_with(".pdiff-staging-"))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

/// Nothing at `out` and no temporary leftovers next to it.
pub fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} must not exist", out.display());
    assert_no_leftovers(out.parent().unwrap());
}

/// A command-line run that failed cleanly: exit status 1 (never a panic, an abort or a signal),
/// and an error message that mentions each of `words`.
pub fn assert_error(o: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected a clean error (exit 1), got {:?}; stderr: {err}", o.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    for w in words {
        assert!(err.contains(w), "error should mention {w:?}: {err}");
    }
}
