//! Serving bundles with ONNX Runtime, on the committed fixture bundle: the whole DDIM loop as
//! one graph against the step loop, providers, errors, thread safety, and every way out
//! (arrays, host tensors, files) giving the same models. Parity with tch and foreign graphs are
//! pdiff-train's (crates/train/tests/onnx_graphs.rs).
use ndarray::Array2;
use pdiff_core::diffusion::{DecoderBackend, DenoiserBackend, SamplerKind};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest, TensorSink};
use pdiff_core::output::IfForeign;
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_test_support::{copy_fixture, fixture};
use std::path::PathBuf;

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
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
        let a = step.sample(&SampleRequest::new(n).seed(seed).sampler(kind), &mut no_progress).unwrap().params;
        let mut calls = Vec::new();
        let b = whole
            .sample(&SampleRequest::new(n).seed(seed).sampler(kind), &mut |done, total| {
                calls.push((done, total));
                true
            })
            .unwrap()
            .params;
        let r = rel_diff(&a, &b);
        assert!(r <= 1e-5, "n {n}, DDIM-{steps}: sampler.onnx differs from the step loop by {r}");
        assert_eq!(calls, vec![(steps, steps)], "one progress report, at the end");
    }
    // Out-of-range settings are errors on both paths, before anything runs.
    for s in [&step, &whole] {
        let err = s.sample(&SampleRequest::new(2).seed(0).sampler(SamplerKind::Ddim { steps: 1001 }), &mut no_progress).err().unwrap();
        assert!(matches!(&err, pdiff_core::Error::InvalidArgument { field, .. } if field == "steps"), "{err}");
        assert!(err.to_string().contains("T = 1000"), "{err}");
        let err = s.sample(&SampleRequest::new(2).seed(0).sampler(SamplerKind::Ddim { steps: 0 }), &mut no_progress).err().unwrap();
        assert!(err.to_string().contains("at least 1 step"), "{err}");
        assert!(s.sample(&SampleRequest::new(0).seed(0).sampler(SamplerKind::Ddim { steps: 5 }), &mut no_progress).is_err());
    }
    // DDPM has no loop graph: it runs step by step on the same sampler.
    let a = step.sample(&SampleRequest::new(2).seed(1).sampler(SamplerKind::Ddpm), &mut no_progress).unwrap().params;
    let b = whole.sample(&SampleRequest::new(2).seed(1).sampler(SamplerKind::Ddpm), &mut no_progress).unwrap().params;
    assert_eq!(a, b);
    // Off means off, even with the graph present.
    let off = Sampler::open(&fixture(), &RuntimeOptions { whole_loop: Some(false), ..cpu() }).unwrap();
    assert!(!off.runs_whole_loop());
}

#[test]
fn whole_loop_on_a_bundle_without_the_graph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = copy_fixture(&dir.path().join("bundle"));
    // An older bundle: no sampler.onnx, not in the manifest.
    std::fs::remove_file(bundle.join("sampler.onnx")).unwrap();
    let mpath = bundle.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["files"].as_object_mut().unwrap().remove("sampler");
    m["sha256"].as_object_mut().unwrap().remove("sampler.onnx");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let s = Sampler::open(&bundle, &cpu()).unwrap();
    assert!(!s.runs_whole_loop());
    s.sample(&SampleRequest::new(2).seed(0).sampler(SamplerKind::Ddim { steps: 5 }), &mut no_progress).unwrap();
    let err = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).err().unwrap();
    assert!(matches!(err, pdiff_core::Error::Bundle { .. }) && err.to_string().contains("no sampler.onnx"), "{err}");
}

#[test]
fn auto_provider_reports_what_runs_and_why() {
    let cpu_only = !pdiff_core::runtime::cuda_available(&cpu()).unwrap();
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
    use pdiff_core::runtime::{explain_cuda_failure, CudaPreload};
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
    let bundle = copy_fixture(&dir.path().join("bundle"));
    let cpu = cpu();

    // CUDA explicitly required on a runtime without it: an error, never a silent fallback.
    if !pdiff_core::runtime::cuda_available(&cpu).unwrap() {
        let err = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cuda, ..Default::default() }).err().unwrap();
        assert!(matches!(err, pdiff_core::Error::DeviceUnavailable(_)), "{err}");
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
    let err = s.sample_into(&SampleRequest::new(2).seed(0).sampler(SamplerKind::Ddim { steps: 5 }), &mut buf, &mut no_progress).err().unwrap();
    assert!(err.to_string().contains("needed"), "{err}");

    // Missing and corrupt graph files.
    std::fs::remove_file(bundle.join("denoiser.onnx")).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(matches!(err, pdiff_core::Error::Bundle { .. }) && err.to_string().contains("denoiser.onnx"), "{err}");
    std::fs::copy(fixture().join("denoiser.onnx"), bundle.join("denoiser.onnx")).unwrap();
    Sampler::open(&bundle, &cpu).unwrap();
    let mut bytes = std::fs::read(bundle.join("decoder.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(bundle.join("decoder.onnx"), &bytes).unwrap();
    let err = Sampler::open(&bundle, &cpu).err().unwrap();
    assert!(err.to_string().contains("decoder.onnx") && err.to_string().contains("sha256"), "{err}");

    // Runtime library not found.
    let err = pdiff_core::runtime::library_path(Some(std::path::Path::new("/nonexistent/libonnxruntime.so"))).err().unwrap();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn sampler_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Sampler>();
    let s = std::sync::Arc::new(Sampler::open(&fixture(), &RuntimeOptions { max_sessions: Some(3), ..cpu() }).unwrap());
    let kind = SamplerKind::Ddim { steps: 10 };
    let sequential: Vec<Array2<f32>> = (0..8).map(|seed| s.sample(&SampleRequest::new(2).seed(seed).sampler(kind), &mut no_progress).unwrap().params).collect();
    let handles: Vec<_> = (0..8u64)
        .map(|seed| {
            let s = s.clone();
            std::thread::spawn(move || s.sample(&SampleRequest::new(2).seed(seed).sampler(kind), &mut no_progress).unwrap().params)
        })
        .collect();
    for (seed, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), sequential[seed], "seed {seed}");
    }
}

