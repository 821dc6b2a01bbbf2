//! The CUDA paths, on a machine with an NVIDIA GPU and a build linked with libtorch_cuda
//! (`PDIFF_TORCH_CUDA=1`, which scripts/setup.sh sets when it installs the full venv).
//!
//! Every test here is `#[ignore]`d, so that a plain `cargo test` lists them as ignored instead of
//! passing them on a machine without a GPU. scripts/test.sh runs them with `--ignored` when
//! scripts/lib/gpu.sh finds a usable GPU (and prints `SKIPPED: CUDA tests (<reason>)`
//! otherwise); scripts/gpu-check.sh runs them on the GPU machine. Run without a GPU, each test
//! fails: it asserts that libtorch sees a CUDA device first.
mod common;
use common::*;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::training::{DeviceChoice, Progress};
use pdiff_test_support::*;
use pdiff_train::Generator;

/// Fails, naming what is missing, when libtorch sees no CUDA device.
fn require_cuda() {
    assert!(
        tch::Cuda::is_available() && tch::Cuda::device_count() > 0,
        "libtorch sees no CUDA device: this test needs an NVIDIA GPU and a build with PDIFF_TORCH_CUDA=1 \
         (scripts/setup.sh on a GPU machine); it is #[ignore]d so that it only runs where one is visible"
    );
}

/// Tolerance between the same generator sampled on CUDA and on the CPU, relative to the largest
/// parameter. Both runs share the weights (exported from the CUDA generator, f32 exact), the
/// noise (ChaCha8 on the host, same seed) and the sampler loop (host arithmetic): only the
/// networks' f32 arithmetic differs (cuBLAS vs the CPU's reduction order, ~1e-6 relative per
/// call; libtorch leaves TF32 off for matmuls, and the compact networks are matmuls, GroupNorm
/// and element-wise ops). DDIM's early steps amplify a noise-prediction error a few times each,
/// so differences up to ~1e-4 are expected; 1e-3 is the bound the ONNX-vs-tch parity test uses
/// for two implementations of the same networks (tests/runtime.rs). Another seed's samples
/// differ by 5-9e-2 on this data (measured on the CPU, seeds 0-5), so the bound still tells a
/// wrong generator or a wrong seed from the right one: the test checks that margin too.
const CUDA_CPU_TOLERANCE: f32 = 1e-3;

#[test]
#[ignore = "needs a CUDA GPU: run by scripts/test.sh and scripts/gpu-check.sh when one is visible"]
fn training_on_cuda() {
    require_cuda();
    let _guard = torch_lock();
    let set = trajectory_set();
    let mut config = small_config(0);
    // Long enough for both losses to fall clearly (CPU, seeds 0-5: the autoencoder's mean loss
    // over the last 20 steps is ~150x below the first 20, the denoiser's ~2.5x).
    config.ae_steps = 200;
    config.diffusion_steps = 200;
    config.device = DeviceChoice::Cuda(0);
    let mut steps = 0;
    let g = Generator::train(&set, &config, &mut |p: &Progress| {
        assert!(p.loss.is_finite(), "{} step {}: loss {}", p.stage.name(), p.step, p.loss);
        steps += 1;
        true
    })
    .unwrap();
    assert_eq!(g.device, tch::Device::Cuda(0), "trained on {:?}", g.device);
    assert_eq!(steps, 400);

    // Losses: finite, and falling (mean of the last 20 steps below the mean of the first 20).
    let h = &g.history;
    assert_eq!((h.ae_loss.len(), h.diffusion_loss.len()), (200, 200));
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    for (stage, losses) in [("autoencoder", &h.ae_loss), ("diffusion", &h.diffusion_loss)] {
        assert!(losses.iter().all(|l| l.is_finite() && *l >= 0.0), "{stage}: a loss is not finite");
        let (early, late) = (mean(&losses[..20]), mean(&losses[180..]));
        assert!(late < early, "{stage} loss should fall on CUDA: first 20 steps {early:.4e}, last 20 {late:.4e}");
    }
    assert!(h.final_reconstruction_mse.is_finite());

    // The same generator's CPU copy, through its bundle: the same samples within the tolerance.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    g.export_bundle(&bundle).unwrap();
    let cpu = Generator::load_bundle(&bundle, DeviceChoice::Cpu).unwrap();
    assert_eq!(cpu.device, tch::Device::Cpu);
    let kind = SamplerKind::Ddim { steps: 10 };
    let sample = |g: &Generator, seed| g.sample(&SampleRequest::new(6).seed(seed).sampler(kind), &mut no_progress).unwrap().params;
    let on_cuda = sample(&g, 11);
    let on_cpu = sample(&cpu, 11);
    assert_eq!(on_cuda.dim(), (6, set.layout.param_count()));
    assert!(on_cuda.iter().all(|x| x.is_finite()));
    let r = max_rel_diff(&on_cuda, &on_cpu);
    assert!(r < CUDA_CPU_TOLERANCE, "CUDA and CPU samples of one generator differ by {r:.3e} (relative), bound {CUDA_CPU_TOLERANCE:e}");
    let other = max_rel_diff(&on_cuda, &sample(&cpu, 12));
    assert!(other > 10.0 * CUDA_CPU_TOLERANCE, "another seed differs by only {other:.3e}: the tolerance would not tell them apart");
}

