//! Parameter data: layout offsets and split, normalization round trips, safetensors I/O,
//! dtype conversion, and every bad checkpoint input (missing or misshaped tensors, non-finite
//! values, too few checkpoints, bad selections, corrupt files). No libtorch needed.
use pdiff_core::params::{Layout, ParamSet, Selection};
use pdiff_core::Error;
use pdiff_test_support::*;
use safetensors::Dtype;
use std::path::PathBuf;

#[test]
fn layout_offsets_and_split_are_bit_exact() {
    let l = Layout::from_shapes(&[("conv.weight", vec![3, 2, 2]), ("conv.bias", vec![3]), ("fc.weight", vec![2, 5]), ("fc.bias", vec![2])]).unwrap();
    assert_eq!(l.param_count(), 12 + 3 + 10 + 2);
    let offsets: Vec<usize> = l.tensors.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, vec![0, 12, 15, 25]);
    assert_eq!(l.get("fc.weight").unwrap().shape, vec![2, 5]);
    assert!(l.get("nope").is_none());

    // Values with awkward bit patterns (subnormal, -0.0, large, tiny) must survive unchanged.
    let flat: Vec<f32> = (0..l.param_count())
        .map(|j| match j % 5 {
            0 => -0.0,
            1 => f32::MIN_POSITIVE / 3.0,
            2 => 1.0e30 * (j as f32),
            3 => (j as f32 * 0.1).sin(),
            _ => -1.0 / (j as f32 + 7.0),
        })
        .collect();
    let parts: Vec<(String, Vec<usize>, Vec<f32>)> = l.split(&flat).map(|(t, v)| (t.name.clone(), t.shape.clone(), v.to_vec())).collect();
    assert_eq!(parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]);
    for (name, shape, v) in &parts {
        assert_eq!(v.len(), shape.iter().product::<usize>(), "{name}");
        let off = l.get(name).unwrap().offset;
        assert_eq!(bits(v), bits(&flat[off..off + v.len()]), "{name}");
    }
    // Unflatten then flatten again (concatenate in layout order): bit-identical.
    let re: Vec<f32> = parts.iter().flat_map(|p| p.2.iter().copied()).collect();
    assert_eq!(bits(&re), bits(&flat));

    // Invalid layouts.
    assert_eq!(invalid_err(Layout::from_shapes::<&str>(&[])).0, "layout");
    let (_, m) = invalid_err(Layout::from_shapes(&[("x", vec![2]), ("x", vec![3])]));
    assert!(m.contains("'x'") && m.contains("twice"), "{m}");
    let (_, m) = invalid_err(Layout::from_shapes(&[("x", vec![2, 0])]));
    assert!(m.contains("'x'") && m.contains("no elements"), "{m}");
    // Serialization checks the vector length against D.
    let (_, m) = invalid_err(l.to_safetensors(&flat[..5]));
    assert!(m.contains("5 values") && m.contains("27"), "{m}");
}

