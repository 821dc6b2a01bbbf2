//! Training a generator: progress, losses, latent standardization, tch sampling,
//! reproducibility per seed, cancel and device errors; configuration validation.
mod common;
use common::*;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{ModelSource, SampleRequest};
use pdiff_core::model::Preset;
use pdiff_core::training::{DeviceChoice, Progress, Stage, TrainConfig};
use pdiff_core::Error;
use pdiff_test_support::*;
use pdiff_train::{resolve_device, Generator};

#[test]
fn end_to_end_train_and_sample() {
    let set = trajectory_set();
    let d = set.layout.param_count();
    let (g, reports) = train(&set, &small_config(0));

    // Progress: 30 autoencoder steps then 30 diffusion steps, in order.
    let want: Vec<(Stage, usize, usize)> = (1..=30).map(|s| (Stage::Autoencoder, s, 30)).chain((1..=30).map(|s| (Stage::Diffusion, s, 30))).collect();
    assert_eq!(reports, want);
    assert_eq!(g.history.ae_loss.len(), 30);
    assert_eq!(g.history.diffusion_loss.len(), 30);
    assert!(g.history.ae_loss.iter().chain(&g.history.diffusion_loss).all(|l| l.is_finite() && *l >= 0.0));
    assert!(g.history.final_reconstruction_mse.is_finite());
    let early: f32 = g.history.ae_loss[..5].iter().sum();
    let late: f32 = g.history.ae_loss[25..].iter().sum();
    assert!(late < early, "autoencoder loss should fall: first five {early}, last five {late}");
    assert_eq!(g.layout, set.layout);
    assert_eq!(g.sources, set.sources);
    assert_eq!(g.latent_dim(), 64);
    assert_eq!(g.padded_len, 64);
    assert!(g.latent_std.iter().all(|s| *s >= pdiff_train::LATENT_STD_FLOOR));

    // Encoded training rows are standardized latents: per-dimension mean 0, (population) std 1
    // wherever the dimension varies.
    let z = g.encode(&set.data).unwrap();
    assert_eq!(z.dim(), (K, 64));
    for (j, col) in z.columns().into_iter().enumerate() {
        let mean = col.iter().map(|&v| v as f64).sum::<f64>() / K as f64;
        let std = (col.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / K as f64).sqrt();
        assert!(mean.abs() < 1e-3, "latent dim {j}: mean {mean}");
        if g.latent_std[j] > 1e-3 {
            assert!((std - 1.0).abs() < 1e-3, "latent dim {j}: std {std}");
        }
    }

    // Sampling with the tch backends.
    let a = sample(&g, 5, 11);
    let b = sample(&g, 5, 11);
    let c = sample(&g, 5, 12);
    assert_eq!(a.dim(), (5, d));
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(bits(a.as_slice().unwrap()), bits(b.as_slice().unwrap()), "same seed, same parameters");
    assert_ne!(bits(a.as_slice().unwrap()), bits(c.as_slice().unwrap()), "different seed, different parameters");
    // The 5 samples of one call are not all the same vector.
    assert!(a.rows().into_iter().skip(1).any(|r| r != a.row(0)));
    // Decoded samples are in host units: the same order of magnitude as the training data.
    let data_max = set.data.iter().fold(0f32, |m, x| m.max(x.abs()));
    let sample_max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(sample_max < 100.0 * data_max, "samples {sample_max} vs data {data_max}");
    // A cancel from the sampling callback.
    let r = g.sample(&SampleRequest::new(2).seed(0).sampler(SamplerKind::Ddim { steps: 10 }), &mut |s, _| s < 4);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
}

#[test]
fn training_is_reproducible_per_seed() {
    let set = trajectory_set();
    let (g1, _) = train(&set, &small_config(7));
    let (g2, _) = train(&set, &small_config(7));
    let (g3, _) = train(&set, &small_config(8));
    assert_eq!(g1.history.ae_loss, g2.history.ae_loss);
    assert_eq!(g1.history.diffusion_loss, g2.history.diffusion_loss);
    assert_eq!(bits(&g1.latent_mean), bits(&g2.latent_mean));
    let s1 = sample(&g1, 5, 3);
    let s2 = sample(&g2, 5, 3);
    let s3 = sample(&g3, 5, 3);
    assert_eq!(bits(s1.as_slice().unwrap()), bits(s2.as_slice().unwrap()), "same training seed, same sampled parameters");
    assert_ne!(bits(s1.as_slice().unwrap()), bits(s3.as_slice().unwrap()), "a different training seed gives a different generator");
    assert_ne!(g1.history.ae_loss, g3.history.ae_loss);
}

