//! The reference host of ONNX Runtime adapters on mnist-cnn-bn (`pdiff bench adapters`): the
//! task's network written as ONNX, its generated tensors (the last two BatchNorm layers)
//! exposed as graph inputs, `n` models sampled as adapters in memory, and ONE ONNX Runtime
//! session (the Rust host, [`pdiff_core::runtime::AdapterHost`]) classifying the test split with
//! each adapter active in turn. Its accuracies must equal the tools' own evaluation of the same
//! models (libtorch), and its logits are compared with the tools' logits. Then the timings of
//! docs/results/adapters.md: a Run with an adapter against the plain model's, and adapters
//! activated per second in one session against a session per model.
use crate::bench::machine_description;
use crate::zoo::cnn_bn::CnnBn;
use crate::zoo::Task;
use pdiff_core::adapter::{model_adapter, AdapterVersions, NameMap};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::error::{Error, Result};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::runtime::{AdapterHost, RuntimeOptions, Sampler};
use pdiff_train::onnx::expose::{expose, with_values};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The report (`pdiff bench adapters --out`, docs/results/adapters-cpu.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterReport {
    pub pdiff_bench_adapters: u32,
    pub machine: String,
    pub task: String,
    pub models: usize,
    pub seed: u64,
    pub sampler: String,
    pub test_images: usize,
    /// Accuracy on the test split of each model: through the host (ONNX Runtime, one session,
    /// the model's adapter active) and through the tools' evaluation (libtorch).
    pub host_accuracies: Vec<f64>,
    pub tools_accuracies: Vec<f64>,
    /// Models whose two accuracies are equal (exactly: the same number of test images right).
    pub equal_accuracies: usize,
    /// Largest |host - tools| logit over all models and test images, and that over the largest
    /// |tools logit| of its model.
    pub max_abs_logit_diff: f64,
    pub max_rel_logit_diff: f64,
    pub timings: AdapterTimings,
    /// The whole conditional request on mnist-tasks; None when no tasks generator was given
    /// (the bench says why).
    pub conditional: Option<ConditionalRequest>,
}

/// Latencies of one Run on one test image, milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterTimings {
    pub runs: usize,
    /// The task's model as written, nothing exposed (ONNX Runtime folds every BatchNorm).
    pub plain_run: RunLatency,
    /// The exposed model without an adapter (its initializers as defaults).
    pub exposed_run: RunLatency,
    /// The exposed model with an adapter active, a different one on every run.
    pub adapter_run: RunLatency,
    /// adapter_run p50 / plain_run p50 (target: at most 1.5).
    pub adapter_over_plain_p50: f64,
    /// Per model: load its adapter from memory and run one image, in one session.
    pub one_session_models_per_s: f64,
    /// Per model: a session over the model with its values as initializers, and one image.
    pub session_per_model_models_per_s: f64,
}

/// Whether `bytes` is a previous report of this kind (replaced without --force).
pub fn is_report(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).map(|v| v.get("pdiff_bench_adapters").is_some()).unwrap_or(false)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(mut seconds: Vec<f64>) -> RunLatency {
    seconds.sort_by(|a, b| a.total_cmp(b));
    RunLatency { p50_ms: 1e3 * percentile(&seconds, 0.5), p99_ms: 1e3 * percentile(&seconds, 0.99) }
}

