//! Serving bundles with ONNX Runtime: errors and thread safety on a committed fixture bundle
//! (no libtorch needed: these run in the serve-only build too), and, with feature `train`,
//! export parity (the graphs run by ONNX Runtime agree with the tch networks for every preset;
//! the shared sampler loop gives the same parameters on both backends).
mod common;
use common::{fixture, fixture_copy};
#[cfg(feature = "train")]
use common::max_rel_diff;
use ndarray::Array2;
use pdiff::diffusion::{DecoderBackend, DenoiserBackend, SamplerKind};
use pdiff::runtime::{Provider, RuntimeOptions, Sampler};
use std::path::PathBuf;
#[cfg(feature = "train")]
use std::path::Path;
#[cfg(feature = "train")]
use {
    pdiff::diffusion::sample_params,
    pdiff::model::{AutoencoderConfig, ConvSpec, DenoiserConfig, Preset},
    pdiff::params::{Layout, ParamSet},
    pdiff::train::{DeviceChoice, Generator, TrainConfig},
    rand::{Rng, SeedableRng},
};

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
}

#[cfg(feature = "train")]
fn synthetic_set(k: usize) -> ParamSet {
    let layout = Layout::from_shapes(&[("net.w", vec![6, 20]), ("net.b", vec![6]), ("head.w", vec![3, 6])]).unwrap();
    let d = layout.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let base: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut data = Vec::with_capacity(k * d);
    for _ in 0..k {
        data.extend(base.iter().map(|b| b + rng.random_range(-0.05..0.05)));
    }
    ParamSet::from_rows(layout, data, (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap()
}

#[cfg(feature = "train")]
fn train(preset: Preset) -> Generator {
    // One libtorch thread per test: the tests run in parallel on a 2-core machine.
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(preset);
    c.ae_steps = 10;
    c.diffusion_steps = 10;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    Generator::train(&synthetic_set(6), &c, &mut |_| true).unwrap()
}

#[cfg(feature = "train")]
fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-2.0..2.0))
}

#[cfg(feature = "train")]
fn check_preset(preset: Preset) {
    let g = train(preset);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    g.export_bundle(&bundle).unwrap();
    let sampler = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    assert_eq!(sampler.backend_name(), "onnxruntime-cpu");
    let d = g.latent_dim();

    // Denoiser and decoder on random inputs, several batch sizes (dynamic batch dimension).
    for (b, seed) in [(1usize, 3u64), (5, 4), (17, 5)] {
        let x = random(b, d, seed);
        let t: Vec<i64> = (0..b as i64).map(|i| (i * 97) % 1000).collect();
        let eps_tch = g.tch_denoiser().predict_noise(x.view(), &t, None).unwrap();
        let eps_ort = sampler.predict_noise(x.view(), &t, None).unwrap();
        let r = max_rel_diff(&eps_tch, &eps_ort);
        assert!(r < 1e-4, "{preset}: denoiser relative difference {r}");
        let p_tch = g.tch_decoder().decode(x.view()).unwrap();
        let p_ort = sampler.decode(x.view()).unwrap();
        let r = max_rel_diff(&p_tch, &p_ort);
        assert!(r < 1e-4, "{preset}: decoder relative difference {r}");
        assert_eq!(p_ort.ncols(), g.layout.param_count());
    }

    // The same seed gives the same parameters on both backends (shared sampler loop).
    for kind in [SamplerKind::Ddim { steps: 20 }, SamplerKind::Ddpm] {
        let a = sample_params(&g.tch_denoiser(), &g.tch_decoder(), &g.config.schedule, kind, 4, 11, &mut |_, _| true).unwrap();
        let b = sampler.sample(4, 11, kind, &mut |_, _| true).unwrap();
        let r = max_rel_diff(&a, &b);
        assert!(r < 1e-3, "{preset} {kind:?}: generated parameters differ by {r}");
    }

    // sampler.onnx (the whole DDIM loop in one graph) gives the step-by-step loop's parameters.
    let whole = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).unwrap();
    assert!(whole.runs_whole_loop() && !sampler.runs_whole_loop());
    for steps in [1, 20] {
        let kind = SamplerKind::Ddim { steps };
        let a = sampler.sample(4, 5, kind, &mut |_, _| true).unwrap();
        let b = whole.sample(4, 5, kind, &mut |_, _| true).unwrap();
        let r = max_rel_diff(&a, &b);
        assert!(r <= 1e-5, "{preset} DDIM-{steps}: sampler.onnx differs from the step loop by {r}");
    }
}

