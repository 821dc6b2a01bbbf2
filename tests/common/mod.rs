//! Helpers shared by the engine's integration tests (each tests/<concept>.rs is its own crate
//! and uses a part of them).
#![allow(dead_code)]
use pdiff::model::Preset;
use pdiff::params::{Layout, ParamSet};
use pdiff::train::{DeviceChoice, TrainConfig};
use pdiff::Error;
#[cfg(feature = "train")]
use {
    ndarray::Array2,
    pdiff::diffusion::{sample_params, SamplerKind},
    pdiff::train::{Generator, Progress, Stage},
};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// tests/fixtures/tiny-bundle: a bundle of a tiny generator (D = 144, latent 16, written by
/// `regenerate_fixture_bundle` in tests/runtime.rs), so that serving is tested without training.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bundle")
}

/// A copy of the fixture at `dir/bundle`, to damage or rewrite.
pub fn fixture_copy(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir(&b).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
    }
    b
}

/// Largest absolute difference between `a` and `b`, relative to the largest |value| of `a`.
pub fn max_rel_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// libtorch's RNG is process-global and `cargo test` runs tests on several threads: every
/// operation that seeds or draws from it (training, `Generator::load_bundle`) holds this lock,
/// so reproducibility checks are not disturbed by a concurrent test.
#[cfg(feature = "train")]
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(feature = "train")]
pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    single_threaded_torch();
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// One intra-op thread (set on the calling thread, as OpenMP keeps it per thread): the networks
/// here are tiny, and several test threads each driving a multi-threaded OpenMP pool on a busy
/// 2-core machine slowed this file down from ~1 s to over a minute.
#[cfg(feature = "train")]
pub fn single_threaded_torch() {
    tch::set_num_threads(1);
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write a safetensors file with arbitrary dtypes (the library only writes f32).
pub fn raw_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// "a.weight" [4, 8] then "a.bias" [4]: D = 36 (deliberately not in alphabetical order).
pub fn small_layout() -> Layout {
    Layout::from_shapes(&[("a.weight", vec![4, 8]), ("a.bias", vec![4])]).unwrap()
}

/// Row `i` of a synthetic trajectory: a fixed base vector plus a small per-row perturbation.
pub fn trajectory_row(i: usize, d: usize) -> Vec<f32> {
    (0..d).map(|j| 0.5 * (j as f32 * 0.37).sin() + 0.02 * ((i * 7 + j * 3) as f32 * 0.61).cos()).collect()
}

/// K good checkpoints of `small_layout()` in `dir`.
pub fn good_checkpoints(dir: &Path, k: usize) -> Vec<PathBuf> {
    let l = small_layout();
    (0..k)
        .map(|i| {
            let p = dir.join(format!("c{i:02}.safetensors"));
            l.save_safetensors(&trajectory_row(i, l.param_count()), &p).unwrap();
            p
        })
        .collect()
}

/// Unpack an `Error::Tensor`, failing the test on any other result.
pub fn tensor_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (PathBuf, String, String, String) {
    match r {
        Err(e @ Error::Tensor { .. }) => {
            let shown = e.to_string();
            let Error::Tensor { file, tensor, message } = e else { unreachable!() };
            (file, tensor, message, shown)
        }
        other => panic!("expected Error::Tensor, got {other:?}"),
    }
}

pub fn checkpoint_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (PathBuf, String, String) {
    match r {
        Err(e @ Error::Checkpoint { .. }) => {
            let shown = e.to_string();
            let Error::Checkpoint { file, message } = e else { unreachable!() };
            (file, message, shown)
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

pub fn invalid_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (String, String) {
    match r {
        Err(Error::InvalidArgument { field, message }) => (field, message),
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// A small trajectory (K = 8 of small_layout) and a training configuration that trains on it in
// well under a second.

pub const K: usize = 8;

pub fn trajectory_set() -> ParamSet {
    let l = small_layout();
    let d = l.param_count();
    let data: Vec<f32> = (0..K).flat_map(|i| trajectory_row(i, d)).collect();
    ParamSet::from_rows(l, data, (0..K).map(|i| format!("epoch{i}")).collect()).unwrap()
}

pub fn small_config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 30;
    c.diffusion_steps = 30;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.seed = seed;
    c
}

#[cfg(feature = "train")]
pub fn train(set: &ParamSet, config: &TrainConfig) -> (Generator, Vec<(Stage, usize, usize)>) {
    let _guard = torch_lock();
    let mut reports = Vec::new();
    let g = Generator::train(set, config, &mut |p: &Progress| {
        assert!(p.loss.is_finite());
        reports.push((p.stage, p.step, p.total));
        true
    })
    .unwrap();
    (g, reports)
}

#[cfg(feature = "train")]
pub fn sample(g: &Generator, n: usize, seed: u64) -> Array2<f32> {
    single_threaded_torch();
    sample_params(&g.tch_denoiser(), &g.tch_decoder(), &g.config.schedule, SamplerKind::Ddim { steps: 10 }, n, seed, &mut |_, _| true).unwrap()
}

