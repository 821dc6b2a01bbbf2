//! The chunked (tokenized) generator of the `chunked` preset: its token map, the automatic
//! preset choice, a generator whose trained size grows sublinearly in D, and a small-D training
//! that learns (reconstruction well under the checkpoints' spread) and round-trips through a
//! bundle. ONNX parity with tch is in tests/runtime.rs (`chunked_preset_onnx_matches_tch`).
//!
//! The token map and the preset choice need no libtorch (they also run in the serve-only build);
//! the rest trains, with feature `train`.
mod common;
use pdiff::model::{auto_chunk_len, Preset, TokenMap, AUTO_CHUNKED_MIN_PARAMS};
use pdiff::params::Layout;
#[cfg(feature = "train")]
use {
    common::torch_lock,
    pdiff::model::{AutoencoderConfig, DenoiserConfig, CHUNKED_COMPONENTS},
    pdiff::params::{synthetic_trajectory, ParamSet},
    pdiff::train::{DeviceChoice, Generator, TrainConfig},
};

#[test]
fn tokens_follow_rows_and_cover_every_parameter_once() {
    // Rows of 10 (one token each), a row of 150 (cut into 64 + 64 + 22), a bias of 3.
    let layout = Layout::from_shapes(&[("a.w", vec![2, 10]), ("b.w", vec![1, 3, 50]), ("b.b", vec![3])]).unwrap();
    let m = TokenMap::new(&layout, 64);
    assert_eq!(m.offset, vec![0, 10, 20, 84, 148, 170]);
    assert_eq!(m.len, vec![10, 10, 64, 64, 22, 3]);
    assert_eq!(m.grid_len(), 6 * 64);
    let grid = m.grid_index();
    let mask = m.slot_mask();
    let flat = m.flat_index();
    assert_eq!(flat.len(), layout.param_count());
    // flat -> grid -> flat is the identity, and every slot that holds a parameter is unmasked.
    for (p, &slot) in flat.iter().enumerate() {
        assert_eq!(grid[slot as usize], p as i64);
        assert_eq!(mask[slot as usize], 1.0);
    }
    assert_eq!(mask.iter().filter(|&&v| v == 1.0).count(), layout.param_count());
}

#[test]
fn the_preset_follows_d_when_none_is_given() {
    assert_eq!(Preset::auto(13_002), Preset::Compact, "mnist-mlp3 keeps its preset");
    assert_eq!(Preset::auto(AUTO_CHUNKED_MIN_PARAMS - 1), Preset::Compact);
    assert_eq!(Preset::auto(AUTO_CHUNKED_MIN_PARAMS), Preset::Chunked);
    assert_eq!(Preset::auto(936_330), Preset::Chunked);
    assert_eq!("chunked".parse::<Preset>().unwrap(), Preset::Chunked);
    // Token length ~ sqrt(D), as a power of two in [64, 1024].
    assert_eq!(auto_chunk_len(100), 64);
    assert_eq!(auto_chunk_len(100_000), 512);
    assert_eq!(auto_chunk_len(936_330), 1024);
    assert_eq!(auto_chunk_len(100_000_000), 1024);
}

#[cfg(feature = "train")]
fn trajectory(layout: Layout, k: usize, seed: u64) -> ParamSet {
    // What consecutive checkpoints of one training run look like (rows of a tensor drifting
    // along shared directions), at the scale of unit-range weights.
    synthetic_trajectory(layout, k, 1.0, seed).unwrap()
}