#[cfg(feature = "train")]
#[test]
fn compact_preset_onnx_matches_tch() {
    check_preset(Preset::Compact);
}

#[cfg(feature = "train")]
#[test]
fn chunked_preset_onnx_matches_tch() {
    check_preset(Preset::Chunked);
}

#[cfg(feature = "train")]
#[test]
fn paper_preset_onnx_matches_tch() {
    check_preset(Preset::Paper);
}

/// Max |a - b| over max |a|.
fn rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn whole_loop_graph_matches_the_step_loop() {
    let step = Sampler::open(&fixture(), &cpu()).unwrap();
    let whole = Sampler::open(&fixture(), &RuntimeOptions { whole_loop: Some(true), ..cpu() }).unwrap();
    assert!(!step.runs_whole_loop(), "auto on the CPU runs step by step");
    assert!(whole.runs_whole_loop());
    for (n, seed, steps) in [(1, 0, 1), (5, 3, 10), (17, 9, 50), (2, 4, 1000)] {
        let kind = SamplerKind::Ddim { steps };
        let a = step.sample(n, seed, kind, &mut |_, _| true).unwrap();
        let mut calls = Vec::new();
        let b = whole
            .sample(n, seed, kind, &mut |done, total| {
                calls.push((done, total));
                true
            })
            .unwrap();
        let r = rel_diff(&a, &b);
        assert!(r <= 1e-5, "n {n}, DDIM-{steps}: sampler.onnx differs from the step loop by {r}");
        assert_eq!(calls, vec![(steps, steps)], "one progress report, at the end");
    }
    // Out-of-range settings are errors on both paths, before anything runs.
    for s in [&step, &whole] {
        let err = s.sample(2, 0, SamplerKind::Ddim { steps: 1001 }, &mut |_, _| true).err().unwrap();
        assert!(matches!(&err, pdiff::Error::InvalidArgument { field, .. } if field == "steps"), "{err}");
        assert!(err.to_string().contains("T = 1000"), "{err}");
        let err = s.sample(2, 0, SamplerKind::Ddim { steps: 0 }, &mut |_, _| true).err().unwrap();
        assert!(err.to_string().contains("at least 1 step"), "{err}");
        assert!(s.sample(0, 0, SamplerKind::Ddim { steps: 5 }, &mut |_, _| true).is_err());
    }
    // DDPM has no loop graph: it runs step by step on the same sampler.
    let a = step.sample(2, 1, SamplerKind::Ddpm, &mut |_, _| true).unwrap();
    let b = whole.sample(2, 1, SamplerKind::Ddpm, &mut |_, _| true).unwrap();
    assert_eq!(a, b);
    // Off means off, even with the graph present.
    let off = Sampler::open(&fixture(), &RuntimeOptions { whole_loop: Some(false), ..cpu() }).unwrap();
    assert!(!off.runs_whole_loop());
}

#[test]
fn whole_loop_on_a_bundle_without_the_graph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fixture_copy(dir.path());
    // An older bundle: no sampler.onnx, not in the manifest.
    std::fs::remove_file(bundle.join("sampler.onnx")).unwrap();
    let mpath = bundle.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["files"].as_object_mut().unwrap().remove("sampler");
    m["sha256"].as_object_mut().unwrap().remove("sampler.onnx");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let s = Sampler::open(&bundle, &cpu()).unwrap();
    assert!(!s.runs_whole_loop());
    s.sample(2, 0, SamplerKind::Ddim { steps: 5 }, &mut |_, _| true).unwrap();
    let err = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).err().unwrap();
    assert!(matches!(err, pdiff::Error::Bundle { .. }) && err.to_string().contains("no sampler.onnx"), "{err}");
}

