//! Serving bundles with ONNX Runtime: errors and thread safety on a committed fixture bundle
//! (no libtorch needed: these run in the serve-only build too), and, with feature `train`,
//! export parity (the graphs run by ONNX Runtime agree with the tch networks for both presets;
//! the shared sampler loop gives the same parameters on both backends).
use ndarray::Array2;
use pdiff::diffusion::{DecoderBackend, DenoiserBackend, SamplerKind};
use pdiff::runtime::{Provider, RuntimeOptions, Sampler};
use std::path::{Path, PathBuf};
#[cfg(feature = "train")]
use {
    pdiff::diffusion::sample_params,
    pdiff::model::{AutoencoderConfig, ConvSpec, DenoiserConfig, Preset},
    pdiff::params::{Layout, ParamSet},
    pdiff::train::{DeviceChoice, Generator, TrainConfig},
    rand::{Rng, SeedableRng},
};

/// tests/fixtures/tiny-bundle: a bundle of a tiny generator (D = 144, latent 16, written by
/// `regenerate_fixture_bundle` below), so that serving is tested without training anything.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bundle")
}

/// A copy of the fixture in a temporary directory, to damage.
fn fixture_copy(dir: &Path) -> PathBuf {
    let b = dir.join("b");
    std::fs::create_dir(&b).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
    }
    b
}

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
}

#[cfg(feature = "train")]
fn synthetic_set(k: usize) -> ParamSet {
    let layout = Layout::from_shapes(&[("net.w", vec![6, 20]), ("net.b", vec![6]), ("head.w", vec![3, 6])]).unwrap();
    let d = layout.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let base: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut data = Vec::with_capacity(k * d);
    for _ in 0..k {
        data.extend(base.iter().map(|b| b + rng.random_range(-0.05..0.05)));
    }
    ParamSet::from_rows(layout, data, (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap()
}

#[cfg(feature = "train")]
fn train(preset: Preset) -> Generator {
    // One libtorch thread per test: the tests run in parallel on a 2-core machine.
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(preset);
    c.ae_steps = 10;
    c.diffusion_steps = 10;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    Generator::train(&synthetic_set(6), &c, &mut |_| true).unwrap()
}

#[cfg(feature = "train")]
fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[cfg(feature = "train")]
fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-2.0..2.0))
}

#[cfg(feature = "train")]
fn check_preset(preset: Preset) {
    let g = train(preset);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    g.export_bundle(&bundle).unwrap();
    let sampler = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    assert_eq!(sampler.backend_name(), "onnxruntime-cpu");
    let d = g.latent_dim();

    // Denoiser and decoder on random inputs, several batch sizes (dynamic batch dimension).
    for (b, seed) in [(1usize, 3u64), (5, 4), (17, 5)] {
        let x = random(b, d, seed);
        let t: Vec<i64> = (0..b as i64).map(|i| (i * 97) % 1000).collect();
        let eps_tch = g.tch_denoiser().predict_noise(x.view(), &t).unwrap();
        let eps_ort = sampler.predict_noise(x.view(), &t).unwrap();
        let r = max_rel_diff(&eps_tch, &eps_ort);
        assert!(r < 1e-4, "{preset}: denoiser relative difference {r}");
        let p_tch = g.tch_decoder().decode(x.view()).unwrap();
        let p_ort = sampler.decode(x.view()).unwrap();
        let r = max_rel_diff(&p_tch, &p_ort);
        assert!(r < 1e-4, "{preset}: decoder relative difference {r}");
        assert_eq!(p_ort.ncols(), g.layout.param_count());
    }

    // The same seed gives the same parameters on both backends (shared sampler loop).
    for kind in [SamplerKind::Ddim { steps: 20 }, SamplerKind::Ddpm] {
        let a = sample_params(&g.tch_denoiser(), &g.tch_decoder(), &g.config.schedule, kind, 4, 11, &mut |_, _| true).unwrap();
        let b = sampler.sample(4, 11, kind, &mut |_, _| true).unwrap();
        let r = max_rel_diff(&a, &b);
        assert!(r < 1e-3, "{preset} {kind:?}: generated parameters differ by {r}");
    }
}

#[cfg(feature = "train")]
#[test]
fn compact_preset_onnx_matches_tch() {
    check_preset(Preset::Compact);
}

