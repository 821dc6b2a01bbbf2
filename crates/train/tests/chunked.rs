//! The chunked (tokenized) generator of the `chunked` preset: a generator whose trained size
//! grows sublinearly in D, and a small-D training that learns (reconstruction well under the
//! checkpoints' spread) and round-trips through a bundle. Its token map and the preset choice
//! are pdiff-core's (crates/core/tests/chunked.rs); ONNX parity with tch is in onnx_graphs.rs.
mod common;
use common::torch_lock;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::model::{AutoencoderConfig, DenoiserConfig, Preset, TokenMap, AUTO_CHUNKED_MIN_PARAMS, CHUNKED_COMPONENTS};
use pdiff_core::params::{synthetic_trajectory, Layout, ParamSet};
use pdiff_core::training::{DeviceChoice, TrainConfig};
use pdiff_train::Generator;

fn trajectory(layout: Layout, k: usize, seed: u64) -> ParamSet {
    // What consecutive checkpoints of one training run look like (rows of a tensor drifting
    // along shared directions), at the scale of unit-range weights.
    synthetic_trajectory(layout, k, 1.0, seed).unwrap()
}

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

#[test]
fn chunked_generator_learns_and_round_trips_through_a_bundle() {
    let _guard = torch_lock();
    let layout = Layout::from_shapes(&[("l1.weight", vec![24, 60]), ("l1.bias", vec![24]), ("l2.weight", vec![8, 24]), ("l2.bias", vec![8])]).unwrap();
    let set = trajectory(layout, 40, 1);
    let mut c = TrainConfig::new(Preset::Chunked);
    c.ae_steps = 400;
    c.diffusion_steps = 50;
    c.device = DeviceChoice::Cpu;
    {
        let g = Generator::train(&set, &c, &mut |_| true).unwrap();
        let ratio = g.history.reconstruction_ratio().unwrap();
        // The untrained decoder gives the mean checkpoint (ratio 1); a trained one keeps most of
        // what distinguishes the checkpoints (two drift directions over 40 checkpoints), and
        // the principal coefficients lose almost none of it.
        assert!(ratio < 0.3, "reconstruction error {ratio:.3} of the checkpoints' spread");
        assert!(g.warnings.iter().all(|w| !w.contains("reconstructs")), "{:?}", g.warnings);
        let first = g.history.ae_loss[..20].iter().sum::<f32>() / 20.0;
        let last = g.history.ae_loss[380..].iter().sum::<f32>() / 20.0;
        assert!(last < 0.5 * first, "autoencoder loss {first} -> {last}");
        assert_eq!(g.latent_dim(), CHUNKED_COMPONENTS as usize);

        let dir = tempfile::tempdir().unwrap();
        let m = g.export_bundle(&dir.path().join("b")).unwrap();
        assert_eq!(m.preset, Preset::Chunked);
        let spec = m.autoencoder.chunked.clone().expect("the manifest describes the chunked autoencoder");
        assert_eq!((spec.chunk, spec.token_dim, spec.components), (64, 4, CHUNKED_COMPONENTS));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("b/pdiff.json")).unwrap()).unwrap();
        assert_eq!(json["preset"], "chunked");
        assert_eq!(json["autoencoder"]["chunked"]["chunk"], 64);
        assert_eq!(json["denoiser"]["kind"], "mlp");
        assert_eq!(json["training"]["target"], "v");
        let again = Generator::load_bundle(&dir.path().join("b"), DeviceChoice::Cpu).unwrap();
        let z = g.encode(&set.data[..set.layout.param_count() * 3]).unwrap();
        let z2 = again.encode(&set.data[..set.layout.param_count() * 3]).unwrap();
        assert_eq!(z, z2, "the loaded generator encodes as the trained one");
    }
}

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
    let samples = g.sample(&SampleRequest::new(64).seed(5).sampler(SamplerKind::Ddim { steps: 20 }), &mut no_progress).unwrap();
    let values = 64 * g.latent_dim();
    assert!(samples.clipped.values * 20 < values, "{} of {values} sampled values outside the clip bounds", samples.clipped.values);
}

#[test]
fn chunked_configurations_are_checked() {
    let _guard = torch_lock();
    let layout = Layout::from_shapes(&[("w", vec![4, 16])]).unwrap();
    let set = trajectory(layout, 4, 2);
    let mut c = TrainConfig::new(Preset::Chunked);
    c.ae_steps = 1;
    c.diffusion_steps = 1;
    c.device = DeviceChoice::Cpu;
    // Every size of the chunked autoencoder, the principal components included, is at least 1,
    // and the error names the field.
    for field in ["chunk", "hidden", "token_dim", "tokens_per_step", "components"] {
        for v in [0, -1] {
            let mut ae: AutoencoderConfig = Preset::Chunked.architecture(64).0;
            let spec = ae.chunked.as_mut().unwrap();
            *match field {
                "chunk" => &mut spec.chunk,
                "hidden" => &mut spec.hidden,
                "token_dim" => &mut spec.token_dim,
                "tokens_per_step" => &mut spec.tokens_per_step,
                _ => &mut spec.components,
            } = v;
            let mut bad = c.clone();
            bad.autoencoder = Some(ae);
            let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
            assert!(err.contains(&format!("autoencoder.chunked.{field}")) && err.contains(&v.to_string()), "{err}");
        }
    }
    // The denoiser's sizes too.
    let mut bad = c.clone();
    bad.denoiser = Some(DenoiserConfig::Mlp { hidden: 8, blocks: 1, time_dim: 7 });
    let err = Generator::train(&set, &bad, &mut |_| true).err().unwrap().to_string();
    assert!(err.contains("denoiser.time_dim") && err.contains('7'), "{err}");
}