/// Streaming into host tensors: each buffer receives exactly the values `sample_to_dir` writes
/// into the safetensors files for the same seed (bit for bit), for every tensor or a subset, in
/// the layout's order or another; bad buffers are refused, naming the tensor.
#[test]
fn sample_into_tensors_equals_sample_to_dir() {
    let s = Sampler::open(&fixture(), &cpu()).unwrap();
    let kind = SamplerKind::Ddim { steps: 10 };
    let n = 5;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen");
    let files = s.sample_to_dir(&SampleRequest::new(n).seed(7).sampler(kind), &out, IfForeign::Refuse, &mut no_progress).unwrap().0;
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
        s.sample_into_tensors(&SampleRequest::new(n).seed(7).sampler(kind), &mut sinks, &mut no_progress).unwrap();
    }
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(pdiff_test_support::bits(b), from_files[i], "tensor {}", layout.tensors[i].name);
    }
    // One tensor only (the others are generated and dropped); DDPM as well.
    let head = layout.index_of("head.w").unwrap();
    let mut only = vec![0f32; n * layout.tensors[head].numel()];
    s.sample_into_tensors(&SampleRequest::new(n).seed(7).sampler(kind), &mut [TensorSink { tensor: head, out: &mut only }], &mut no_progress).unwrap();
    assert_eq!(pdiff_test_support::bits(&only), from_files[head]);
    let flat = s.sample(&SampleRequest::new(2).seed(3).sampler(SamplerKind::Ddpm), &mut no_progress).unwrap().params;
    let t = &layout.tensors[head];
    let mut ddpm = vec![0f32; 2 * t.numel()];
    s.sample_into_tensors(&SampleRequest::new(2).seed(3).sampler(SamplerKind::Ddpm), &mut [TensorSink { tensor: head, out: &mut ddpm }], &mut no_progress)
        .unwrap();
    let want: Vec<f32> = flat.rows().into_iter().flat_map(|r| r.as_slice().unwrap()[t.offset..t.offset + t.numel()].to_vec()).collect();
    assert_eq!(pdiff_test_support::bits(&ddpm), pdiff_test_support::bits(&want));

    // Refusals name the tensor (or the index), before any sampling.
    let mut short = vec![0f32; n * layout.tensors[head].numel() - 1];
    let (field, msg) = pdiff_test_support::invalid_err(s.sample_into_tensors(
        &SampleRequest::new(n).seed(7).sampler(kind),
        &mut [TensorSink { tensor: head, out: &mut short }],
        &mut no_progress,
    ));
    assert_eq!(field, "buffers");
    assert!(msg.contains("'head.w'") && msg.contains(&format!("{} floats given", short.len())) && msg.contains("5 x 18 = 90"), "{msg}");
    let (mut a, mut b) = (vec![0f32; n * 18], vec![0f32; n * 18]);
    let (_, msg) = pdiff_test_support::invalid_err(s.sample_into_tensors(
        &SampleRequest::new(n).seed(7).sampler(kind),
        &mut [TensorSink { tensor: head, out: &mut a }, TensorSink { tensor: head, out: &mut b }],
        &mut no_progress,
    ));
    assert!(msg.contains("'head.w' is given twice"), "{msg}");
    let (_, msg) = pdiff_test_support::invalid_err(s.sample_into_tensors(
        &SampleRequest::new(n).seed(7).sampler(kind),
        &mut [TensorSink { tensor: 3, out: &mut a }],
        &mut no_progress,
    ));
    assert!(msg.contains("index 3 is out of range") && msg.contains("3 tensors"), "{msg}");
    let (_, msg) = pdiff_test_support::invalid_err(s.sample_into_tensors(&SampleRequest::new(n).seed(7).sampler(kind), &mut [], &mut no_progress));
    assert!(msg.contains("no tensor buffer"), "{msg}");
}

/// `sample_to_dir` writes model by model, in chunks: the files are those of one batch of n.
#[test]
fn sample_to_dir_equals_one_batch() {
    let s = Sampler::open(&fixture(), &cpu()).unwrap();
    let kind = SamplerKind::Ddim { steps: 5 };
    let all = s.sample(&SampleRequest::new(4).seed(9).sampler(kind), &mut no_progress).unwrap().params;
    let tmp = tempfile::tempdir().unwrap();
    let files = s.sample_to_dir(&SampleRequest::new(4).seed(9).sampler(kind), &tmp.path().join("gen"), IfForeign::Refuse, &mut no_progress).unwrap().0;
    for (i, f) in files.iter().enumerate() {
        assert!(f.ends_with(format!("gen_{i:04}.safetensors")), "{f:?}");
        let bytes = std::fs::read(f).unwrap();
        let request = SampleRequest::new(4).seed(9).sampler(kind);
        let metadata = s.provenance(&request).metadata(i, 0, None);
        assert_eq!(bytes, s.layout().to_safetensors_with(all.row(i).as_slice().unwrap(), Some(&metadata)).unwrap(), "model {i}");
    }
}
