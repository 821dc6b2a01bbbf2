//! Engine integration tests (library API, no CLI): layout and normalization, the noise
//! schedule, the samplers, bad checkpoint inputs, a small end-to-end training + sampling +
//! bundle run, and configuration validation. Every case asserts numbers or exact error
//! variants/words; configurations are tiny so the whole file runs in seconds on 2 cores.
use ndarray::{Array2, ArrayView2};
use pdiff::bundle;
use pdiff::diffusion::{ddim_timesteps, sample_latents, sample_params, DenoiserBackend, SamplerKind, Schedule};
use pdiff::model::Preset;
use pdiff::params::{Layout, ParamSet, Selection};
use pdiff::train::{DeviceChoice, Generator, Progress, Stage, TrainConfig};
use pdiff::Error;
use safetensors::Dtype;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// libtorch's RNG is process-global and `cargo test` runs tests on several threads: every
/// operation that seeds or draws from it (training, `bundle::load_generator`) holds this lock,
/// so reproducibility checks are not disturbed by a concurrent test.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    single_threaded_torch();
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// One intra-op thread (set on the calling thread, as OpenMP keeps it per thread): the networks
/// here are tiny, and several test threads each driving a multi-threaded OpenMP pool on a busy
/// 2-core machine slowed this file down from ~1 s to over a minute.
fn single_threaded_torch() {
    tch::set_num_threads(1);
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write a safetensors file with arbitrary dtypes (the library only writes f32).
fn raw_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// "a.weight" [4, 8] then "a.bias" [4]: D = 36 (deliberately not in alphabetical order).
fn small_layout() -> Layout {
    Layout::from_shapes(&[("a.weight", vec![4, 8]), ("a.bias", vec![4])]).unwrap()
}

/// Row `i` of a synthetic trajectory: a fixed base vector plus a small per-row perturbation.
fn trajectory_row(i: usize, d: usize) -> Vec<f32> {
    (0..d).map(|j| 0.5 * (j as f32 * 0.37).sin() + 0.02 * ((i * 7 + j * 3) as f32 * 0.61).cos()).collect()
}

/// K good checkpoints of `small_layout()` in `dir`.
fn good_checkpoints(dir: &Path, k: usize) -> Vec<PathBuf> {
    let l = small_layout();
    (0..k)
        .map(|i| {
            let p = dir.join(format!("c{i:02}.safetensors"));
            l.save_safetensors(&trajectory_row(i, l.param_count()), &p).unwrap();
            p
        })
        .collect()
}

/// Unpack an `Error::Tensor`, failing the test on any other result.
fn tensor_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (PathBuf, String, String, String) {
    match r {
        Err(e @ Error::Tensor { .. }) => {
            let shown = e.to_string();
            let Error::Tensor { file, tensor, message } = e else { unreachable!() };
            (file, tensor, message, shown)
        }
        other => panic!("expected Error::Tensor, got {other:?}"),
    }
}

fn checkpoint_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (PathBuf, String, String) {
    match r {
        Err(e @ Error::Checkpoint { .. }) => {
            let shown = e.to_string();
            let Error::Checkpoint { file, message } = e else { unreachable!() };
            (file, message, shown)
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

fn invalid_err<T: std::fmt::Debug>(r: pdiff::Result<T>) -> (String, String) {
    match r {
        Err(Error::InvalidArgument { field, message }) => (field, message),
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Layout / normalization
// ---------------------------------------------------------------------------------------------

#[test]
fn layout_offsets_and_split_are_bit_exact() {
    let l = Layout::from_shapes(&[("conv.weight", vec![3, 2, 2]), ("conv.bias", vec![3]), ("fc.weight", vec![2, 5]), ("fc.bias", vec![2])])
        .unwrap();
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
    assert!(set.warnings.is_empty(), "one trajectory must not look misaligned: {:?}", set.warnings);

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

// ---------------------------------------------------------------------------------------------
// 2. Schedule
// ---------------------------------------------------------------------------------------------

#[test]
fn schedule_tables_match_closed_forms() {
    let s = Schedule::default();
    assert_eq!((s.kind.as_str(), s.beta_start, s.beta_end, s.timesteps), ("linear", 1e-4, 2e-2, 1000));
    s.validate().unwrap();
    let tab = s.tables();
    assert_eq!(tab.betas.len(), 1000);
    assert_eq!(tab.alphas.len(), 1000);
    assert_eq!(tab.alpha_bars.len(), 1000);
    assert_eq!(tab.posterior_variance.len(), 1000);

    // beta_i = 1e-4 + (2e-2 - 1e-4) * i / 999
    assert_eq!(tab.betas[0], 1e-4);
    assert!((tab.betas[999] - 2e-2).abs() < 1e-17, "{}", tab.betas[999]);
    assert!((tab.betas[500] - (1e-4 + 0.0199 * 500.0 / 999.0)).abs() < 1e-17, "{}", tab.betas[500]);
    for i in 1..1000 {
        let step = tab.betas[i] - tab.betas[i - 1];
        assert!((step - 0.0199 / 999.0).abs() < 1e-15, "beta step at {i}: {step}");
    }

    // alpha_bar_t = prod_{i <= t} (1 - beta_i), recomputed from the closed-form betas.
    let mut acc = 1.0f64;
    for t in 0..1000 {
        let beta = 1e-4 + (2e-2 - 1e-4) * t as f64 / 999.0;
        acc *= 1.0 - beta;
        assert!((tab.alphas[t] - (1.0 - beta)).abs() < 1e-15, "alpha {t}");
        assert!((tab.alpha_bars[t] - acc).abs() <= 1e-12 * acc, "alpha_bar {t}: {} vs {acc}", tab.alpha_bars[t]);
    }
    // Known value of the DDPM linear schedule: alpha_bar_T ~ 4.04e-5.
    assert!((tab.alpha_bars[999] - 4.0358e-5).abs() < 1e-8, "{}", tab.alpha_bars[999]);
    assert!(tab.alpha_bars.windows(2).all(|w| w[1] < w[0]), "alpha_bar must decrease strictly");

    assert_eq!(tab.posterior_variance[0], 0.0);
    for t in 1..1000 {
        let pv = tab.betas[t] * (1.0 - tab.alpha_bars[t - 1]) / (1.0 - tab.alpha_bars[t]);
        assert!((tab.posterior_variance[t] - pv).abs() <= 1e-14 * pv, "posterior variance {t}");
        assert!(tab.posterior_variance[t] > 0.0 && tab.posterior_variance[t] <= tab.betas[t]);
    }

    // DDIM sequence: T / S spaced, ascending, from 0.
    assert_eq!(ddim_timesteps(1000, 50), (0..50).map(|i| i * 20).collect::<Vec<_>>());
    assert_eq!(ddim_timesteps(1000, 3), vec![0, 333, 666]);
    assert_eq!(ddim_timesteps(1000, 1), vec![0]);
    // More steps than timesteps: clamped to every timestep; 0 steps: clamped to 1.
    assert_eq!(ddim_timesteps(10, 50), (0..10).collect::<Vec<_>>());
    assert_eq!(ddim_timesteps(10, 0), vec![0]);
}

#[test]
fn schedule_validate_rejects_bad_values() {
    let bad = |f: &dyn Fn(&mut Schedule)| {
        let mut s = Schedule::default();
        f(&mut s);
        invalid_err(s.validate())
    };
    let (field, msg) = bad(&|s| s.kind = "cosine".into());
    assert_eq!(field, "schedule.kind");
    assert!(msg.contains("cosine"), "{msg}");
    assert_eq!(bad(&|s| s.timesteps = 1).0, "schedule.timesteps");
    assert_eq!(bad(&|s| s.timesteps = 0).0, "schedule.timesteps");
    let (field, msg) = bad(&|s| (s.beta_start, s.beta_end) = (0.02, 1e-4));
    assert_eq!(field, "schedule.beta");
    assert!(msg.contains("0.02"), "{msg}");
    assert_eq!(bad(&|s| s.beta_start = 0.0).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_start = -1e-4).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_end = 1.0).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_end = f64::NAN).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_start = f64::NAN).0, "schedule.beta");

    // The sampler refuses a bad schedule before calling the backend.
    let mut s = Schedule::default();
    s.kind = "quadratic".into();
    let calls = RefCell::new(Vec::new());
    let r = sample_latents(&Linear { d: 2, calls: &calls }, &s, SamplerKind::Ddpm, 1, 0, &mut |_, _| true);
    assert_eq!(invalid_err(r).0, "schedule.kind");
    assert!(calls.borrow().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. Samplers
// ---------------------------------------------------------------------------------------------

/// A deterministic stand-in for the denoiser: eps = 0.1 x + 0.001 t. Records every call's
/// input so the test can rebuild the trajectory independently.
struct Linear<'a> {
    d: usize,
    calls: &'a RefCell<Vec<(Array2<f32>, Vec<i64>)>>,
}

impl DenoiserBackend for Linear<'_> {
    fn latent_dim(&self) -> usize {
        self.d
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64]) -> pdiff::Result<Array2<f32>> {
        self.calls.borrow_mut().push((x.to_owned(), t.to_vec()));
        Ok(Array2::from_shape_fn(x.dim(), |(i, j)| 0.1 * x[[i, j]] + 0.001 * t[i] as f32))
    }
}

/// Returns a wrongly shaped prediction.
struct Broken;
impl DenoiserBackend for Broken {
    fn latent_dim(&self) -> usize {
        3
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, _t: &[i64]) -> pdiff::Result<Array2<f32>> {
        Ok(Array2::zeros((x.nrows(), 2)))
    }
}

fn run(kind: SamplerKind, n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<(Array2<f32>, Vec<i64>)>, Vec<(usize, usize)>) {
    let calls = RefCell::new(Vec::new());
    let mut steps = Vec::new();
    let out = sample_latents(&Linear { d, calls: &calls }, &Schedule::default(), kind, n, seed, &mut |done, total| {
        steps.push((done, total));
        true
    })
    .unwrap();
    (out, calls.into_inner(), steps)
}

fn gaussian_f64(rng: &mut rand_chacha::ChaCha8Rng, n: usize, d: usize) -> Vec<f64> {
    use rand_distr::Distribution;
    (0..n * d).map(|_| { let z: f32 = rand_distr::StandardNormal.sample(rng); z as f64 }).collect()
}

fn max_rel_err(a: &Array2<f32>, reference: &[f64]) -> f64 {
    a.iter().zip(reference).map(|(&x, &r)| (x as f64 - r).abs() / r.abs().max(1.0)).fold(0.0, f64::max)
}

#[test]
fn ddim_is_deterministic_and_matches_reference() {
    let (n, d) = (3, 5);
    let kind = SamplerKind::Ddim { steps: 10 };
    let (a, calls, steps) = run(kind, n, d, 42);
    let (b, _, _) = run(kind, n, d, 42);
    let (c, _, _) = run(kind, n, d, 43);
    assert_eq!(a.dim(), (n, d));
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(bits(a.as_slice().unwrap()), bits(b.as_slice().unwrap()), "same seed must give identical latents");
    assert!(a.iter().zip(c.iter()).all(|(x, y)| x != y), "a different seed must change every value");

    // Progress: one report per step, (1..=10, 10); timesteps visited 900, 800, ..., 0.
    assert_eq!(steps, (1..=10).map(|i| (i, 10)).collect::<Vec<_>>());
    let ts: Vec<i64> = calls.iter().map(|c| c.1[0]).collect();
    assert_eq!(ts, (0..10).rev().map(|i| i * 100).collect::<Vec<_>>());
    assert!(calls.iter().all(|c| c.1.len() == n && c.1.iter().all(|&t| t == c.1[0]) && c.0.dim() == (n, d)));

    // The start is N(0, 1) noise from ChaCha8 seeded with the seed, drawn row-major.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(42);
    let x_t = gaussian_f64(&mut rng, n, d);
    assert_eq!(calls[0].0.iter().map(|&v| v as f64).collect::<Vec<_>>(), x_t);

    // Independent f64 DDIM (eta = 0) with the same eps model.
    let tab = Schedule::default().tables();
    let seq: Vec<usize> = (0..10).map(|i| i * 100).collect();
    let mut x = x_t;
    for i in (0..seq.len()).rev() {
        let t = seq[i];
        let ab = tab.alpha_bars[t];
        let ab_prev = if i == 0 { 1.0 } else { tab.alpha_bars[seq[i - 1]] };
        for v in x.iter_mut() {
            let eps = 0.1 * *v + 0.001 * t as f64;
            let x0 = (*v - (1.0 - ab).sqrt() * eps) / ab.sqrt();
            *v = ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * eps;
        }
    }
    let err = max_rel_err(&a, &x);
    assert!(err < 2e-5, "DDIM differs from the f64 reference by {err}");
}

#[test]
fn ddpm_is_deterministic_and_matches_reference() {
    let (n, d) = (2, 4);
    let (a, calls, steps) = run(SamplerKind::Ddpm, n, d, 7);
    let (b, _, _) = run(SamplerKind::Ddpm, n, d, 7);
    let (c, _, _) = run(SamplerKind::Ddpm, n, d, 8);
    assert_eq!(a.dim(), (n, d));
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(bits(a.as_slice().unwrap()), bits(b.as_slice().unwrap()));
    assert!(a.iter().zip(c.iter()).all(|(x, y)| x != y));
    assert_eq!(steps.len(), 1000);
    assert_eq!(steps[0], (1, 1000));
    assert_eq!(steps[999], (1000, 1000));
    let ts: Vec<i64> = calls.iter().map(|c| c.1[0]).collect();
    assert_eq!(ts, (0..1000).rev().collect::<Vec<i64>>());

    // Independent f64 ancestral DDPM with the same noise stream: x_T, then one fresh N(0, I)
    // draw per step t > 0 (none at t = 0).
    let tab = Schedule::default().tables();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let mut x = gaussian_f64(&mut rng, n, d);
    for t in (0..1000usize).rev() {
        let coef = tab.betas[t] / (1.0 - tab.alpha_bars[t]).sqrt();
        for v in x.iter_mut() {
            let eps = 0.1 * *v + 0.001 * t as f64;
            *v = (*v - coef * eps) / tab.alphas[t].sqrt();
        }
        if t > 0 {
            let z = gaussian_f64(&mut rng, n, d);
            let sigma = tab.posterior_variance[t].sqrt();
            for (v, z) in x.iter_mut().zip(z) {
                *v += sigma * z;
            }
        }
    }
    let err = max_rel_err(&a, &x);
    assert!(err < 5e-5, "DDPM differs from the f64 reference by {err}");

    // DDPM and DDIM are different processes.
    let (ddim, _, _) = run(SamplerKind::Ddim { steps: 10 }, n, d, 7);
    assert_ne!(bits(a.as_slice().unwrap()), bits(ddim.as_slice().unwrap()));
}

#[test]
fn sampler_cancel_and_errors() {
    let calls = RefCell::new(Vec::new());
    let den = Linear { d: 4, calls: &calls };
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim { steps: 20 }] {
        calls.borrow_mut().clear();
        let mut seen = 0;
        let r = sample_latents(&den, &Schedule::default(), kind, 2, 1, &mut |done, _| {
            seen = done;
            done < 3
        });
        assert!(matches!(r, Err(Error::Cancelled)), "{kind:?}: {r:?}");
        assert_eq!(seen, 3, "{kind:?}: cancelled after the third step");
        assert_eq!(calls.borrow().len(), 3, "{kind:?}: no denoiser call after the cancel");
    }
    // Bad arguments.
    assert_eq!(invalid_err(sample_latents(&den, &Schedule::default(), SamplerKind::Ddpm, 0, 1, &mut |_, _| true)).0, "n");
    assert_eq!(invalid_err(sample_latents(&den, &Schedule::default(), SamplerKind::Ddim { steps: 0 }, 1, 1, &mut |_, _| true)).0, "steps");
    assert_eq!(SamplerKind::parse("ddim", 25).unwrap(), SamplerKind::Ddim { steps: 25 });
    assert_eq!(SamplerKind::parse("ddpm", 0).unwrap(), SamplerKind::Ddpm);
    assert_eq!(invalid_err(SamplerKind::parse("ddim", 0)).0, "steps");
    assert_eq!(invalid_err(SamplerKind::parse("euler", 10)).0, "sampler");
    // A backend returning the wrong shape is reported, not silently broadcast.
    match sample_latents(&Broken, &Schedule::default(), SamplerKind::Ddim { steps: 2 }, 2, 0, &mut |_, _| true) {
        Err(Error::Runtime(m)) => assert!(m.contains("[2, 3]"), "{m}"),
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Bad inputs
// ---------------------------------------------------------------------------------------------

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
    assert!(shown.contains("conv*.weight") && shown.contains("c00.safetensors"), "{shown}");
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
    let mut junk: Vec<(String, Vec<u8>)> = vec![
        ("text".into(), b"this is not a safetensors file at all, just some text".to_vec()),
        ("empty".into(), Vec::new()),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    junk.push(("random".into(), (0..4096).map(|_| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state as u8 }).collect()));
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

// ---------------------------------------------------------------------------------------------
// 5. End to end: train, sample with the tch backends, bundle
// ---------------------------------------------------------------------------------------------

const K: usize = 8;

fn trajectory_set() -> ParamSet {
    let l = small_layout();
    let d = l.param_count();
    let data: Vec<f32> = (0..K).flat_map(|i| trajectory_row(i, d)).collect();
    ParamSet::from_rows(l, data, (0..K).map(|i| format!("epoch{i}")).collect()).unwrap()
}

fn small_config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 30;
    c.diffusion_steps = 30;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.seed = seed;
    c
}

fn train(set: &ParamSet, config: &TrainConfig) -> (Generator, Vec<(Stage, usize, usize)>) {
    let _guard = torch_lock();
    let mut reports = Vec::new();
    let g = Generator::train(set, config, &mut |p: &Progress| {
        assert!(p.loss.is_finite());
        reports.push((p.stage, p.step, p.total));
        true
    })
    .unwrap();
    (g, reports)
}

fn sample(g: &Generator, n: usize, seed: u64) -> Array2<f32> {
    single_threaded_torch();
    sample_params(&g.tch_denoiser(), &g.tch_decoder(), &g.config.schedule, SamplerKind::Ddim { steps: 10 }, n, seed, &mut |_, _| true).unwrap()
}

#[test]
fn end_to_end_train_sample_bundle() {
    let set = trajectory_set();
    let d = set.layout.param_count();
    let (g, reports) = train(&set, &small_config(0));

    // Progress: 30 autoencoder steps then 30 diffusion steps, in order.
    let want: Vec<(Stage, usize, usize)> =
        (1..=30).map(|s| (Stage::Autoencoder, s, 30)).chain((1..=30).map(|s| (Stage::Diffusion, s, 30))).collect();
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
    assert!(g.latent_std.iter().all(|s| *s >= pdiff::train::LATENT_STD_FLOOR));

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
    let r = sample_params(&g.tch_denoiser(), &g.tch_decoder(), &g.config.schedule, SamplerKind::Ddim { steps: 10 }, 2, 0, &mut |s, _| s < 4);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");

    // Bundle: save, load the manifest, reload the generator.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let saved = bundle::save(&g, &dir).unwrap();
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
        bundle::load_generator(&dir, DeviceChoice::Cpu).unwrap()
    };
    let a2 = sample(&g2, 5, 11);
    assert_eq!(bits(a2.as_slice().unwrap()), bits(a.as_slice().unwrap()), "the reloaded generator samples the same parameters");

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
    // A missing manifest, and a path that is not a directory.
    std::fs::remove_file(&mpath).unwrap();
    assert!(matches!(bundle::load_manifest(&dir), Err(Error::Bundle { .. })));
    assert!(matches!(bundle::load_manifest(&ae), Err(Error::Bundle { .. })));
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

// ---------------------------------------------------------------------------------------------
// 6. Configuration
// ---------------------------------------------------------------------------------------------

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
    let mut ok = base.clone();
    ok.ema = Some(0.999);
    ok.input_noise = 0.0;
    ok.validate().unwrap();
}

#[test]
fn device_choice_parsing_and_resolution() {
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
    assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
    for s in ["bogus", "cuda:", "cuda:x", "CPU", "gpu", ""] {
        let (field, msg) = invalid_err(s.parse::<DeviceChoice>());
        assert_eq!(field, "device", "{s:?}");
        assert!(msg.contains(&format!("'{s}'")), "{s:?}: {msg}");
    }
    assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), tch::Device::Cpu);
    let cuda = "cuda".parse::<DeviceChoice>().unwrap().resolve();
    if tch::Cuda::is_available() {
        assert_eq!(cuda.unwrap(), tch::Device::Cuda(0));
    } else {
        // This CPU-only machine: an explicit CUDA request fails and says why.
        match cuda {
            Err(Error::DeviceUnavailable(m)) => assert!(m.contains("CUDA device 0"), "{m}"),
            other => panic!("expected Error::DeviceUnavailable, got {other:?}"),
        }
        assert_eq!(DeviceChoice::Auto.resolve().unwrap(), tch::Device::Cpu);
    }
    assert!(matches!(DeviceChoice::Cuda(99).resolve(), Err(Error::DeviceUnavailable(_))));
}