// ---- ONNX Runtime's CUDA execution provider (needs the onnxruntime-gpu library: scripts/setup.sh
// installs it on a GPU machine and .cargo/config.toml's ORT_DYLIB_PATH names it) ----

use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};

/// Fails, naming what is missing, when the ONNX Runtime library has no usable CUDA provider.
fn require_ort_cuda() {
    let cpu = RuntimeOptions { provider: Provider::Cpu, ..Default::default() };
    let available = pdiff_core::runtime::cuda_available(&cpu).unwrap();
    assert!(
        available,
        "ONNX Runtime's CUDA execution provider is not usable here (library {:?}): this test needs an \
         NVIDIA GPU and the onnxruntime-gpu library (scripts/setup.sh on a GPU machine)",
        pdiff_core::runtime::library_path(None)
    );
}

fn cuda_runtime(whole_loop: Option<bool>) -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cuda, whole_loop, ..Default::default() }
}

/// Required CUDA reports CUDA (never a CPU fallback under its name), its detail says it was asked
/// for, and both the step loop and the whole-loop graph run on it and give the CPU's samples.
#[test]
#[ignore = "needs a CUDA GPU and onnxruntime-gpu: run by scripts/test.sh and scripts/gpu-check.sh when one is visible"]
fn required_cuda_sampler_runs_on_cuda() {
    require_ort_cuda();
    let fixture = fixture();
    let cpu = Sampler::open(&fixture, &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    let kind = pdiff_core::diffusion::SamplerKind::Ddim { steps: 10 };
    let reference = cpu.sample(&SampleRequest::new(6).seed(3).sampler(kind), &mut no_progress).unwrap().params;
    for whole_loop in [Some(false), Some(true), None] {
        let s = Sampler::open(&fixture, &cuda_runtime(whole_loop)).unwrap();
        let b = s.backend();
        assert_eq!(b.name, "onnxruntime-cuda", "{whole_loop:?}: {}", b.detail);
        assert!(b.detail.contains("CUDA execution provider") && b.detail.contains("asked for"), "{}", b.detail);
        let got = s.sample(&SampleRequest::new(6).seed(3).sampler(kind), &mut no_progress).unwrap().params;
        let diff = max_rel_diff(&reference, &got);
        assert!(diff < 1e-3, "{whole_loop:?}: CUDA and CPU samples differ by {diff:.3e} (relative)");
    }
}

/// Required CUDA disables ONNX Runtime's CPU fallback: a graph with a node the CUDA provider has
/// no kernel for is refused at open instead of running partly on the CPU under CUDA's name.
/// (Auto opens the same bundle on the CPU and says why.) The node: `Det`, on the denoiser's
/// output (see [`route_noise_through_det`]).
#[test]
#[ignore = "needs a CUDA GPU and onnxruntime-gpu: run by scripts/test.sh and scripts/gpu-check.sh when one is visible"]
fn required_cuda_has_no_cpu_fallback() {
    require_ort_cuda();
    let dir = tempfile::tempdir().unwrap();
    let bundle = copy_fixture(&dir.path().join("bundle"));
    let fixture = fixture();
    route_noise_through_det(&bundle.join("denoiser.onnx"));
    let manifest_path = bundle.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["sha256"]["denoiser.onnx"] = serde_json::json!(pdiff_core::bundle::sha256_hex(&std::fs::read(bundle.join("denoiser.onnx")).unwrap()));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let err = Sampler::open(&bundle, &cuda_runtime(Some(false))).err().expect("required CUDA must refuse a graph it cannot run whole");
    assert!(err.to_string().contains("denoiser.onnx"), "{err}");
    let auto = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(false), ..Default::default() }).unwrap();
    assert_eq!(auto.backend_name(), "onnxruntime-cpu");
    assert!(auto.backend().detail.contains("CUDA was not used"), "{}", auto.backend().detail);
    // The rewritten graph is sound: on the CPU it samples what the fixture samples.
    let kind = pdiff_core::diffusion::SamplerKind::Ddim { steps: 5 };
    let original = Sampler::open(&fixture, &RuntimeOptions { provider: Provider::Cpu, ..Default::default() }).unwrap();
    assert_eq!(
        auto.sample(&SampleRequest::new(3).seed(1).sampler(kind), &mut no_progress).unwrap().params,
        original.sample(&SampleRequest::new(3).seed(1).sampler(kind), &mut no_progress).unwrap().params
    );
}