fn accuracy(logits: &[f32], labels: &[i64]) -> f64 {
    let right = logits.chunks_exact(10).zip(labels).filter(|(row, &l)| argmax(row) == l as usize).count();
    right as f64 / labels.len() as f64
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// What another host needs to repeat the check (scripts/adapter_host.py, ONNX Runtime's
/// Python API): the task's model, the exposed model, the adapters, the test split (raw
/// little-endian f32 images [N, 784] and i64 labels), in an output directory of kind samples.
fn write_artifacts(dir: &Path, plain: &[u8], exposed: &[u8], adapters: &[Vec<u8>], images: &[f32], labels: &[i64]) -> Result<()> {
    pdiff_core::output::write_output_dir(dir, pdiff_core::output::OutputKind::Samples, pdiff_core::output::IfForeign::Refuse, |d| {
        let put = |name: &str, bytes: &[u8]| pdiff_core::files::write_atomic(&d.join(name), bytes);
        put("mnist-cnn-bn.onnx", plain)?;
        put("mnist-cnn-bn-adaptable.onnx", exposed)?;
        for (i, a) in adapters.iter().enumerate() {
            put(&format!("gen_{i:04}.onnx_adapter"), a)?;
        }
        put("test_images.f32", &images.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        put("test_labels.i64", &labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    })
}

/// The whole check and the timings.
/// What `pdiff bench adapters` measures ([`run`]).
pub struct AdapterBench<'a> {
    /// One of the task's checkpoints: its fixed part is the network the host serves.
    pub checkpoint: &'a Path,
    /// A generator trained on the task.
    pub bundle: &'a Path,
    pub n: usize,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// Timed single-image runs per case and round.
    pub runs: usize,
    pub runtime: &'a RuntimeOptions,
    /// Where to write the models, adapters and test split for another host, if anywhere.
    pub artifacts: Option<&'a Path>,
}

pub fn run(task: &CnnBn, b: &AdapterBench<'_>, progress: &mut dyn FnMut(&str)) -> Result<AdapterReport> {
    task.load_base(b.checkpoint)?;
    let s = Sampler::open(b.bundle, b.runtime)?;
    let want = task.layout();
    s.layout().check_matches(&want.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect::<Vec<_>>())?;
    // The bundle's layout places the values of a generated row (its order may differ from the
    // task's: `--select` order, or the checkpoint's): adapters and the tools both split rows by it.
    let layout = s.layout().clone();
    let plain = task.onnx_model()?;
    let names = NameMap::default();
    let exposed = expose(&plain, "mnist-cnn-bn.onnx", &layout, &names, s.bundle_sha256().unwrap_or_default())?;
    let host = AdapterHost::open(&exposed.bytes, "mnist-cnn-bn (exposed)", b.runtime)?;
    let plain_host = AdapterHost::open(&plain, "mnist-cnn-bn", b.runtime)?;

    let (n, runs) = (b.n, b.runs);
    progress(&format!("sampling {n} models"));
    let request = SampleRequest::new(n).seed(b.seed).sampler(b.sampler);
    let models = s.sample(&request, &mut no_progress)?.params;
    let adapters: Vec<Vec<u8>> = models
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            model_adapter(&layout, row.as_slice().expect("standard layout"), &names, AdapterVersions { adapter_version: i as i32, model_version: 0 })
        })
        .collect::<Result<_>>()?;

    if let Some(dir) = b.artifacts {
        write_artifacts(dir, &plain, &exposed.bytes, &adapters, &task.images(false)?, task.labels(false))?;
    }
    let images = task.images(false)?;
    let labels = task.labels(false).to_vec();
    let count = labels.len();
    let (mut host_acc, mut tools_acc, mut max_abs, mut max_rel) = (Vec::new(), Vec::new(), 0f64, 0f64);
    for (i, (bytes, row)) in adapters.iter().zip(models.rows()).enumerate() {
        progress(&format!("model {}/{n}: host and tools on {count} test images", i + 1));
        let adapter = host.load_adapter(bytes, &format!("model {i}"))?;
        let got = host.run(&images, &[count, 784], Some(&adapter))?;
        let want = task.logits(&layout, row.as_slice().expect("standard layout"), false)?;
        if got.len() != want.len() {
            return Err(Error::Runtime(format!("model {i}: the host gave {} logits, the tools {}", got.len(), want.len())));
        }
        let scale = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64)).max(1e-12);
        let diff = got.iter().zip(&want).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
        max_abs = max_abs.max(diff);
        max_rel = max_rel.max(diff / scale);
        host_acc.push(accuracy(&got, &labels));
        tools_acc.push(accuracy(&want, &labels));
    }
    let equal = host_acc.iter().zip(&tools_acc).filter(|(a, b)| a == b).count();

    progress("timing single-image runs");
    let one = &images[..784];
    let time = |f: &mut dyn FnMut(usize) -> Result<()>| -> Result<Vec<f64>> {
        f(0)?;
        (0..runs)
            .map(|r| {
                let t0 = Instant::now();
                f(r)?;
                Ok(t0.elapsed().as_secs_f64())
            })
            .collect()
    };
    let loaded: Vec<_> = adapters.iter().enumerate().map(|(i, a)| host.load_adapter(a, &format!("model {i}"))).collect::<Result<_>>()?;
    // Interleaved rounds: the three cases see the same machine load.
    let (mut plain_s, mut exposed_s, mut adapter_s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..5 {
        plain_s.extend(time(&mut |_| plain_host.run(one, &[1, 784], None).map(drop))?);
        exposed_s.extend(time(&mut |_| host.run(one, &[1, 784], None).map(drop))?);
        adapter_s.extend(time(&mut |r| host.run(one, &[1, 784], Some(&loaded[(round * runs + r) % loaded.len()])).map(drop))?);
    }
    let (plain_run, exposed_run, adapter_run) = (latency(plain_s), latency(exposed_s), latency(adapter_s));

    progress("timing adapters activated vs a session per model");
    let t0 = Instant::now();
    for (i, bytes) in adapters.iter().enumerate() {
        let a = host.load_adapter(bytes, &format!("model {i}"))?;
        host.run(one, &[1, 784], Some(&a))?;
    }
    let one_session = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for (i, row) in models.rows().into_iter().enumerate() {
        let bytes = with_values(&plain, "mnist-cnn-bn.onnx", &layout, &names, row.as_slice().expect("standard layout"))?;
        AdapterHost::open(&bytes, &format!("model {i}"), b.runtime)?.run(one, &[1, 784], None)?;
    }
    let per_model = n as f64 / t0.elapsed().as_secs_f64();

    Ok(AdapterReport {
        pdiff_bench_adapters: 1,
        machine: machine_description(),
        task: task.name().into(),
        models: n,
        seed: b.seed,
        sampler: b.sampler.label(),
        test_images: count,
        host_accuracies: host_acc,
        tools_accuracies: tools_acc,
        equal_accuracies: equal,
        max_abs_logit_diff: max_abs,
        max_rel_logit_diff: max_rel,
        timings: AdapterTimings {
            runs: 5 * runs,
            adapter_over_plain_p50: adapter_run.p50_ms / plain_run.p50_ms,
            plain_run,
            exposed_run,
            adapter_run,
            one_session_models_per_s: one_session,
            session_per_model_models_per_s: per_model,
        },
        conditional: None,
    })
}

