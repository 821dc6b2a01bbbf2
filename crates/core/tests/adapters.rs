//! ONNX Runtime's adapter format as libpdiff writes it (ONNX Runtime's own reader is
//! tests/python/test_adapters.py): the round trip bit for bit, the identifier where ONNX Runtime
//! looks, `raw_data` 8-aligned, names through a mapping, provenance, and every damaged adapter
//! refused naming what is wrong.
use pdiff_core::adapter::{adapter_size_bound, model_adapter, read_adapter, AdapterVersions, NameMap, DATA_TYPE_FLOAT, FILE_IDENTIFIER, FORMAT_VERSION};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{no_progress, ModelFormat, ModelSource, SampleRequest, WriteOptions, PROVENANCE_FILE};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_test_support::{fixture, invalid_err, small_layout, trajectory_row};

fn adapter_of(row: &[f32]) -> Vec<u8> {
    model_adapter(&small_layout(), row, &NameMap::default(), AdapterVersions { adapter_version: 7, model_version: 3 }).unwrap()
}

#[test]
fn round_trip_is_bit_exact_with_the_layout_names_and_shapes() {
    let layout = small_layout();
    let row = trajectory_row(3, layout.param_count());
    let bytes = adapter_of(&row);
    assert_eq!(&bytes[4..8], FILE_IDENTIFIER.as_bytes(), "the identifier ONNX Runtime checks is at bytes 4..8");
    assert!(bytes.len() <= adapter_size_bound(&layout, &NameMap::default()));
    let a = read_adapter(&bytes, "test").unwrap();
    assert_eq!(a.format_version, FORMAT_VERSION);
    assert_eq!(a.versions, AdapterVersions { adapter_version: 7, model_version: 3 });
    assert_eq!(a.parameters.len(), layout.tensors.len());
    for (p, (t, values)) in a.parameters.iter().zip(layout.split(&row)) {
        assert_eq!(p.name, t.name);
        assert_eq!(p.dims, t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        assert_eq!(p.data_type, DATA_TYPE_FLOAT);
        let want: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(p.raw_data, want, "tensor {}", t.name);
    }
}

#[test]
fn raw_data_starts_8_aligned_for_every_tensor_size() {
    // Odd tensor sizes shift what follows: every raw_data must still start on 8 bytes.
    for sizes in [vec![1usize], vec![3, 5], vec![1, 2, 3, 7], vec![9, 1, 1]] {
        let entries: Vec<(String, Vec<usize>)> = sizes.iter().enumerate().map(|(i, &n)| (format!("t{i}"), vec![n])).collect();
        let layout = pdiff_core::params::Layout::from_shapes(&entries).unwrap();
        let row = trajectory_row(1, layout.param_count());
        let bytes = model_adapter(&layout, &row, &NameMap::default(), AdapterVersions::default()).unwrap();
        // The raw bytes of each tensor, found in the buffer.
        for (t, values) in layout.split(&row) {
            let want: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let at = bytes.windows(want.len()).position(|w| w == want.as_slice()).unwrap();
            assert_eq!(at % 8, 0, "{sizes:?}: tensor {} at {at}", t.name);
        }
        assert_eq!(read_adapter(&bytes, "x").unwrap().parameters.len(), sizes.len());
    }
}

#[test]
fn names_follow_the_mapping_and_bad_mappings_are_refused() {
    let layout = small_layout();
    let first = layout.tensors[0].name.clone();
    let second = layout.tensors[1].name.clone();
    let row = trajectory_row(0, layout.param_count());
    let names = NameMap::parse(&[format!("{first}=host/w")]).unwrap();
    let a = read_adapter(&model_adapter(&layout, &row, &names, AdapterVersions::default()).unwrap(), "x").unwrap();
    assert_eq!(a.parameters[0].name, "host/w");
    assert_eq!(a.parameters[1].name, second);

    let (field, m) = invalid_err(NameMap::parse(&["no-equals-sign"]));
    assert_eq!(field, "adapter name");
    assert!(m.contains("LAYOUT_NAME=HOST_NAME"), "{m}");
    let (_, m) = invalid_err(NameMap::parse(&["a=b", "a=c"]));
    assert!(m.contains("'a' is renamed twice"), "{m}");
    let missing = NameMap::parse(&["nope=x"]).unwrap();
    let (_, m) = invalid_err(model_adapter(&layout, &row, &missing, AdapterVersions::default()));
    assert!(m.contains("no tensor 'nope'"), "{m}");
    let clash = NameMap::parse(&[format!("{first}={second}")]).unwrap();
    let (_, m) = invalid_err(model_adapter(&layout, &row, &clash, AdapterVersions::default()));
    assert!(m.contains(&format!("would both be named '{second}'")), "{m}");
    let (field, m) = invalid_err(model_adapter(&layout, &row[1..], &NameMap::default(), AdapterVersions::default()));
    assert_eq!(field, "parameters");
    assert!(m.contains("layout needs"), "{m}");
}

/// The position of the root table's `format_version` field (the buffer's own offsets, followed
/// as the FlatBuffers format defines them): to craft an adapter of another version.
fn format_version_at(bytes: &[u8]) -> usize {
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let root = u32_at(0);
    let vtable = (root as i64 - i32::from_le_bytes(bytes[root..root + 4].try_into().unwrap()) as i64) as usize;
    let field = u16::from_le_bytes(bytes[vtable + 4..vtable + 6].try_into().unwrap()) as usize;
    root + field
}

#[test]
fn damaged_adapters_are_refused_naming_what_is_wrong() {
    let good = adapter_of(&trajectory_row(2, small_layout().param_count()));
    // (The last bytes may be padding after the first string written: cut into the string.)
    for cut in [0, 7, 8, 40, good.len() / 2, good.len() - 12] {
        let (field, m) = invalid_err(read_adapter(&good[..cut], "gen_0000.onnx_adapter"));
        assert_eq!(field, "adapter gen_0000.onnx_adapter");
        assert!(m.contains("truncated") || m.contains("not an ONNX Runtime adapter"), "cut at {cut}: {m}");
    }
    let mut other = good.clone();
    other[4..8].copy_from_slice(b"ORTM");
    let (_, m) = invalid_err(read_adapter(&other, "x"));
    assert!(m.contains("file identifier is \"ORTM\""), "{m}");

    let at = format_version_at(&good);
    assert_eq!(i32::from_le_bytes(good[at..at + 4].try_into().unwrap()), FORMAT_VERSION);
    let mut v2 = good.clone();
    v2[at..at + 4].copy_from_slice(&2i32.to_le_bytes());
    let (_, m) = invalid_err(read_adapter(&v2, "x"));
    assert!(m.contains("format_version is 2"), "{m}");
}

#[test]
fn sample_to_dir_writes_adapters_with_provenance_beside() {
    let s = Sampler::open(&fixture(), &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    let request = SampleRequest::new(3).seed(5).sampler(SamplerKind::Ddim { steps: 4 });
    let all = s.sample(&request, &mut no_progress).unwrap().params;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapters");
    let options = WriteOptions { format: ModelFormat::OnnxAdapter, ..WriteOptions::default() };
    let files = s.sample_to_dir_with(&request, &out, &options, &mut no_progress).unwrap().0;
    assert_eq!(files.len(), 3);
    for (i, f) in files.iter().enumerate() {
        assert!(f.ends_with(format!("gen_{i:04}.onnx_adapter")), "{f:?}");
        let a = read_adapter(&std::fs::read(f).unwrap(), "x").unwrap();
        assert_eq!(a.versions.adapter_version, i as i32);
        let row = all.row(i);
        for (p, (_, values)) in a.parameters.iter().zip(s.layout().split(row.as_slice().unwrap())) {
            assert_eq!(p.raw_data, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(PROVENANCE_FILE)).unwrap()).unwrap();
    assert_eq!(doc["bundle_sha256"], s.bundle_sha256().unwrap());
    assert_eq!(doc["seed"], 5);
    assert_eq!(doc["steps"], 4);
    assert_eq!(doc["models"]["gen_0002.onnx_adapter"]["model_index"], 2);
}