#[test]
fn auto_provider_reports_what_runs_and_why() {
    let cpu_only = !pdiff::runtime::cuda_available(&cpu()).unwrap();
    let s = Sampler::open(&fixture(), &RuntimeOptions::default()).unwrap();
    let b = s.backend();
    assert!(b.library.is_file(), "{}", b.library.display());
    if cpu_only {
        assert_eq!(b.name, "onnxruntime-cpu");
        assert!(b.detail.contains("CUDA was not used") && b.detail.contains("without the CUDA execution provider"), "{}", b.detail);
        assert!(b.detail.contains(&b.library.display().to_string()), "{}", b.detail);
    } else {
        assert_eq!(b.name, "onnxruntime-cuda", "{}", b.detail);
    }
    let c = Sampler::open(&fixture(), &cpu()).unwrap();
    assert_eq!((c.backend_name(), c.backend().detail.as_str()), ("onnxruntime-cpu", "CPU execution provider (asked for)"));
}

#[test]
fn cuda_failures_name_the_missing_piece() {
    use pdiff::runtime::{explain_cuda_failure, CudaPreload};
    let preload = CudaPreload { searched: vec![PathBuf::from("/site/nvidia/cu13/lib")], ..Default::default() };
    let cases = [
        (
            "Failed to load library libonnxruntime_providers_cuda.so with error: libonnxruntime_providers_cuda.so: cannot open shared object file: No such file or directory",
            "provider library libonnxruntime_providers_cuda.so is missing",
        ),
        (
            "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory",
            "CUDA library libcublasLt.so.13 was not found (searched /site/nvidia/cu13/lib",
        ),
        ("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version", "NVIDIA driver is missing or too old"),
        ("CUDA failure 100: no CUDA-capable device is detected", "no usable CUDA device"),
        (
            "denoiser.onnx: This session contains graph nodes that are assigned to the default CPU EP, but fallback to CPU EP has been explicitly disabled by the user.",
            "has no CUDA kernel",
        ),
        ("something else entirely", "could not be created"),
    ];
    for (message, words) in cases {
        let text = explain_cuda_failure(message, &preload);
        assert!(text.contains(words) && text.contains(message), "{message:?} -> {text:?}");
    }
    let missing = CudaPreload { missing: vec![("libcudnn.so.9".into(), "not found".into())], ..Default::default() };
    let text = explain_cuda_failure("CUDNN failure 1", &missing);
    assert!(text.contains("libcudnn.so.9") && text.contains("could not be created"), "{text}");
}

#[test]
fn runtime_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fixture_copy(dir.path());
    let cpu = cpu();

    // CUDA explicitly required on a runtime without it: an error, never a silent fallback.
    if !pdiff::runtime::cuda_available(&cpu).unwrap() {
        let err = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cuda, ..Default::default() }).err().unwrap();
        assert!(matches!(err, pdiff::Error::DeviceUnavailable(_)), "{err}");
        assert!(err.to_string().contains("CUDA"), "{err}");
        // Auto falls back to the CPU and says so.
        let s = Sampler::open(&bundle, &RuntimeOptions::default()).unwrap();
        assert_eq!(s.backend_name(), "onnxruntime-cpu");
    }

    // Wrong input shapes.
    let s = Sampler::open(&bundle, &cpu).unwrap();
    let latent_dim = s.manifest().latent_dim;
    let bad = Array2::<f32>::zeros((2, latent_dim + 1));
    let err = s.predict_noise(bad.view(), &[0, 0], None).err().unwrap();
    assert!(err.to_string().contains("denoiser input"), "{err}");
    let err = s.decode(bad.view()).err().unwrap();
    assert!(err.to_string().contains("decoder input"), "{err}");
    let err = s.predict_noise(Array2::<f32>::zeros((2, latent_dim)).view(), &[0], None).err().unwrap();
    assert!(err.to_string().contains("t [1]"), "{err}");
    // Caller buffer too small.
    let mut buf = vec![0f32; 3];
    let err = s.sample_into(2, 0, SamplerKind::Ddim { steps: 5 }, None, &mut buf, &mut |_, _| true).err().unwrap();
    assert!(err.to_string().contains("needed"), "{err}");

    // Missing and corrupt graph files.
    std::fs::remove_file(bundle.join("denoiser.onnx")).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(matches!(err, pdiff::Error::Bundle { .. }) && err.to_string().contains("denoiser.onnx"), "{err}");
    std::fs::copy(fixture().join("denoiser.onnx"), bundle.join("denoiser.onnx")).unwrap();
    Sampler::open(&bundle, &cpu).unwrap();
    let mut bytes = std::fs::read(bundle.join("decoder.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(bundle.join("decoder.onnx"), &bytes).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(err.to_string().contains("decoder.onnx") && err.to_string().contains("sha256"), "{err}");

    // Runtime library not found.
    let err = pdiff::runtime::library_path(Some(std::path::Path::new("/nonexistent/libonnxruntime.so"))).err().unwrap();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn sampler_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Sampler>();
    let s = std::sync::Arc::new(Sampler::open(&fixture(), &RuntimeOptions { max_sessions: Some(3), ..cpu() }).unwrap());
    let kind = SamplerKind::Ddim { steps: 10 };
    let sequential: Vec<Array2<f32>> = (0..8).map(|seed| s.sample(2, seed, kind, &mut |_, _| true).unwrap()).collect();
    let handles: Vec<_> = (0..8u64)
        .map(|seed| {
            let s = s.clone();
            std::thread::spawn(move || s.sample(2, seed, kind, &mut |_, _| true).unwrap())
        })
        .collect();
    for (seed, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), sequential[seed], "seed {seed}");
    }
}