#[test]
fn normalization_stats_and_round_trip() {
    let l = small_layout();
    let d = l.param_count();
    let k = 5;
    let data: Vec<f32> = (0..k).flat_map(|i| trajectory_row(i, d).into_iter().map(move |x| x * 3.0 + i as f32 * 0.01 - 7.0)).collect();
    let set = ParamSet::from_rows(l, data.clone(), (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap();
    assert_eq!(set.k(), k);
    // One trajectory does not look misaligned; 5 checkpoints are few (the only warning).
    assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    assert!(set.warnings[0].starts_with("K = 5 checkpoints is few"), "{:?}", set.warnings);

    // Per-tensor stats recomputed independently in f64 (population std over all K rows).
    for t in &set.layout.tensors {
        let vals: Vec<f64> = (0..k).flat_map(|i| set.row(i)[t.offset..t.offset + t.numel()].iter().map(|&x| x as f64)).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(((t.mean as f64) - mean).abs() <= 1e-6 * mean.abs().max(1.0), "{}: mean {} vs {mean}", t.name, t.mean);
        assert!(((t.std as f64) - std).abs() <= 1e-6 * std, "{}: std {} vs {std}", t.name, t.std);
    }

    // The normalized data is standardized per tensor: mean ~0, std ~1 over all K rows.
    let norm = set.normalized();
    for t in &set.layout.tensors {
        let vals: Vec<f64> = norm.chunks_exact(d).flat_map(|r| r[t.offset..t.offset + t.numel()].iter().map(|&x| x as f64)).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!(mean.abs() < 1e-5, "{}: normalized mean {mean}", t.name);
        assert!((var.sqrt() - 1.0).abs() < 1e-5, "{}: normalized std {}", t.name, var.sqrt());
    }

    // normalize -> denormalize. The offset/tensor mapping is exact, but (x - m) / s * s + m in
    // f32 is not bit-exact (each of the four operations rounds), so the bound is a few ulps of
    // the largest magnitude involved: 1e-6 relative (f32 epsilon is 1.2e-7).
    let mut back = vec![0f32; d];
    for i in 0..k {
        let src = set.row(i);
        let n = &norm[i * d..(i + 1) * d];
        set.layout.denormalize(n, &mut back);
        for t in &set.layout.tensors {
            for j in t.offset..t.offset + t.numel() {
                let scale = src[j].abs().max(t.mean.abs()).max(t.std);
                assert!((back[j] - src[j]).abs() <= 1e-6 * scale, "row {i} {}[{}]: {} vs {}", t.name, j - t.offset, back[j], src[j]);
                // Element j was normalized with the stats of the tensor that owns offset j.
                let expect = (src[j] - t.mean) / t.std;
                assert_eq!(n[j].to_bits(), expect.to_bits(), "row {i} {} offset {j}", t.name);
            }
        }
    }

    // A constant tensor does not divide by zero: its std is floored, normalized values are 0.
    let l2 = Layout::from_shapes(&[("c", vec![3]), ("v", vec![2])]).unwrap();
    let s2 = ParamSet::from_rows(l2, vec![2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.5, 2.5], vec!["a".into(), "b".into()]).unwrap();
    let c = s2.layout.get("c").unwrap();
    assert_eq!(c.mean, 2.0);
    assert!(c.std > 0.0 && c.std <= 1e-7, "floored std {}", c.std);
    assert!(s2.normalized().iter().all(|x| x.is_finite()));
    assert_eq!(&s2.normalized()[..3], &[0.0, 0.0, 0.0]);
    assert_eq!(s2.mean_row(), vec![2.0, 2.0, 2.0, 1.25, 2.25]);
}

#[test]
fn safetensors_round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let l = small_layout();
    let d = l.param_count();
    let rows: Vec<Vec<f32>> = (0..3).map(|i| trajectory_row(i, d)).collect();
    let paths: Vec<PathBuf> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = dir.path().join(format!("r{i}.safetensors"));
            l.save_safetensors(r, &p).unwrap();
            p
        })
        .collect();
    // Atomic write: no temporary files are left next to the outputs.
    let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");

    let set = ParamSet::load(&paths, &Selection::AllFloat).unwrap();
    assert_eq!(set.k(), 3);
    assert_eq!(set.sources, paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    // Same names and shapes. The loaded layout follows the order of the tensors in the file,
    // and safetensors stores same-dtype tensors sorted by name, so compare per name.
    let mut got: Vec<(String, Vec<usize>)> = set.layout.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let mut want: Vec<(String, Vec<usize>)> = l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(set.layout.param_count(), d);
    for (i, row) in rows.iter().enumerate() {
        for (t, v) in l.split(row) {
            let lt = set.layout.get(&t.name).unwrap();
            assert_eq!(bits(&set.row(i)[lt.offset..lt.offset + lt.numel()]), bits(v), "row {i} tensor {}", t.name);
        }
    }
    // load_dir lists *.safetensors sorted by name (other files ignored) and gives the same set.
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let set2 = ParamSet::load_dir(dir.path(), &Selection::AllFloat).unwrap();
    assert_eq!(set2.sources, set.sources);
    assert_eq!(bits(&set2.data), bits(&set.data));
    // In-memory bytes give the same result as the files.
    let mem: Vec<(PathBuf, Vec<u8>)> = paths.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
    let set3 = ParamSet::from_safetensors_bytes(&mem, &Selection::AllFloat).unwrap();
    assert_eq!(bits(&set3.data), bits(&set.data));
    assert_eq!(set3.layout, set.layout);

    // Selecting a subset by pattern keeps only those tensors, in file order.
    let sub = ParamSet::load(&paths, &Selection::patterns(&["a.b*"])).unwrap();
    assert_eq!(sub.layout.tensors.len(), 1);
    assert_eq!(sub.layout.tensors[0].name, "a.bias");
    assert_eq!(bits(sub.row(2)), bits(&rows[2][32..36]));

    // A layout already in storage order (names sorted) round-trips to an identical layout.
    let sorted = Layout::from_shapes(&[("a.bias", vec![4]), ("a.weight", vec![4, 8])]).unwrap();
    let p0 = dir.path().join("s0.safetensors");
    let p1 = dir.path().join("s1.safetensors");
    sorted.save_safetensors(&rows[0], &p0).unwrap();
    sorted.save_safetensors(&rows[1], &p1).unwrap();
    let s = ParamSet::load(&[p0, p1], &Selection::AllFloat).unwrap();
    let shape_of = |l: &Layout| l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.offset)).collect::<Vec<_>>();
    assert_eq!(shape_of(&s.layout), shape_of(&sorted));
    assert_eq!(bits(&s.data[..d]), bits(&rows[0]));
    assert_eq!(bits(&s.data[d..]), bits(&rows[1]));
}

