//! What pdiff-train's tests share beyond pdiff-test-support: libtorch's process-wide state
//! (its RNG and thread count) and a tiny trained generator.
#![allow(dead_code)]
use ndarray::Array2;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::params::ParamSet;
use pdiff_core::training::{Progress, Stage, TrainConfig};
use pdiff_train::Generator;

/// libtorch's RNG is process-global and `cargo test` runs tests on several threads: every
/// operation that seeds or draws from it (training, `Generator::load_bundle`) holds this lock,
/// so reproducibility checks are not disturbed by a concurrent test.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    single_threaded_torch();
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// One intra-op thread (set on the calling thread, as OpenMP keeps it per thread): the networks
/// here are tiny, and several test threads each driving a multi-threaded OpenMP pool on a busy
/// 2-core machine slowed these tests down from ~1 s to over a minute.
pub fn single_threaded_torch() {
    tch::set_num_threads(1);
}

/// Train `config` on `set`, returning the generator and every progress report (stage, step,
/// total).
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

/// `n` models of `g` through libtorch (DDIM, 10 steps).
pub fn sample(g: &Generator, n: usize, seed: u64) -> Array2<f32> {
    single_threaded_torch();
    g.sample(&SampleRequest::new(n).seed(seed).sampler(SamplerKind::Ddim { steps: 10 }), &mut no_progress).unwrap().params
}