#[test]
fn training_cancel_and_device_errors() {
    let set = trajectory_set();
    let _guard = torch_lock();
    let mut calls = 0;
    let r = Generator::train(&set, &small_config(0), &mut |p: &Progress| {
        calls += 1;
        !(p.stage == Stage::Diffusion && p.step == 2)
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.err());
    assert_eq!(calls, 32);

    // A CUDA device that does not exist is an error, never a silent CPU fallback.
    let mut c = small_config(0);
    c.device = DeviceChoice::Cuda(99);
    assert!(matches!(Generator::train(&set, &c, &mut |_| true), Err(Error::DeviceUnavailable(_))));
    // An invalid configuration is refused before training.
    c.batch_size = 0;
    assert_eq!(invalid_err(Generator::train(&set, &c, &mut |_| true).map(|_| ())).0, "batch_size");
}

#[test]
fn reconstruction_health_warning() {
    let set = trajectory_set();
    // An autoencoder trained for one step still outputs (nearly) the mean checkpoint: its
    // zero-initialised output layer has barely moved, so its error is the whole spread.
    let mut undertrained = small_config(0);
    undertrained.ae_steps = 1;
    let (g, _) = train(&set, &undertrained);
    let h = &g.history;
    assert_eq!(h.checkpoint_variance, set.checkpoint_variance());
    let ratio = h.reconstruction_ratio().unwrap();
    assert_eq!(ratio, h.final_reconstruction_mse / h.checkpoint_variance);
    assert!((0.8..1.2).contains(&ratio), "one step: reconstruction / spread = {ratio}");
    // The dataset's warning (K = 8 is few) first, then training's.
    assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
    assert_eq!(g.warnings[0], set.warnings[0]);
    assert!(g.warnings[1].starts_with("the autoencoder reconstructs the checkpoints") && g.warnings[1].contains("% of their spread"), "{}", g.warnings[1]);
    assert_eq!(Some(g.warnings[1].clone()), h.reconstruction_warning());

    // Trained long enough, the error is a small fraction of the spread: no training warning.
    let mut trained = small_config(0);
    trained.ae_steps = 300;
    trained.diffusion_steps = 1;
    let (g, _) = train(&set, &trained);
    let ratio = g.history.reconstruction_ratio().unwrap();
    assert!(ratio < pdiff_core::training::RECONSTRUCTION_WARN_RATIO, "300 steps: reconstruction / spread = {ratio}");
    assert_eq!(g.warnings, set.warnings);

    // The threshold itself, on a history alone; an unknown spread (older bundles) warns of nothing.
    let mut h = pdiff_core::training::TrainHistory { final_reconstruction_mse: 1.0, checkpoint_variance: 2.0, ..Default::default() };
    let at = pdiff_core::training::RECONSTRUCTION_WARN_RATIO * 2.0;
    h.final_reconstruction_mse = at;
    assert!(h.reconstruction_warning().is_some());
    h.final_reconstruction_mse = at * 0.999;
    assert!(h.reconstruction_warning().is_none());
    h.checkpoint_variance = 0.0;
    assert_eq!((h.reconstruction_ratio(), h.reconstruction_warning()), (None, None));
}

#[test]
fn memory_check_refuses_absurd_sizes() {
    let mut config = TrainConfig::new(Preset::Compact);
    config.device = pdiff_core::training::DeviceChoice::Cpu;
    pdiff_train::check_memory(36, 8, &config).unwrap();
    let d = 1usize << 36;
    let (field, msg) = invalid_err(pdiff_train::check_memory(d, 200, &config));
    assert_eq!(field, "parameters");
    let need = pdiff_core::training::estimate_training_bytes(d, 200, &config) as f64 / (1u64 << 30) as f64;
    assert!(msg.starts_with(&format!("D = {d}, K = 200 needs about {need:.1} GiB to train but ")), "{msg}");
    assert!(msg.contains("GiB of memory is available"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// 6. Configuration
// ---------------------------------------------------------------------------------------------

/// Several timesteps per drawn latent: the diffusion stage trains on batch x R rows per step
/// (a different run than R = 1, reproducible per seed), and R = 1 is the run without the option.
#[test]
fn timesteps_per_row() {
    let set = trajectory_set();
    let mut c = small_config(5);
    let (base, _) = train(&set, &c);
    c.timesteps_per_row = 1;
    let (one, _) = train(&set, &c);
    assert_eq!(base.history.diffusion_loss, one.history.diffusion_loss);
    c.timesteps_per_row = 4;
    let (four, _) = train(&set, &c);
    let (again, _) = train(&set, &c);
    assert_eq!(four.history.diffusion_loss, again.history.diffusion_loss);
    assert_ne!(four.history.diffusion_loss, base.history.diffusion_loss);
    assert_eq!(four.history.ae_loss, base.history.ae_loss, "the autoencoder does not change");
    assert_eq!(four.history.diffusion_loss.len(), c.diffusion_steps);
    assert!(four.history.diffusion_loss.iter().all(|l| l.is_finite()));
}

/// A training computes with its own thread count (`threads`, or the cores available when 0)
/// and gives the caller's back when it returns.
#[test]
fn training_threads_are_the_runs_own_and_restored() {
    let set = trajectory_set();
    // libtorch keeps the count per calling thread (and a process-wide default): a thread of
    // our own, whose count is put back at the end.
    std::thread::spawn(move || {
        let original = tch::get_num_threads();
        tch::set_num_threads(3);
        for (threads, expected) in [(1, 1), (2, 2), (0, pdiff_train::available_cores())] {
            let mut c = small_config(0);
            c.threads = threads;
            assert_eq!(pdiff_train::training_threads(&c), expected);
            let mut seen = Vec::new();
            Generator::train(&set, &c, &mut |_| {
                seen.push(tch::get_num_threads());
                true
            })
            .unwrap();
            assert!(!seen.is_empty() && seen.iter().all(|&n| n as usize == expected), "threads = {threads}: libtorch used {seen:?}, expected {expected}");
            assert_eq!(tch::get_num_threads(), 3, "the caller's thread count is restored after threads = {threads}");
        }
        tch::set_num_threads(original);
    })
    .join()
    .unwrap();
    assert!(pdiff_train::available_cores() >= 1);
}

#[test]
fn train_config_validation() {
    let base = TrainConfig::new(Preset::Compact);
    base.validate().unwrap();
    TrainConfig::new(Preset::Paper).validate().unwrap();
    let bad = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = base.clone();
        f(&mut c);
        invalid_err(c.validate())
    };
    let (field, msg) = bad(&|c| c.batch_size = 0);
    assert_eq!(field, "batch_size");
    assert!(msg.contains("at least 1"), "{msg}");
    let (field, msg) = bad(&|c| c.ae_lr = -1e-3);
    assert_eq!(field, "ae_lr");
    assert!(msg.contains("-0.001"), "{msg}");
    assert_eq!(bad(&|c| c.ae_lr = 0.0).0, "ae_lr");
    assert_eq!(bad(&|c| c.diffusion_lr = -1.0).0, "diffusion_lr");
    assert_eq!(bad(&|c| c.diffusion_lr = f64::NAN).0, "diffusion_lr");
    assert_eq!(bad(&|c| c.diffusion_lr = f64::INFINITY).0, "diffusion_lr");
    assert_eq!(bad(&|c| c.input_noise = -0.1).0, "input_noise");
    assert_eq!(bad(&|c| c.latent_noise = f64::NAN).0, "latent_noise");
    assert_eq!(bad(&|c| c.weight_decay = -1.0).0, "weight_decay");
    assert_eq!(bad(&|c| c.ema = Some(1.0)).0, "ema");
    assert_eq!(bad(&|c| c.schedule.timesteps = 1).0, "schedule.timesteps");
    assert_eq!(bad(&|c| c.timesteps_per_row = 0).0, "timesteps_per_row");
    assert_eq!(bad(&|c| c.timesteps_per_row = 1025).0, "timesteps_per_row");
    let (field, msg) = bad(&|c| c.threads = 1025);
    assert_eq!(field, "threads");
    assert!(msg.contains("at most 1024"), "{msg}");
    let mut ok = base.clone();
    ok.ema = Some(0.999);
    ok.input_noise = 0.0;
    ok.validate().unwrap();
}

#[test]
fn device_choice_parsing() {
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
    assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
    for s in ["bogus", "cuda:", "cuda:x", "CPU", "gpu", ""] {
        let (field, msg) = invalid_err(s.parse::<DeviceChoice>());
        assert_eq!(field, "device", "{s:?}");
        assert!(msg.contains(&format!("'{s}'")), "{s:?}: {msg}");
    }
}

#[test]
fn device_choice_resolution() {
    assert_eq!(resolve_device(DeviceChoice::Cpu).unwrap(), tch::Device::Cpu);
    let cuda = resolve_device("cuda".parse::<DeviceChoice>().unwrap());
    if tch::Cuda::is_available() {
        assert_eq!(cuda.unwrap(), tch::Device::Cuda(0));
    } else {
        // This CPU-only machine: an explicit CUDA request fails and says why.
        match cuda {
            Err(Error::DeviceUnavailable(m)) => assert!(m.contains("CUDA device 0"), "{m}"),
            other => panic!("expected Error::DeviceUnavailable, got {other:?}"),
        }
        assert_eq!(resolve_device(DeviceChoice::Auto).unwrap(), tch::Device::Cpu);
    }
    assert!(matches!(resolve_device(DeviceChoice::Cuda(99)), Err(Error::DeviceUnavailable(_))));
}

#[test]
fn libtorch_errors_are_errors_not_panics() {
    use pdiff_core::model::{AutoencoderConfig, ConvSpec};
    use tch::{Device, Kind, Tensor};
    // An error raised by libtorch inside the boundary: Error::Torch with libtorch's message.
    let r = pdiff_train::torch_boundary("test stage", || {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
        Ok(a.matmul(&b).size())
    });
    match r {
        Err(Error::Torch(m)) => assert!(m.starts_with("test stage: ") && m.contains("cannot be multiplied"), "{m}"),
        other => panic!("expected Error::Torch, got {other:?}"),
    }
    // A panic that is not libtorch's (a bug of ours) is not disguised as one: it unwinds on.
    let bug = std::panic::catch_unwind(|| pdiff_train::torch_boundary("test stage", || -> pdiff_core::Result<()> { panic!("a bug") }));
    assert!(bug.is_err());
    // The same through training: an autoencoder whose convolution is wider than its input
    // (libtorch refuses it in the first forward pass).
    let mut c = small_config(0);
    c.autoencoder = Some(AutoencoderConfig {
        encoder: vec![ConvSpec { channels: 4, kernel: 128, stride: 1, padding: 0 }],
        decoder_channels: vec![1],
        final_kernel: None,
        latent_dim: 4,
        chunked: None,
    });
    let _guard = torch_lock();
    match Generator::train(&trajectory_set(), &c, &mut |_| true) {
        Err(Error::Torch(m)) => assert!(m.starts_with("training: ") && m.contains("Kernel size"), "{m}"),
        other => panic!("expected Error::Torch, got {:?}", other.map(|_| ())),
    }
}

/// libtorch's RNG is process-wide: trainings started from several threads at once must each
/// give what they give alone (the library runs them one at a time).
#[test]
fn concurrent_trainings_are_each_reproducible() {
    let set = trajectory_set();
    single_threaded_torch();
    let alone: Vec<Vec<f32>> = [5u64, 6]
        .iter()
        .map(|&seed| {
            let g = Generator::train(&set, &small_config(seed), &mut |_| true).unwrap();
            g.history.ae_loss.clone()
        })
        .collect();
    let handles: Vec<_> = [5u64, 6, 5, 6]
        .into_iter()
        .map(|seed| {
            let set = set.clone();
            std::thread::spawn(move || {
                single_threaded_torch();
                Generator::train(&set, &small_config(seed), &mut |_| true).unwrap().history.ae_loss
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), alone[i % 2], "thread {i}");
    }
}
