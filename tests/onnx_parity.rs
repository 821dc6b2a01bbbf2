//! ONNX export parity: the exported graphs run by ONNX Runtime agree with the tch networks,
//! for both presets, and the shared sampler loop gives the same parameters on both backends.
use ndarray::Array2;
use pdiff::diffusion::{sample_params, DecoderBackend, DenoiserBackend, SamplerKind};
use pdiff::model::Preset;
use pdiff::params::{Layout, ParamSet};
use pdiff::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff::train::{DeviceChoice, Generator, TrainConfig};
use rand::{Rng, SeedableRng};

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

fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-2.0..2.0))
}

fn check_preset(preset: Preset) {
    let g = train(preset);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    pdiff::bundle::save(&g, &bundle).unwrap();
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

#[test]
fn compact_preset_onnx_matches_tch() {
    check_preset(Preset::Compact);
}

#[test]
fn paper_preset_onnx_matches_tch() {
    check_preset(Preset::Paper);
}

#[test]
fn runtime_errors_are_clear() {
    let g = train(Preset::Compact);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b");
    pdiff::bundle::save(&g, &bundle).unwrap();
    let cpu = RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() };

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
    let bad = Array2::<f32>::zeros((2, g.latent_dim() + 1));
    let err = s.predict_noise(bad.view(), &[0, 0]).err().unwrap();
    assert!(err.to_string().contains("denoiser input"), "{err}");
    let err = s.decode(bad.view()).err().unwrap();
    assert!(err.to_string().contains("decoder input"), "{err}");
    let err = s.predict_noise(Array2::<f32>::zeros((2, g.latent_dim())).view(), &[0]).err().unwrap();
    assert!(err.to_string().contains("t [1]"), "{err}");
    // Caller buffer too small.
    let mut buf = vec![0f32; 3];
    let err = s.sample_into(2, 0, SamplerKind::Ddim { steps: 5 }, &mut buf, &mut |_, _| true).err().unwrap();
    assert!(err.to_string().contains("needed"), "{err}");

    // Missing and corrupt graph files.
    std::fs::remove_file(bundle.join("denoiser.onnx")).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(matches!(err, pdiff::Error::Bundle { .. }) && err.to_string().contains("denoiser.onnx"), "{err}");
    pdiff::bundle::save(&g, &bundle).unwrap();
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
    let g = train(Preset::Compact);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b");
    pdiff::bundle::save(&g, &bundle).unwrap();
    let s = std::sync::Arc::new(Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap());
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
