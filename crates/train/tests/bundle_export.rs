//! A trained generator's bundle: the manifest it exports (configuration, history, health),
//! reloading it on tch, and sampling the same models from the bundle as from the generator.
mod common;
use common::{sample, torch_lock, train};
use pdiff_core::bundle;
use pdiff_core::diffusion::Schedule;
use pdiff_core::training::DeviceChoice;
use pdiff_test_support::{bits, copy_fixture, fixture, small_config, trajectory_set};
use pdiff_train::Generator;

#[test]
fn export_and_reload() {
    let set = trajectory_set();
    let d = set.layout.param_count();
    let (g, _) = train(&set, &small_config(0));
    let a = sample(&g, 5, 11);

    // Export, load the manifest, reload the generator.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let saved = g.export_bundle(&dir).unwrap();
    let m = bundle::load_manifest(&dir).unwrap();
    assert_eq!(m.format_version, 1);
    assert_eq!(m.param_count, d);
    assert_eq!(m.latent_dim, 64);
    assert_eq!(m.padded_len, 64);
    assert_eq!(m.layout.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a.weight", "a.bias"]);
    assert_eq!(m.layout(), set.layout);
    assert_eq!(m.latent.mean, g.latent_mean);
    assert_eq!(m.latent.std, g.latent_std);
    assert_eq!(m.schedule, Schedule::default());
    assert_eq!(m.sources, set.sources);
    let cfg = small_config(0);
    assert_eq!((m.training.ae_steps, m.training.diffusion_steps, m.training.batch_size), (30, 30, 4));
    assert_eq!((m.training.seed, m.training.device, m.training.preset), (cfg.seed, cfg.device, cfg.preset));
    assert_eq!(m.sha256, saved.sha256);
    // Health: the warnings and the spread the reconstruction error is judged against.
    assert_eq!(m.warnings, g.warnings);
    assert!(!m.warnings.is_empty() && m.warnings[0].starts_with("K = 8 checkpoints is few"), "{:?}", m.warnings);
    // (serde_json reads f64 to within an ulp, not always exactly)
    let v = set.checkpoint_variance();
    assert!((m.history.checkpoint_variance - v).abs() <= 1e-12 * v, "{} vs {v}", m.history.checkpoint_variance);
    for f in [bundle::AE_WEIGHTS, bundle::DENOISER_WEIGHTS, bundle::DECODER_ONNX, bundle::DENOISER_ONNX] {
        let hex = &m.sha256[f];
        assert_eq!(hex, &bundle::sha256_hex(&std::fs::read(dir.join(f)).unwrap()), "{f}");
        assert_eq!(hex.len(), 64);
    }
    // No temporary directories left next to the bundle.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bundle")]);

    let g2 = {
        let _guard = torch_lock();
        Generator::load_bundle(&dir, DeviceChoice::Cpu).unwrap()
    };
    assert_eq!(g2.warnings, g.warnings);
    let a2 = sample(&g2, 5, 11);
    assert_eq!(bits(a2.as_slice().unwrap()), bits(a.as_slice().unwrap()), "the reloaded generator samples the same parameters");
}

/// A manifest whose fields describe networks far larger than the weights it ships (within every
/// per-field bound) is refused before libtorch allocates anything, naming the field.
#[test]
fn manifest_fields_that_size_the_networks_are_checked_against_the_weights() {
    let _guard = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    for (field, value, named) in [("hidden", 65536, "denoiser.hidden"), ("blocks", 64, "denoiser.blocks")] {
        let b = copy_fixture(&tmp.path().join(field));
        let path = b.join("pdiff.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["denoiser"][field] = serde_json::json!(value);
        if field == "blocks" {
            m["denoiser"]["hidden"] = serde_json::json!(4096);
        }
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = Generator::load_bundle(&b, DeviceChoice::Cpu).err().expect("refused").to_string();
        assert!(e.contains(named) && e.contains("weight files hold"), "{field}: {e}");
    }
    // The fixture itself loads.
    Generator::load_bundle(&fixture(), DeviceChoice::Cpu).unwrap();
}