#[test]
fn other_float_dtypes_are_converted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Values exactly representable in f16 and bf16.
    let v = [0.5f32, -1.25, 3.0, 0.0078125];
    let f64b: Vec<u8> = v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
    let f16b: Vec<u8> = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16b: Vec<u8> = v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let mut paths = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("m{i}.safetensors"));
        raw_file(
            &p,
            &[
                ("d", Dtype::F64, vec![4], f64b.clone()),
                ("h", Dtype::F16, vec![2, 2], f16b.clone()),
                ("b", Dtype::BF16, vec![4], bf16b.clone()),
                ("steps", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
            ],
        );
        paths.push(p);
    }
    let set = ParamSet::load(&paths, &Selection::AllFloat).unwrap();
    // The int tensor is skipped by the default selection.
    assert!(set.layout.get("steps").is_none());
    assert_eq!(set.layout.param_count(), 12);
    for name in ["d", "h", "b"] {
        let t = set.layout.get(name).unwrap();
        assert_eq!(&set.row(1)[t.offset..t.offset + 4], &v, "{name}");
    }
}

#[test]
fn missing_tensor_in_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = good_checkpoints(dir.path(), 3);
    let bad = dir.path().join("c99.safetensors");
    let only_w = Layout::from_shapes(&[("a.weight", vec![4, 8])]).unwrap();
    only_w.save_safetensors(&trajectory_row(0, 32), &bad).unwrap();
    files.push(bad.clone());
    let (file, tensor, msg, shown) = tensor_err(ParamSet::load(&files, &Selection::AllFloat));
    assert_eq!(file, bad);
    assert_eq!(tensor, "a.bias");
    assert!(msg.contains("missing"), "{msg}");
    assert!(shown.contains("c99.safetensors") && shown.contains("'a.bias'"), "{shown}");
}

#[test]
fn shape_mismatch_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = good_checkpoints(dir.path(), 2);
    let bad = dir.path().join("c50.safetensors");
    // Same element count, different shape.
    let transposed = Layout::from_shapes(&[("a.weight", vec![8, 4]), ("a.bias", vec![4])]).unwrap();
    transposed.save_safetensors(&trajectory_row(5, 36), &bad).unwrap();
    files.insert(1, bad.clone());
    let (file, tensor, msg, shown) = tensor_err(ParamSet::load(&files, &Selection::AllFloat));
    assert_eq!(file, bad);
    assert_eq!(tensor, "a.weight");
    assert!(msg.contains("[8, 4]") && msg.contains("[4, 8]"), "{msg}");
    assert!(shown.contains("c50.safetensors"), "{shown}");
}

#[test]
fn non_finite_values_are_rejected() {
    for (label, value) in [("NaN", f32::NAN), ("inf", f32::INFINITY), ("-inf", f32::NEG_INFINITY)] {
        let dir = tempfile::tempdir().unwrap();
        let mut files = good_checkpoints(dir.path(), 3);
        let bad = dir.path().join("c01.safetensors");
        let mut row = trajectory_row(1, 36);
        row[32 + 2] = value; // a.bias[2]
        small_layout().save_safetensors(&row, &bad).unwrap();
        files[1] = bad.clone();
        let (file, tensor, msg, shown) = tensor_err(ParamSet::load(&files, &Selection::AllFloat));
        assert_eq!(file, bad, "{label}");
        assert_eq!(tensor, "a.bias", "{label}");
        assert!(msg.contains(label) && msg.contains("element 2"), "{label}: {msg}");
        assert!(shown.contains("c01.safetensors"), "{shown}");
    }
}