/// Rewrite tests/fixtures/tiny-bundle (run by hand when the bundle format changes):
/// `cargo test --release --test runtime -- --ignored regenerate_fixture_bundle`.
#[cfg(feature = "train")]
#[test]
#[ignore]
fn regenerate_fixture_bundle() {
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 200;
    c.diffusion_steps = 300;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.autoencoder = Some(AutoencoderConfig {
        encoder: vec![ConvSpec { channels: 4, kernel: 8, stride: 8, padding: 0 }, ConvSpec { channels: 8, kernel: 8, stride: 8, padding: 0 }],
        decoder_channels: vec![4, 1],
        final_kernel: None,
        latent_dim: 16,
        chunked: None,
    });
    c.denoiser = Some(DenoiserConfig::Mlp { hidden: 32, blocks: 1, time_dim: 16 });
    let g = Generator::train(&synthetic_set(12), &c, &mut |_| true).unwrap();
    g.export_bundle(&fixture()).unwrap();
}

/// A copy of the fixture whose file `file` was changed by `edit` (ONNX protobuf) and whose
/// manifest was changed by `edit_manifest`, with the hashes recomputed: a bundle another tool
/// could have written, consistent in itself but not what this library writes.
#[cfg(feature = "train")]
fn foreign_bundle(dir: &Path, file: &str, edit: impl FnOnce(&mut pdiff::onnx::proto::ModelProto), edit_manifest: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    use prost::Message;
    let b = fixture_copy(dir);
    let path = b.join(file);
    let mut model = pdiff::onnx::proto::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    edit(&mut model);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let mpath = b.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    edit_manifest(&mut m);
    for f in ["decoder.onnx", "denoiser.onnx", "sampler.onnx"] {
        m["sha256"][f] = serde_json::json!(pdiff::bundle::sha256_hex(&std::fs::read(b.join(f)).unwrap()));
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    b
}

/// Rename a graph output (and the node output that produces it).
#[cfg(feature = "train")]
fn rename_output(model: &mut pdiff::onnx::proto::ModelProto, from: &str, to: &str) {
    let g = model.graph.as_mut().unwrap();
    for o in g.output.iter_mut().filter(|o| o.name.as_deref() == Some(from)) {
        o.name = Some(to.into());
    }
    for n in &mut g.node {
        for o in n.output.iter_mut().filter(|o| o.as_str() == from) {
            *o = to.into();
        }
    }
}

#[cfg(feature = "train")]
#[test]
fn foreign_graphs_are_refused_with_names() {
    use pdiff::onnx::proto::tensor_proto::DataType;
    let open = |b: &Path| Sampler::open(b, &cpu()).err().expect("a foreign bundle must be refused");
    let check = |err: pdiff::Error, words: &[&str]| {
        let text = err.to_string();
        assert!(matches!(err, pdiff::Error::Bundle { .. }), "{text}");
        for w in words {
            assert!(text.contains(w), "{text:?} lacks {w:?}");
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut next = || {
        n += 1;
        let d = tmp.path().join(format!("case{n}"));
        std::fs::create_dir(&d).unwrap();
        d
    };
    // The denoiser's output renamed: the sampler would look for 'eps'.
    let b = foreign_bundle(&next(), "denoiser.onnx", |m| rename_output(m, "eps", "noise"), |_| {});
    check(open(&b), &["denoiser.onnx", "output 'eps' is missing", "'noise'"]);
    // The decoder's input renamed.
    let b = foreign_bundle(
        &next(),
        "decoder.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            g.input[0].name = Some("latent".into());
            for node in &mut g.node {
                for i in node.input.iter_mut().filter(|i| i.as_str() == "z") {
                    *i = "latent".into();
                }
            }
        },
        |_| {},
    );
    check(open(&b), &["decoder.onnx", "input 'z' is missing", "'latent'"]);
    // The timestep input declared int32.
    let b = foreign_bundle(
        &next(),
        "denoiser.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            let t = g.input.iter_mut().find(|i| i.name.as_deref() == Some("t")).unwrap();
            if let Some(pdiff::onnx::proto::type_proto::Value::TensorType(tt)) = t.r#type.as_mut().unwrap().value.as_mut() {
                tt.elem_type = Some(DataType::Int32 as i32);
            }
        },
        |_| {},
    );
    check(open(&b), &["denoiser.onnx", "input 't'", "Int32", "expected Int64"]);
    // The manifest's parameter width disagrees with the decoder's output (the last tensor
    // dropped from the layout): [B, 144] from the graph, D = 126 in the manifest.
    let b = foreign_bundle(
        &next(),
        "decoder.onnx",
        |_| {},
        |m| {
            let layout = m["layout"].as_array_mut().unwrap();
            layout.pop();
            m["param_count"] = serde_json::json!(126);
        },
    );
    check(open(&b), &["decoder.onnx", "output 'params' has size 144 on axis 1", "the manifest says 126"]);
    // An extra required input the sampler does not feed.
    let b = foreign_bundle(
        &next(),
        "denoiser.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            let mut extra = g.input[0].clone();
            extra.name = Some("temperature".into());
            g.input.push(extra);
        },
        |_| {},
    );
    check(open(&b), &["denoiser.onnx", "unexpected input 'temperature'"]);
    // sampler.onnx is checked too when it is used.
    let b = foreign_bundle(&next(), "sampler.onnx", |m| rename_output(m, "params", "weights"), |_| {});
    Sampler::open(&b, &cpu()).expect("auto on the CPU does not use sampler.onnx");
    check(
        Sampler::open(&b, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).err().unwrap(),
        &["sampler.onnx", "output 'params' is missing", "'weights'"],
    );
}

