//! Bundles: the refusal of tampered files, unknown format versions, inconsistent or missing
//! manifests. Exporting one is pdiff-train's (crates/train/tests/bundle_export.rs).
use pdiff_core::bundle;
use pdiff_core::Error;
use pdiff_test_support::copy_fixture;

#[test]
fn damage_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(&tmp.path().join("bundle"));
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