#[test]
fn too_few_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let files = good_checkpoints(dir.path(), 1);
    let (field, msg) = invalid_err(ParamSet::load(&files, &Selection::AllFloat));
    assert_eq!(field, "checkpoints");
    assert!(msg.contains("K = 1"), "{msg}");
    let (field, msg) = invalid_err(ParamSet::load(&[], &Selection::AllFloat));
    assert_eq!(field, "checkpoints");
    assert!(msg.contains("K = 0"), "{msg}");
    // An empty directory gives K = 0.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(invalid_err(ParamSet::load_dir(empty.path(), &Selection::AllFloat)).0, "checkpoints");
}

#[test]
fn selection_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = good_checkpoints(dir.path(), 2);
    // A pattern matching nothing names the pattern and the file.
    let (file, tensor, msg, shown) = tensor_err(ParamSet::load(&files, &Selection::patterns(&["a.bias", "conv*.weight"])));
    assert_eq!(file, files[0]);
    assert_eq!(tensor, "conv*.weight");
    assert!(msg.contains("no floating-point tensor matches"), "{msg}");
    assert!(shown.contains("conv*.weight") && shown.contains("c000.safetensors"), "{shown}");
    // A malformed glob.
    let (field, msg) = invalid_err(ParamSet::load(&files, &Selection::patterns(&["a.[w"])));
    assert_eq!(field, "selection");
    assert!(msg.contains("a.[w"), "{msg}");

    // An int tensor selected explicitly is refused, named; the float ones are still fine.
    let mut mixed = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("bn{i}.safetensors"));
        raw_file(
            &p,
            &[
                ("bn.weight", Dtype::F32, vec![3], f32_bytes(&[1.0, 2.0 + i as f32, 3.0])),
                ("bn.num_batches_tracked", Dtype::I64, vec![], 100i64.to_le_bytes().to_vec()),
            ],
        );
        mixed.push(p);
    }
    let (file, tensor, msg, _) = tensor_err(ParamSet::load(&mixed, &Selection::patterns(&["bn.num_batches_tracked"])));
    assert_eq!(file, mixed[0]);
    assert_eq!(tensor, "bn.num_batches_tracked");
    assert!(msg.contains("I64") && msg.contains("not floating point"), "{msg}");
    let ok = ParamSet::load(&mixed, &Selection::patterns(&["bn.weight"])).unwrap();
    assert_eq!(ok.data, vec![1.0, 2.0, 3.0, 1.0, 3.0, 3.0]);
    // A glob skips the int tensor it also matches (PyTorch's num_batches_tracked).
    let glob = ParamSet::load(&mixed, &Selection::patterns(&["bn.*"])).unwrap();
    assert_eq!(glob.layout.tensors.len(), 1);
    assert_eq!(glob.data, ok.data);

    // A file with no float tensor at all: the default selection is empty.
    let mut ints = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("int{i}.safetensors"));
        raw_file(&p, &[("step", Dtype::I32, vec![2], [1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect())]);
        ints.push(p);
    }
    let (file, msg, _) = checkpoint_err(ParamSet::load(&ints, &Selection::AllFloat));
    assert_eq!(file, ints[0]);
    assert!(msg.contains("selection is empty"), "{msg}");

    // A tensor that is float in the first file but int in a later one.
    let later = dir.path().join("later.safetensors");
    raw_file(&later, &[("a.weight", Dtype::I32, vec![4, 8], vec![0u8; 128]), ("a.bias", Dtype::F32, vec![4], f32_bytes(&[0.0; 4]))]);
    let (file, tensor, msg, _) = tensor_err(ParamSet::load(&[files[0].clone(), later.clone()], &Selection::AllFloat));
    assert_eq!((file, tensor.as_str()), (later, "a.weight"));
    assert!(msg.contains("not floating point"), "{msg}");
}

