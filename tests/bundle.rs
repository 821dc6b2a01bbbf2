//! Bundles: the manifest a trained generator exports, its hashes, reloading, and the refusal of
//! tampered files, unknown format versions, inconsistent or missing manifests.
mod common;
use common::fixture_copy;
use pdiff::bundle;
use pdiff::Error;
#[cfg(feature = "train")]
use {
    common::*,
    pdiff::{diffusion::Schedule, train::{DeviceChoice, Generator}},
};


#[cfg(feature = "train")]
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

#[test]
fn damage_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_copy(tmp.path());
    let d = bundle::load_manifest(&dir).unwrap().param_count;

    // Tampering with a weight file is detected by its hash.
    let ae = dir.join(bundle::AE_WEIGHTS);
    let mut bytes = std::fs::read(&ae).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&ae, &bytes).unwrap();
    match bundle::load_manifest(&dir) {
        Err(e @ Error::Bundle { .. }) => {
            let s = e.to_string();
            assert!(s.contains("sha256") && s.contains(bundle::AE_WEIGHTS), "{s}");
        }
        other => panic!("expected Error::Bundle, got {other:?}"),
    }
    bytes[at] ^= 0x01;
    std::fs::write(&ae, &bytes).unwrap();
    bundle::load_manifest(&dir).unwrap();

    // A manifest written before the health fields existed (the fixture's) reads as no warning
    // and an unknown spread.
    let m = bundle::load_manifest(&dir).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(bundle::MANIFEST)).unwrap()).unwrap();
    assert!(raw.get("warnings").is_none() && raw["history"].get("checkpoint_variance").is_none());
    assert!(m.warnings.is_empty());
    assert_eq!(m.history.reconstruction_ratio(), None);

    // An unknown format version is refused before anything else.
    let mpath = dir.join(bundle::MANIFEST);
    let original = std::fs::read(&mpath).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&original).unwrap();
    json["format_version"] = serde_json::json!(99);
    std::fs::write(&mpath, serde_json::to_vec(&json).unwrap()).unwrap();
    match bundle::load_manifest(&dir) {
        Err(e @ Error::Bundle { .. }) => assert!(e.to_string().contains("format_version 99"), "{e}"),
        other => panic!("expected Error::Bundle, got {other:?}"),
    }
    // A manifest whose param_count disagrees with its layout.
    json["format_version"] = serde_json::json!(1);
    json["param_count"] = serde_json::json!(d + 1);
    std::fs::write(&mpath, serde_json::to_vec(&json).unwrap()).unwrap();
    match bundle::load_manifest(&dir) {
        Err(e @ Error::Bundle { .. }) => assert!(e.to_string().contains("param_count"), "{e}"),
        other => panic!("expected Error::Bundle, got {other:?}"),
    }
    // A schedule of absurd length (found by the bundle_dir fuzzer): sampling would allocate
    // tables of T values, and an allocation of 5.6e17 bytes aborted the host process.
    json["param_count"] = serde_json::json!(d);
    json["schedule"]["timesteps"] = serde_json::json!(70_000_000_000_000_000u64);
    std::fs::write(&mpath, serde_json::to_vec(&json).unwrap()).unwrap();
    match bundle::load_manifest(&dir) {
        Err(e @ Error::Bundle { .. }) => {
            let s = e.to_string();
            assert!(s.contains("schedule.timesteps") && s.contains("70000000000000000"), "{s}");
        }
        other => panic!("expected Error::Bundle, got {:?}", other.map(|m| m.schedule)),
    }
    // A missing manifest, and a path that is not a directory.
    std::fs::remove_file(&mpath).unwrap();
    assert!(matches!(bundle::load_manifest(&dir), Err(Error::Bundle { .. })));
    assert!(matches!(bundle::load_manifest(&ae), Err(Error::Bundle { .. })));
}