/// Rewrites the denoiser so that its output `eps` = Reshape(Det(Reshape(eps', [-1, 1, 1])),
/// Shape(eps')): the same values (the determinant of a 1x1 matrix is its entry) through `Det`,
/// which ONNX Runtime implements on the CPU only.
fn route_noise_through_det(path: &std::path::Path) {
    use pdiff_train::onnx::proto::{tensor_proto::DataType, ModelProto, NodeProto, TensorProto};
    use prost::Message;
    let mut model = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let g = model.graph.as_mut().unwrap();
    let out = g.output[0].name.clone().unwrap();
    let producer = g.node.iter_mut().find(|n| n.output.contains(&out)).expect("a node writes the output");
    for o in producer.output.iter_mut().filter(|o| **o == out) {
        *o = "eps_before_det".into();
    }
    g.initializer.push(TensorProto {
        name: Some("det_shape".into()),
        dims: vec![3],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![-1, 1, 1],
        ..Default::default()
    });
    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: Some(format!("test_{output}")),
        ..Default::default()
    };
    g.node.push(node("Shape", &["eps_before_det"], "eps_shape"));
    g.node.push(node("Reshape", &["eps_before_det", "det_shape"], "eps_matrices"));
    g.node.push(node("Det", &["eps_matrices"], "eps_det"));
    g.node.push(node("Reshape", &["eps_det", "eps_shape"], &out));
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// tch on CUDA and ONNX Runtime on CUDA sample the same generator alike (same seed).
#[test]
#[ignore = "needs a CUDA GPU and onnxruntime-gpu: run by scripts/test.sh and scripts/gpu-check.sh when one is visible"]
fn tch_cuda_and_ort_cuda_agree() {
    require_cuda();
    require_ort_cuda();
    let _guard = torch_lock();
    let set = trajectory_set();
    let mut config = small_config(1);
    config.ae_steps = 100;
    config.diffusion_steps = 100;
    config.device = DeviceChoice::Cuda(0);
    let g = Generator::train(&set, &config, &mut |_| true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    g.export_bundle(&bundle).unwrap();
    let kind = SamplerKind::Ddim { steps: 10 };
    let by_tch = g.sample(&SampleRequest::new(6).seed(5).sampler(kind), &mut no_progress).unwrap().params;
    let s = Sampler::open(&bundle, &cuda_runtime(Some(false))).unwrap();
    assert_eq!(s.backend_name(), "onnxruntime-cuda");
    let by_ort = s.sample(&SampleRequest::new(6).seed(5).sampler(kind), &mut no_progress).unwrap().params;
    let r = max_rel_diff(&by_tch, &by_ort);
    assert!(r < CUDA_CPU_TOLERANCE, "tch-CUDA and ORT-CUDA samples differ by {r:.3e} (relative), bound {CUDA_CPU_TOLERANCE:e}");
}