#[test]
fn corrupt_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = good_checkpoints(dir.path(), 3);

    // Truncated: a valid file cut in half (header intact, data short) and cut inside the header.
    for cut in [std::fs::metadata(&files[2]).unwrap().len() as usize / 2, 20] {
        let t = dir.path().join(format!("trunc{cut}.safetensors"));
        let bytes = std::fs::read(&files[2]).unwrap();
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let (file, msg, shown) = checkpoint_err(ParamSet::load(&[files[0].clone(), t.clone()], &Selection::AllFloat));
        assert_eq!(file, t);
        assert!(msg.contains("not a readable safetensors file"), "{msg}");
        assert!(shown.contains(&format!("trunc{cut}.safetensors")), "{shown}");
    }

    // Not a safetensors file: text, pseudo-random bytes, an 8-byte header length with garbage
    // JSON, and an empty file. First position too, so the layout cannot be taken from it.
    let mut junk: Vec<(String, Vec<u8>)> =
        vec![("text".into(), b"this is not a safetensors file at all, just some text".to_vec()), ("empty".into(), Vec::new())];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    junk.push((
        "random".into(),
        (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect(),
    ));
    let mut hdr = 12u64.to_le_bytes().to_vec();
    hdr.extend_from_slice(b"{not json!!}");
    junk.push(("header".into(), hdr));
    for (name, bytes) in junk {
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, bytes).unwrap();
        for order in [vec![p.clone(), files[0].clone()], vec![files[0].clone(), p.clone()]] {
            let (file, msg, _) = checkpoint_err(ParamSet::load(&order, &Selection::AllFloat));
            assert_eq!(file, p, "{name}");
            assert!(msg.contains("not a readable safetensors file"), "{name}: {msg}");
        }
    }

    // A nonexistent path and a directory given as a file: Io errors naming the path.
    let missing = dir.path().join("does-not-exist.safetensors");
    match ParamSet::load(&[files[0].clone(), missing.clone()], &Selection::AllFloat) {
        Err(e @ Error::Io { .. }) => {
            assert!(e.to_string().contains("does-not-exist.safetensors"), "{e}");
            let Error::Io { path, source } = e else { unreachable!() };
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    let a_dir = dir.path().join("subdir.safetensors");
    std::fs::create_dir(&a_dir).unwrap();
    match ParamSet::load(&[a_dir.clone(), files[0].clone()], &Selection::AllFloat) {
        Err(Error::Io { path, .. }) => assert_eq!(path, a_dir),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    match ParamSet::load_dir(&dir.path().join("no-such-dir"), &Selection::AllFloat) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("no-such-dir")),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn from_rows_rejects_bad_input() {
    let l = small_layout();
    let d = l.param_count();
    let (field, msg) = invalid_err(ParamSet::from_rows(l.clone(), trajectory_row(0, d), vec!["only".into()]));
    assert_eq!(field, "checkpoints");
    assert!(msg.contains("K = 1"), "{msg}");

    let mut data: Vec<f32> = (0..3).flat_map(|i| trajectory_row(i, d)).collect();
    data[2 * d + 5] = f32::NAN; // row 2, a.weight[5]
    let (file, tensor, msg, shown) = tensor_err(ParamSet::from_rows(l.clone(), data.clone(), vec!["r0".into(), "r1".into(), "memory[2]".into()]));
    assert_eq!(file, PathBuf::from("memory[2]"));
    assert_eq!(tensor, "a.weight");
    assert!(msg.contains("NaN") && msg.contains("index 5"), "{msg}");
    assert!(shown.contains("memory[2]"), "{shown}");
    data[2 * d + 5] = 0.0;
    data[d + 33] = f32::INFINITY; // row 1, a.bias[1]
    let (file, tensor, msg, _) = tensor_err(ParamSet::from_rows(l.clone(), data.clone(), vec!["r0".into(), "r1".into(), "r2".into()]));
    assert_eq!((file, tensor.as_str()), (PathBuf::from("r1"), "a.bias"));
    assert!(msg.contains("inf") && msg.contains("index 1"), "{msg}");

    // Length not a multiple of D, and a wrong number of source names.
    assert_eq!(invalid_err(ParamSet::from_rows(l.clone(), vec![0.0; d + 1], vec!["a".into()])).0, "data");
    assert_eq!(invalid_err(ParamSet::from_rows(l, vec![0.0; 2 * d], vec!["a".into()])).0, "sources");
}

#[test]
fn few_checkpoints_get_a_warning() {
    let l = small_layout();
    let d = l.param_count();
    let set_of = |k: usize| {
        let data: Vec<f32> = (0..k).flat_map(|i| trajectory_row(i, d)).collect();
        ParamSet::from_rows(l.clone(), data, (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap()
    };
    let below = set_of(pdiff_core::params::MIN_RECOMMENDED_K - 1);
    assert_eq!(below.warnings.len(), 1, "{:?}", below.warnings);
    assert!(below.warnings[0].contains("K = 49 checkpoints is few") && below.warnings[0].contains("at least 50"), "{}", below.warnings[0]);
    assert!(set_of(pdiff_core::params::MIN_RECOMMENDED_K).warnings.is_empty());
    // Files: the same warning.
    let dir = tempfile::tempdir().unwrap();
    good_checkpoints(dir.path(), 3);
    let set = ParamSet::load_dir(dir.path(), &Selection::AllFloat).unwrap();
    assert_eq!(set.warnings.len(), 1);
    assert!(set.warnings[0].starts_with("K = 3 checkpoints is few"), "{}", set.warnings[0]);
}

#[test]
fn checkpoint_variance_is_the_error_of_the_mean() {
    // Two tensors of very different scales: the spread is measured per coordinate after each
    // tensor's standardization, so both count alike.
    let l = Layout::from_shapes(&[("big", vec![3]), ("small", vec![2])]).unwrap();
    let rows: [[f32; 5]; 4] =
        [[100.0, 200.0, -50.0, 0.001, 0.002], [101.0, 198.0, -51.0, 0.003, 0.002], [99.0, 203.0, -49.0, 0.001, 0.001], [102.0, 199.0, -52.0, 0.002, 0.004]];
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let set = ParamSet::from_rows(l, data, (0..4).map(|i| format!("memory[{i}]")).collect()).unwrap();
    // Independently: normalize, then the MSE of predicting every row by the mean row.
    let norm = set.normalized();
    let mean: Vec<f64> = (0..5).map(|j| (0..4).map(|i| norm[i * 5 + j] as f64).sum::<f64>() / 4.0).collect();
    let mse = (0..4).flat_map(|i| (0..5).map(move |j| (i, j))).map(|(i, j)| (norm[i * 5 + j] as f64 - mean[j]).powi(2)).sum::<f64>() / 20.0;
    let v = set.checkpoint_variance();
    assert!((v - mse).abs() <= 1e-9 * mse, "{v} vs {mse}");
    assert!(v > 0.0 && v <= 1.0, "{v}: at most the whole (normalized) variance");
    // Identical checkpoints have no spread.
    let same = ParamSet::from_rows(small_layout(), [trajectory_row(0, 36), trajectory_row(0, 36)].concat(), vec!["a".into(), "b".into()]).unwrap();
    assert_eq!(same.checkpoint_variance(), 0.0);
}

#[test]
fn peek_dir_reads_the_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    let files = good_checkpoints(dir.path(), 4);
    for selection in [Selection::AllFloat, Selection::patterns(&["a.b*"])] {
        let set = ParamSet::load_dir(dir.path(), &selection).unwrap();
        let (layout, k) = pdiff_core::params::peek_dir(dir.path(), &selection).unwrap();
        assert_eq!(k, 4);
        let shape = |l: &Layout| l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.offset)).collect::<Vec<_>>();
        assert_eq!(shape(&layout), shape(&set.layout));
    }
    // Data that is not there is not read: a header promising more data than the file holds is
    // refused by its length, a selection error is the full load's.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() - 4]).unwrap();
    let (file, msg, _) = checkpoint_err(pdiff_core::params::peek_dir(dir.path(), &Selection::AllFloat));
    assert_eq!(file, files[0]);
    assert!(msg.contains("not a readable safetensors file") && msg.contains("the file has"), "{msg}");
    std::fs::write(&files[0], &bytes).unwrap();
    let (_, tensor, msg, _) = tensor_err(pdiff_core::params::peek_dir(dir.path(), &Selection::patterns(&["conv*"])));
    assert_eq!((tensor.as_str(), msg.as_str()), ("conv*", "no floating-point tensor matches this selection"));
    // Header garbage and fewer than 2 files.
    std::fs::write(&files[1], b"\xff\xff\xff\xff\xff\xff\xff\x7f not a header").unwrap();
    std::fs::rename(&files[1], dir.path().join("a.safetensors")).unwrap();
    let (file, msg, _) = checkpoint_err(pdiff_core::params::peek_dir(dir.path(), &Selection::AllFloat));
    assert_eq!(file, dir.path().join("a.safetensors"));
    assert!(msg.contains("header length"), "{msg}");
    // One checkpoint in a directory is counted (K >= 2 is checked over all directories); none
    // is refused, naming the directory.
    let one = tempfile::tempdir().unwrap();
    good_checkpoints(one.path(), 1);
    assert_eq!(pdiff_core::params::peek_dir(one.path(), &Selection::AllFloat).unwrap().1, 1);
    assert!(invalid_err(pdiff_core::params::check_k(1)).1.contains("K = 1"));
    let empty = tempfile::tempdir().unwrap();
    let msg = invalid_err(pdiff_core::params::peek_dir(empty.path(), &Selection::AllFloat)).1;
    assert!(msg.contains("no *.safetensors") && msg.contains(&empty.path().display().to_string()), "{msg}");
}