/// The whole conditional request on mnist-tasks: a host asks the tasks generator for a model of
/// a task's condition, makes its adapter in memory, activates it and classifies one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConditionalRequest {
    /// The task asked for (its code: character d is 1 when digit d is in the task's set).
    pub task: String,
    pub requests: usize,
    pub sampler: String,
    /// The classifier-free guidance scale of every request.
    pub guidance: f32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The first request's model on the task's test split: through the host (its adapter in the
    /// one session) and through the tools' evaluation (libtorch).
    pub host_accuracy: f64,
    pub tools_accuracy: f64,
}

/// [`conditional`]'s inputs.
pub struct ConditionalBench<'a> {
    /// A conditional generator trained on mnist-tasks (`pdiff demo --task mnist-tasks`).
    pub bundle: &'a Path,
    /// The task's code, e.g. a held-out task's.
    pub task_code: &'a str,
    pub requests: usize,
    pub sampler: SamplerKind,
    /// Classifier-free guidance (the tasks demo chooses 2 on seen tasks: a scale other than 1
    /// runs the denoiser twice per step).
    pub guidance: f32,
    pub runtime: &'a RuntimeOptions,
}

/// Time `requests` whole conditional requests (seeds 0, 1, ...; one model each) and classify
/// the task's test split with the first one's model.
pub fn conditional(tasks: &crate::zoo::mnist_tasks::MnistTasks, b: &ConditionalBench<'_>, progress: &mut dyn FnMut(&str)) -> Result<ConditionalRequest> {
    use crate::zoo::mnist_tasks::{DigitSet, MnistTasks};
    use pdiff_core::diffusion::Conditioning;
    let task = DigitSet::from_code(b.task_code)?;
    let condition = task.condition();
    let s = Sampler::open(b.bundle, b.runtime)?;
    let want = MnistTasks::layout();
    s.layout().check_matches(&want.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect::<Vec<_>>())?;
    let layout = s.layout().clone();
    // The host's model: the MLP, every tensor exposed (all of them are generated); its own
    // initializers (zeros) are never used, every run has an adapter.
    let plain = crate::zoo::mlp_onnx::network(&layout, &vec![0.0; layout.param_count()])?;
    let names = NameMap::default();
    let exposed = expose(&plain, "mnist-tasks.onnx", &layout, &names, s.bundle_sha256().unwrap_or_default())?;
    let host = AdapterHost::open(&exposed.bytes, "mnist-tasks (exposed)", b.runtime)?;
    let images = tasks.images(false)?;
    let one = &images[..784];
    let request = |seed: u64| SampleRequest::new(1).seed(seed).sampler(b.sampler).condition(Conditioning { values: &condition, guidance: b.guidance });
    progress(&format!("{} whole conditional requests for task {}", b.requests, b.task_code));
    let mut seconds = Vec::with_capacity(b.requests);
    for r in 0..=b.requests {
        let t0 = Instant::now();
        let (bytes, _) = s.sample_adapter(&request(r as u64), &names, &mut no_progress)?;
        let adapter = host.load_adapter(&bytes, "the request's adapter")?;
        let logits = host.run(one, &[1, 784], Some(&adapter))?;
        let _class = argmax(&logits);
        if r > 0 {
            seconds.push(t0.elapsed().as_secs_f64()); // request 0 warms up
        }
    }
    let lat = latency(seconds);
    // The first request's model, classified at once by the host, and by the tools.
    let (bytes, _) = s.sample_adapter(&request(1), &names, &mut no_progress)?;
    let model = s.sample(&request(1), &mut no_progress)?.params;
    let labels = tasks.task_labels(task, false)?;
    let host_logits = host.run(&images, &[labels.len(), 784], Some(&host.load_adapter(&bytes, "the request's adapter")?))?;
    let right = host_logits.chunks_exact(2).zip(&labels).filter(|(row, &l)| argmax(row) == l as usize).count();
    let tools = tasks.accuracies(&layout, model.as_slice().expect("standard layout"), task, false)?;
    Ok(ConditionalRequest {
        task: b.task_code.to_string(),
        requests: b.requests,
        sampler: b.sampler.label(),
        guidance: b.guidance,
        p50_ms: lat.p50_ms,
        p99_ms: lat.p99_ms,
        host_accuracy: right as f64 / labels.len() as f64,
        tools_accuracy: tools[0],
    })
}