#[cfg(feature = "train")]
#[test]
fn generator_size_grows_sublinearly_in_d() {
    let _guard = torch_lock();
    let mut sizes = Vec::new();
    for (rows, cols) in [(100, 100), (1000, 1000)] {
        let layout = Layout::from_shapes(&[("fc.weight", vec![rows, cols]), ("fc.bias", vec![rows])]).unwrap();
        let d = layout.param_count();
        let mut c = TrainConfig::new(Preset::auto(d));
        assert_eq!(c.preset, if d < AUTO_CHUNKED_MIN_PARAMS { Preset::Compact } else { Preset::Chunked });
        c.preset = Preset::Chunked;
        c.ae_steps = 1;
        c.diffusion_steps = 1;
        c.device = DeviceChoice::Cpu;
        let g = Generator::train(&trajectory(layout, 2, 0), &c, &mut |_| true).unwrap();
        let (ae, den) = g.parameter_counts();
        // The anchor (D values), one scale per token, and the principal basis (components x
        // the token latent's length) with its mean are data, not trained parameters.
        let spec = g.ae_config.chunked.clone().unwrap();
        let token_latent = TokenMap::new(&g.layout, spec.chunk as usize).tokens() * spec.token_dim as usize;
        assert_eq!(spec.components, 1, "2 checkpoints span one direction");
        assert_eq!(g.latent_dim(), 1);
        assert_eq!(g.fixed_values(), d + token_latent / 4 + (spec.components as usize + 1) * token_latent);
        sizes.push((d, ae + den));
    }
    let (d_small, p_small) = sizes[0];
    let (d_large, p_large) = sizes[1];
    assert_eq!(d_large, 1_001_000);
    assert!((p_large as f64) <= 0.10 * d_large as f64, "{p_large} trained parameters at D = {d_large}: more than 10% of D");
    // 100x the parameters, far less than 100x the generator (sqrt(D) growth would be 10x).
    let growth = p_large as f64 / p_small as f64;
    assert!(growth < 0.2 * (d_large as f64 / d_small as f64), "generator grew {growth:.1}x for D x{}", d_large / d_small);
}

#[cfg(feature = "train")]
#[test]
fn chunked_generator_learns_and_round_trips_through_a_bundle() {
    let _guard = torch_lock();
    let layout = Layout::from_shapes(&[("l1.weight", vec![24, 60]), ("l1.bias", vec![24]), ("l2.weight", vec![8, 24]), ("l2.bias", vec![8])]).unwrap();
    let set = trajectory(layout, 40, 1);
    // Tokens: l1 rows (24), l1.bias, l2 rows (8), l2.bias; 4 latent values each.
    let token_latent = (24 + 1 + 8 + 1) * 4;
    // The preset (the diffusion over principal coefficients), and the token-sequence latent
    // of bundles written before principal components (components = 0, tokens denoiser).
    for principal in [true, false] {
        let mut c = TrainConfig::new(Preset::Chunked);
        c.ae_steps = 400;
        c.diffusion_steps = 50;
        c.device = DeviceChoice::Cpu;
        if !principal {
            let mut ae = Preset::Chunked.architecture(set.layout.param_count()).0;
            ae.chunked.as_mut().unwrap().components = 0;
            c.autoencoder = Some(ae);
            c.denoiser = Some(DenoiserConfig::Tokens { token_dim: 4, hidden: 32, blocks: 2, position_dim: 8, time_dim: 32 });
        }
        let g = Generator::train(&set, &c, &mut |_| true).unwrap();
        let ratio = g.history.reconstruction_ratio().unwrap();
        // The untrained decoder gives the mean checkpoint (ratio 1); a trained one keeps most of
        // what distinguishes the checkpoints (two drift directions over 40 checkpoints), and
        // the principal coefficients lose almost none of it.
        assert!(ratio < 0.3, "principal {principal}: reconstruction error {ratio:.3} of the checkpoints' spread");
        assert!(g.warnings.iter().all(|w| !w.contains("reconstructs")), "{:?}", g.warnings);
        let first = g.history.ae_loss[..20].iter().sum::<f32>() / 20.0;
        let last = g.history.ae_loss[380..].iter().sum::<f32>() / 20.0;
        assert!(last < 0.5 * first, "autoencoder loss {first} -> {last}");
        assert_eq!(g.latent_dim(), if principal { CHUNKED_COMPONENTS as usize } else { token_latent });

        let dir = tempfile::tempdir().unwrap();
        let m = g.export_bundle(&dir.path().join("b")).unwrap();
        assert_eq!(m.preset, Preset::Chunked);
        let spec = m.autoencoder.chunked.clone().expect("the manifest describes the chunked autoencoder");
        assert_eq!((spec.chunk, spec.token_dim, spec.components), (64, 4, if principal { CHUNKED_COMPONENTS } else { 0 }));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("b/pdiff.json")).unwrap()).unwrap();
        assert_eq!(json["preset"], "chunked");
        assert_eq!(json["autoencoder"]["chunked"]["chunk"], 64);
        assert_eq!(json["denoiser"]["kind"], if principal { "mlp" } else { "tokens" });
        assert_eq!(json["training"]["target"], if principal { "v" } else { "epsilon" });
        let again = Generator::load_bundle(&dir.path().join("b"), DeviceChoice::Cpu).unwrap();
        let z = g.encode(&set.data[..set.layout.param_count() * 3]).unwrap();
        let z2 = again.encode(&set.data[..set.layout.param_count() * 3]).unwrap();
        assert_eq!(z, z2, "the loaded generator encodes as the trained one");
    }
}