/// decoder.onnx and denoiser.onnx hold no node whose output ONNX Runtime keeps in host memory
/// (Shape, Size): their consumers would be placed on the CPU ("CPU-preferred" nodes), and a
/// required CUDA provider, which disables the CPU fallback, would refuse the graph. (sampler.onnx
/// has such bookkeeping for its Loop and is opened with the fallback on: src/runtime/session.rs.)
#[cfg(feature = "train")]
#[test]
fn strict_cuda_graphs_hold_no_shape_nodes() {
    use prost::Message;
    for file in ["decoder.onnx", "denoiser.onnx"] {
        let bytes = std::fs::read(fixture().join(file)).unwrap();
        let model = pdiff::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let ops: Vec<&str> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap_or("")).collect();
        assert!(ops.len() > 5, "{file}: {ops:?}");
        for op in ["Shape", "Size"] {
            assert!(!ops.contains(&op), "{file} has a {op} node: {ops:?}");
        }
    }
}

/// Streaming into host tensors: each buffer receives exactly the values `sample_to_dir` writes
/// into the safetensors files for the same seed (bit for bit), for every tensor or a subset, in
/// the layout's order or another; bad buffers are refused, naming the tensor.
#[test]
fn sample_into_tensors_equals_sample_to_dir() {
    use pdiff::runtime::TensorSink;
    let s = Sampler::open(&fixture(), &cpu()).unwrap();
    let kind = SamplerKind::Ddim { steps: 10 };
    let n = 5;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen");
    let files = s.sample_to_dir(n, 7, kind, None, &out, &mut |_, _| true).unwrap();
    assert_eq!(files.len(), n);
    // What the files hold, per tensor: n x numel values, model by model.
    let layout = s.layout().clone();
    let mut from_files: Vec<Vec<u32>> = vec![Vec::new(); layout.tensors.len()];
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (i, t) in layout.tensors.iter().enumerate() {
            let view = st.tensor(&t.name).unwrap();
            assert_eq!(view.shape(), t.shape.as_slice());
            from_files[i].extend(view.data().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())));
        }
    }
    // Every tensor, given in reverse order.
    let mut bufs: Vec<Vec<f32>> = layout.tensors.iter().map(|t| vec![f32::NAN; n * t.numel()]).collect();
    {
        let mut sinks: Vec<TensorSink<'_>> = bufs.iter_mut().enumerate().rev().map(|(tensor, out)| TensorSink { tensor, out }).collect();
        s.sample_into_tensors(n, 7, kind, None, &mut sinks, &mut |_, _| true).unwrap();
    }
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(common::bits(b), from_files[i], "tensor {}", layout.tensors[i].name);
    }
    // One tensor only (the others are generated and dropped); DDPM as well.
    let head = layout.index_of("head.w").unwrap();
    let mut only = vec![0f32; n * layout.tensors[head].numel()];
    s.sample_into_tensors(n, 7, kind, None, &mut [TensorSink { tensor: head, out: &mut only }], &mut |_, _| true).unwrap();
    assert_eq!(common::bits(&only), from_files[head]);
    let flat = s.sample(2, 3, SamplerKind::Ddpm, &mut |_, _| true).unwrap();
    let t = &layout.tensors[head];
    let mut ddpm = vec![0f32; 2 * t.numel()];
    s.sample_into_tensors(2, 3, SamplerKind::Ddpm, None, &mut [TensorSink { tensor: head, out: &mut ddpm }], &mut |_, _| true).unwrap();
    let want: Vec<f32> = flat.rows().into_iter().flat_map(|r| r.as_slice().unwrap()[t.offset..t.offset + t.numel()].to_vec()).collect();
    assert_eq!(common::bits(&ddpm), common::bits(&want));

    // Refusals name the tensor (or the index), before any sampling.
    let mut short = vec![0f32; n * layout.tensors[head].numel() - 1];
    let (field, msg) = common::invalid_err(s.sample_into_tensors(n, 7, kind, None, &mut [TensorSink { tensor: head, out: &mut short }], &mut |_, _| true));
    assert_eq!(field, "buffers");
    assert!(msg.contains("'head.w'") && msg.contains(&format!("{} floats given", short.len())) && msg.contains("5 x 18 = 90"), "{msg}");
    let (mut a, mut b) = (vec![0f32; n * 18], vec![0f32; n * 18]);
    let (_, msg) = common::invalid_err(s.sample_into_tensors(
        n,
        7,
        kind,
        None,
        &mut [TensorSink { tensor: head, out: &mut a }, TensorSink { tensor: head, out: &mut b }],
        &mut |_, _| true,
    ));
    assert!(msg.contains("'head.w' is given twice"), "{msg}");
    let (_, msg) = common::invalid_err(s.sample_into_tensors(n, 7, kind, None, &mut [TensorSink { tensor: 3, out: &mut a }], &mut |_, _| true));
    assert!(msg.contains("index 3 is out of range") && msg.contains("3 tensors"), "{msg}");
    let (_, msg) = common::invalid_err(s.sample_into_tensors(n, 7, kind, None, &mut [], &mut |_, _| true));
    assert!(msg.contains("no tensor buffer"), "{msg}");
}

/// `sample_to_dir` writes model by model, in chunks: the files are those of one batch of n.
#[test]
fn sample_to_dir_equals_one_batch() {
    let s = Sampler::open(&fixture(), &cpu()).unwrap();
    let kind = SamplerKind::Ddim { steps: 5 };
    let all = s.sample(4, 9, kind, &mut |_, _| true).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let files = s.sample_to_dir(4, 9, kind, None, &tmp.path().join("gen"), &mut |_, _| true).unwrap();
    for (i, f) in files.iter().enumerate() {
        assert!(f.ends_with(format!("gen_{i:04}.safetensors")), "{f:?}");
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(bytes, s.layout().to_safetensors(all.row(i).as_slice().unwrap()).unwrap(), "model {i}");
    }
}