#[cfg(feature = "train")]
#[test]
fn paper_preset_onnx_matches_tch() {
    check_preset(Preset::Paper);
}

#[test]
fn runtime_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fixture_copy(dir.path());
    let cpu = cpu();

    // CUDA explicitly required on a runtime without it: an error, never a silent fallback.
    if !pdiff::runtime::cuda_available(&cpu).unwrap() {
        let err = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cuda, ..Default::default() }).err().unwrap();
        assert!(matches!(err, pdiff::Error::DeviceUnavailable(_)), "{err}");
        assert!(err.to_string().contains("CUDA"), "{err}");
        // Auto falls back to the CPU and says so.
        let s = Sampler::open(&bundle, &RuntimeOptions::default()).unwrap();
        assert_eq!(s.backend_name(), "onnxruntime-cpu");
    }

    // Wrong input shapes.
    let s = Sampler::open(&bundle, &cpu).unwrap();
    let latent_dim = s.manifest().latent_dim;
    let bad = Array2::<f32>::zeros((2, latent_dim + 1));
    let err = s.predict_noise(bad.view(), &[0, 0]).err().unwrap();
    assert!(err.to_string().contains("denoiser input"), "{err}");
    let err = s.decode(bad.view()).err().unwrap();
    assert!(err.to_string().contains("decoder input"), "{err}");
    let err = s.predict_noise(Array2::<f32>::zeros((2, latent_dim)).view(), &[0]).err().unwrap();
    assert!(err.to_string().contains("t [1]"), "{err}");
    // Caller buffer too small.
    let mut buf = vec![0f32; 3];
    let err = s.sample_into(2, 0, SamplerKind::Ddim { steps: 5 }, &mut buf, &mut |_, _| true).err().unwrap();
    assert!(err.to_string().contains("needed"), "{err}");

    // Missing and corrupt graph files.
    std::fs::remove_file(bundle.join("denoiser.onnx")).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(matches!(err, pdiff::Error::Bundle { .. }) && err.to_string().contains("denoiser.onnx"), "{err}");
    std::fs::copy(fixture().join("denoiser.onnx"), bundle.join("denoiser.onnx")).unwrap();
    Sampler::open(&bundle, &cpu).unwrap();
    let mut bytes = std::fs::read(bundle.join("decoder.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(bundle.join("decoder.onnx"), &bytes).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(err.to_string().contains("decoder.onnx") && err.to_string().contains("sha256"), "{err}");

    // Runtime library not found.
    let err = pdiff::runtime::library_path(Some(std::path::Path::new("/nonexistent/libonnxruntime.so"))).err().unwrap();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn sampler_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Sampler>();
    let s = std::sync::Arc::new(Sampler::open(&fixture(), &cpu()).unwrap());
    let kind = SamplerKind::Ddim { steps: 10 };
    let sequential: Vec<Array2<f32>> = (0..8).map(|seed| s.sample(2, seed, kind, &mut |_, _| true).unwrap()).collect();
    let handles: Vec<_> = (0..8u64)
        .map(|seed| {
            let s = s.clone();
            std::thread::spawn(move || s.sample(2, seed, kind, &mut |_, _| true).unwrap())
        })
        .collect();
    for (seed, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), sequential[seed], "seed {seed}");
    }
}

/// Rewrite tests/fixtures/tiny-bundle (run by hand when the bundle format changes):
/// `cargo test --release --test runtime -- --ignored regenerate_fixture_bundle`.
#[cfg(feature = "train")]
#[test]
#[ignore]
fn regenerate_fixture_bundle() {
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 200;
    c.diffusion_steps = 300;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.autoencoder = Some(AutoencoderConfig {
        encoder: vec![ConvSpec { channels: 4, kernel: 8, stride: 8, padding: 0 }, ConvSpec { channels: 8, kernel: 8, stride: 8, padding: 0 }],
        decoder_channels: vec![4, 1],
        final_kernel: None,
        latent_dim: 16,
    });
    c.denoiser = Some(DenoiserConfig::Mlp { hidden: 32, blocks: 1, time_dim: 16 });
    let g = Generator::train(&synthetic_set(12), &c, &mut |_| true).unwrap();
    g.export_bundle(&fixture()).unwrap();
}
