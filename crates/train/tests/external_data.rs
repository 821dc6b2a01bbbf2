//! Large graphs: a graph too large for one ONNX protobuf keeps its initializers' bytes in an
//! external data file (docs/bundle-format.md, "External data"). The threshold is lowered here so
//! that small bundles take that path: they must sample exactly as the inline bundle does, and
//! every way a data file or a reference to it can be wrong is refused, naming the file.
mod common;
use common::torch_lock;
use pdiff_core::bundle::{self, ExportOptions};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::training::DeviceChoice;
use pdiff_core::Error;
use pdiff_test_support::{bits, fixture};
use pdiff_train::Generator;
use std::path::{Path, PathBuf};

fn cpu(whole_loop: Option<bool>) -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), whole_loop, ..Default::default() }
}

/// The fixture's generator exported with `limit` as the largest inline graph.
fn export(dir: &Path, limit: u64) -> PathBuf {
    let g = {
        let _guard = torch_lock();
        Generator::load_bundle(&fixture(), DeviceChoice::Cpu).unwrap()
    };
    let out = dir.join(format!("bundle-{limit}"));
    g.export_bundle_opts(&out, &ExportOptions { inline_graph_limit: limit, ..Default::default() }).unwrap();
    out
}

fn bundle_err<T>(r: pdiff_core::Result<T>) -> String {
    match r {
        Err(e @ Error::Bundle { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Bundle, got {e}"),
        Ok(_) => panic!("expected Error::Bundle, got success"),
    }
}

#[test]
fn external_data_bundles_sample_like_inline_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let inline = export(tmp.path(), bundle::PROTOBUF_LIMIT);
    let all_external = export(tmp.path(), 0);
    let m1 = bundle::load_manifest(&inline).unwrap();
    let m2 = bundle::load_manifest(&all_external).unwrap();
    assert_eq!(m1.format_version, 1);
    assert!(!m1.files.keys().any(|r| r.ends_with("_data")), "{:?}", m1.files);
    assert_eq!(m2.format_version, 2);
    for role in ["decoder", "denoiser", "sampler"] {
        let data = &m2.files[&format!("{role}_data")];
        assert_eq!(data, &format!("{}.data", m2.files[role]));
        // The manifest's hash covers the data file; the graph shrank to its nodes.
        assert_eq!(m2.sha256[data], bundle::sha256_hex(&std::fs::read(all_external.join(data)).unwrap()));
        let small = std::fs::metadata(all_external.join(&m2.files[role])).unwrap().len();
        let big = std::fs::metadata(inline.join(&m1.files[role])).unwrap().len();
        assert!(small < big, "{role}: {small} bytes with external data, {big} inline");
        // Every tensor starts on a 4096-byte boundary.
        let refs = pdiff_core::external_data::scan(&std::fs::read(all_external.join(&m2.files[role])).unwrap()).unwrap();
        assert!(!refs.is_empty() && refs.iter().all(|r| r.offset % 4096 == 0 && r.location == *data), "{refs:?}");
    }
    // A limit between the two: only the largest initializers move out, until the graph fits.
    let denoiser_inline = std::fs::metadata(inline.join("denoiser.onnx")).unwrap().len();
    let partial = export(tmp.path(), denoiser_inline / 2);
    let m3 = bundle::load_manifest(&partial).unwrap();
    let part = pdiff_core::external_data::scan(&std::fs::read(partial.join("denoiser.onnx")).unwrap()).unwrap();
    let all = pdiff_core::external_data::scan(&std::fs::read(all_external.join("denoiser.onnx")).unwrap()).unwrap();
    assert!(!part.is_empty() && part.len() < all.len(), "{} of {} tensors external", part.len(), all.len());
    assert!(std::fs::metadata(partial.join("denoiser.onnx")).unwrap().len() <= denoiser_inline / 2);
    assert_eq!(m3.format_version, 2);

    // The same models, bit for bit, step by step and as one graph. The test's working directory
    // holds no data file: ONNX Runtime gets the data from memory.
    assert!(!Path::new("decoder.onnx.data").exists());
    for whole_loop in [Some(false), Some(true)] {
        let want = Sampler::open(&inline, &cpu(whole_loop))
            .unwrap()
            .sample(&SampleRequest::new(3).seed(7).sampler(SamplerKind::Ddim { steps: 10 }), &mut no_progress)
            .unwrap()
            .params;
        for b in [&all_external, &partial] {
            let s = Sampler::open(b, &cpu(whole_loop)).unwrap();
            assert_eq!(s.runs_whole_loop(), whole_loop == Some(true));
            let got = s.sample(&SampleRequest::new(3).seed(7).sampler(SamplerKind::Ddim { steps: 10 }), &mut no_progress).unwrap().params;
            assert_eq!(bits(got.as_slice().unwrap()), bits(want.as_slice().unwrap()), "{b:?} whole_loop {whole_loop:?}");
        }
    }
    // Re-exporting a bundle with external data gives back the inline one.
    let g = {
        let _guard = torch_lock();
        Generator::load_bundle(&all_external, DeviceChoice::Cpu).unwrap()
    };
    let again = tmp.path().join("again");
    g.export_bundle(&again).unwrap();
    for f in ["decoder.onnx", "denoiser.onnx", "sampler.onnx"] {
        assert_eq!(std::fs::read(again.join(f)).unwrap(), std::fs::read(inline.join(f)).unwrap(), "{f}");
    }
}

/// A copy of `src` whose manifest is edited by `edit` (with the sha256 of `rehash` recomputed).
fn copy_with(src: &Path, dst: &Path, edit: impl FnOnce(&Path, &mut serde_json::Value), rehash: &[&str]) -> PathBuf {
    std::fs::create_dir(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let mpath = dst.join(bundle::MANIFEST);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    edit(dst, &mut m);
    for f in rehash {
        m["sha256"][*f] = serde_json::json!(bundle::sha256_hex(&std::fs::read(dst.join(f)).unwrap()));
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    dst.to_path_buf()
}

#[test]
fn bad_external_data_is_refused_with_the_file_named() {
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let good = export(tmp.path(), 0);
    let open = |b: &Path| Sampler::open(b, &cpu(Some(false)));
    let data = "decoder.onnx.data";

    // Tampered: one byte changed.
    let b = copy_with(
        &good,
        &tmp.path().join("tampered"),
        |d, _| {
            let mut bytes = std::fs::read(d.join(data)).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(d.join(data), bytes).unwrap();
        },
        &[],
    );
    for e in [bundle_err(open(&b)), bundle_err(bundle::load_manifest(&b))] {
        assert!(e.contains(data) && e.contains("sha256 mismatch"), "{e}");
    }
    // Missing.
    let b = copy_with(&good, &tmp.path().join("missing"), |d, _| std::fs::remove_file(d.join(data)).unwrap(), &[]);
    let e = bundle_err(open(&b));
    assert!(e.contains(data) && e.contains("No such file"), "{e}");
    // Shorter than the graph needs (hash recomputed: a consistent but wrong bundle).
    let b = copy_with(
        &good,
        &tmp.path().join("short"),
        |d, _| {
            let bytes = std::fs::read(d.join(data)).unwrap();
            std::fs::write(d.join(data), &bytes[..bytes.len() - 4]).unwrap();
        },
        &[data],
    );
    let e = bundle_err(open(&b));
    assert!(e.contains(data) && e.contains("needs bytes") && e.contains("tensor '"), "{e}");
    // Longer than the graph references: refused before it is read.
    let b = copy_with(
        &good,
        &tmp.path().join("long"),
        |d, _| {
            let mut bytes = std::fs::read(d.join(data)).unwrap();
            bytes.extend_from_slice(&[0; 16]);
            std::fs::write(d.join(data), bytes).unwrap();
        },
        &[data],
    );
    let e = bundle_err(open(&b));
    assert!(e.contains(data) && e.contains("more than") && e.contains("decoder.onnx references"), "{e}");
    // The manifest does not list the data file.
    let b = copy_with(
        &good,
        &tmp.path().join("unlisted"),
        |_, m| {
            m["files"].as_object_mut().unwrap().remove("decoder_data");
        },
        &[],
    );
    let e = bundle_err(open(&b));
    assert!(e.contains("decoder.onnx") && e.contains("files.decoder_data") && e.contains(data), "{e}");
    // External data in a bundle that says format_version 1 (which older readers would load).
    let b = copy_with(&good, &tmp.path().join("v1"), |_, m| m["format_version"] = serde_json::json!(1), &[]);
    let e = bundle_err(open(&b));
    assert!(e.contains("files.decoder_data") && e.contains("format_version 2"), "{e}");
    // A graph whose initializer points outside the bundle (or at another file of it), hashes
    // recomputed: refused before ONNX Runtime sees the graph.
    for (name, location) in [("escape", "../outside.data"), ("absolute", "/etc/passwd"), ("other", "denoiser.onnx.data")] {
        let b = copy_with(
            &good,
            &tmp.path().join(name),
            |d, _| {
                let path = d.join("decoder.onnx");
                let mut model = pdiff_train::onnx::proto::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
                let t = model.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
                t.external_data.iter_mut().find(|e| e.key.as_deref() == Some("location")).unwrap().value = Some(location.into());
                std::fs::write(&path, model.encode_to_vec()).unwrap();
            },
            &["decoder.onnx"],
        );
        let e = bundle_err(open(&b));
        assert!(e.contains("decoder.onnx") && e.contains(&format!("'{location}'")) && e.contains("not decoder's data file"), "{e}");
    }
    // A graph that lost its external data (inline again) while the manifest still lists it.
    let b = copy_with(
        &good,
        &tmp.path().join("stale"),
        |d, _| {
            std::fs::copy(export(tmp.path(), bundle::PROTOBUF_LIMIT).join("decoder.onnx"), d.join("decoder.onnx")).unwrap();
        },
        &["decoder.onnx"],
    );
    let e = bundle_err(open(&b));
    assert!(e.contains("files.decoder_data") && e.contains("references none"), "{e}");
    // A graph with external data given to the bare graph loader (the fuzzer's path): refused.
    let bytes = std::fs::read(good.join("decoder.onnx")).unwrap();
    let e = pdiff_core::runtime::load_graph(&bytes, &cpu(None)).err().unwrap().to_string();
    // (scripts/fuzz.sh expects these words from the onnx_graph seed external-data-decoder.onnx)
    assert!(e.contains("keeps its data in external file 'decoder.onnx.data', which is not given"), "{e}");
    let seed = std::fs::read(pdiff_test_support::repo_root().join("fuzz/corpus/onnx_graph/external-data-decoder.onnx")).unwrap();
    let e = pdiff_core::runtime::load_graph(&seed, &cpu(None)).err().unwrap().to_string();
    assert!(e.contains("keeps its data in external file 'decoder.onnx.data', which is not given"), "{e}");
}