#[cfg(feature = "train")]
#[test]
fn principal_components_follow_k_and_hold_the_trajectory() {
    let _guard = torch_lock();
    let layout = Layout::from_shapes(&[("l1.weight", vec![24, 60]), ("l1.bias", vec![24])]).unwrap();
    // 7 checkpoints span at most 6 directions: the preset's 8 components become 6.
    let set = trajectory(layout, 7, 3);
    let mut c = TrainConfig::new(Preset::Chunked);
    c.ae_steps = 300;
    c.diffusion_steps = 300;
    c.device = DeviceChoice::Cpu;
    let g = Generator::train(&set, &c, &mut |_| true).unwrap();
    assert_eq!(g.ae_config.chunked.as_ref().unwrap().components, 6);
    assert_eq!(g.latent_dim(), 6);
    // The basis rows are orthonormal: the coefficients of a token latent are its coordinates.
    let basis = g.autoencoder_variables()["enc.basis"].shallow_clone();
    let gram = basis.matmul(&basis.tr());
    let off = (gram - tch::Tensor::eye(6, (tch::Kind::Float, tch::Device::Cpu))).abs().max().double_value(&[]);
    assert!(off < 1e-4, "basis rows not orthonormal: {off:.2e}");
    // Samples stay in the training latents' range: the decoder clips almost nothing.
    let z = pdiff::diffusion::sample_latents(&g.tch_denoiser(), &g.config.schedule, pdiff::diffusion::SamplerKind::Ddim { steps: 20 }, 64, 5, &mut |_, _| true).unwrap();
    let outside = pdiff::diffusion::count_outside_clip(z.view(), &g.latent_clip).unwrap();
    assert!(outside.values * 20 < z.len(), "{} of {} sampled values outside the clip bounds", outside.values, z.len());
}

#[cfg(feature = "train")]
#[test]
fn chunked_configurations_are_checked() {
    let _guard = torch_lock();
    let layout = Layout::from_shapes(&[("w", vec![4, 16])]).unwrap();
    let set = trajectory(layout, 4, 2);
    let mut c = TrainConfig::new(Preset::Chunked);
    c.ae_steps = 1;
    c.diffusion_steps = 1;
    c.device = DeviceChoice::Cpu;
    // The tokens denoiser without the chunked autoencoder, and the other way round.
    let tokens_den = DenoiserConfig::Tokens { token_dim: 4, hidden: 8, blocks: 1, position_dim: 4, time_dim: 8 };
    let mut bad = c.clone();
    bad.autoencoder = Some(Preset::Compact.architecture(64).0);
    bad.denoiser = Some(tokens_den.clone());
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("tokens denoiser needs the chunked autoencoder"), "{err}");
    // The token-sequence latent (components = 0) needs the tokens denoiser, and only it.
    let mut sequence: AutoencoderConfig = Preset::Chunked.architecture(64).0;
    sequence.chunked.as_mut().unwrap().components = 0;
    let mut bad = c.clone();
    bad.autoencoder = Some(sequence.clone());
    bad.denoiser = Some(DenoiserConfig::Mlp { hidden: 8, blocks: 1, time_dim: 8 });
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("needs the tokens denoiser"), "{err}");
    let mut bad = c.clone();
    bad.denoiser = Some(tokens_den.clone());
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("principal coefficients") && err.contains("components = 0"), "{err}");
    let mut bad = c.clone();
    let mut ae = sequence.clone();
    ae.chunked.as_mut().unwrap().token_dim = 3;
    bad.autoencoder = Some(ae);
    bad.denoiser = Some(tokens_den);
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("denoiser.token_dim") && err.contains("token_dim is 3"), "{err}");
    let mut bad = c.clone();
    let mut ae = sequence;
    ae.chunked.as_mut().unwrap().components = -1;
    bad.autoencoder = Some(ae);
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("autoencoder.chunked.components") && err.contains("-1"), "{err}");
}
