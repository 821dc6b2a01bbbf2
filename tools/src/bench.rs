//! `pdiff bench`: sampling speed, latency and peak memory of the tch and ONNX Runtime backends
//! with DDPM-1000 and DDIM-50, plus the accuracy their models reach on a reference task. Every
//! sampling measurement is one warm-up run (not counted: first-call allocations, lazy
//! initialisation, cold caches), then the median of `runs` (>= 3) timed runs.
use crate::eval::{accuracies, evaluate_rows, Summary};
use crate::zoo::Task;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::error::Result;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::runtime::{RuntimeOptions, Sampler};
use pdiff_core::training::DeviceChoice;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub backend: String,
    pub sampler: String,
    pub n: usize,
    /// Median of the timed runs (after one warm-up run).
    pub seconds: f64,
    /// Every timed run, in order.
    pub run_seconds: Vec<f64>,
    /// N / median seconds.
    pub models_per_second: f64,
    /// Peak resident memory of the process over the timed runs (MiB): the peak is reset after
    /// the warm-up, before the first timed run.
    pub peak_rss_mib: Option<f64>,
    pub test_accuracy: Option<Summary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: String,
    pub cores: usize,
    /// libtorch's intra-op threads (the tch rows and training).
    #[serde(default)]
    pub torch_threads: usize,
    pub bundle: String,
    pub param_count: usize,
    /// Warm-up runs before each measurement (not timed) and timed runs per measurement.
    pub warmup_runs: usize,
    pub runs: usize,
    pub rows: Vec<BenchRow>,
    /// Median latency of one model (n = 1, DDIM-50) over `latency_runs` timed runs after a
    /// warm-up, seconds, per backend.
    pub single_sample_latency_s: Vec<(String, f64)>,
    pub latency_runs: usize,
    /// DDPM-1000 on tch time / DDIM-50 on ONNX Runtime time, for N models.
    pub speedup_ddim_ort_vs_ddpm_tch: f64,
    /// Training of a generator on the given checkpoints (when asked for).
    pub training: Option<TrainingBench>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingBench {
    pub k: usize,
    pub param_count: usize,
    pub preset: String,
    pub ae_steps: usize,
    pub diffusion_steps: usize,
    pub ae_seconds: f64,
    pub diffusion_seconds: f64,
    pub ae_ms_per_step: f64,
    pub diffusion_ms_per_step: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Whether `bytes` are a report of `pdiff bench` (which `pdiff bench --out` may replace).
pub fn is_report(bytes: &[u8]) -> bool {
    serde_json::from_slice::<BenchReport>(bytes).is_ok() || serde_json::from_slice::<BatchSweep>(bytes).is_ok()
}

/// Train a generator on `set` with `config` and measure time and peak memory: one run (a
/// training run takes minutes; its times per step are means over every step).
pub fn train(set: &pdiff_core::params::ParamSet, config: &pdiff_core::training::TrainConfig) -> Result<TrainingBench> {
    reset_peak_rss();
    let g = pdiff_train::Generator::train(set, config, &mut |_| true)?;
    let h = &g.history;
    Ok(TrainingBench {
        k: set.k(),
        param_count: set.layout.param_count(),
        preset: config.preset.to_string(),
        ae_steps: config.ae_steps,
        diffusion_steps: config.diffusion_steps,
        ae_seconds: h.ae_seconds,
        diffusion_seconds: h.diffusion_seconds,
        ae_ms_per_step: 1e3 * h.ae_seconds / config.ae_steps.max(1) as f64,
        diffusion_ms_per_step: 1e3 * h.diffusion_seconds / config.diffusion_steps.max(1) as f64,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); false if unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size of this process, MiB (VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| format!(", {:.0} GiB RAM", kb / 1048576.0))
        .unwrap_or_default();
    format!("{cpu}, {} cores{mem}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Timed runs of one measurement, after a warm-up run.
#[derive(Clone, Debug)]
pub struct Measured<T> {
    /// The output of the last timed run.
    pub output: T,
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// Peak RSS over the timed runs (the peak is reset after the warm-up).
    pub peak_rss_mib: Option<f64>,
}

/// The least number of timed runs a median is taken over.
pub const MIN_RUNS: usize = 3;
/// Timed runs of the single-model latency.
pub const LATENCY_RUNS: usize = 5;

/// Median of a non-empty list (mean of the middle two for an even length).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Run `work` once untimed (warm-up), then `runs` (>= [`MIN_RUNS`]) timed times.
pub fn measure<T>(runs: usize, mut work: impl FnMut(usize) -> Result<T>) -> Result<Measured<T>> {
    if runs < MIN_RUNS {
        return Err(pdiff_core::Error::invalid("runs", format!("{runs}: a median needs at least {MIN_RUNS} timed runs")));
    }
    work(0)?;
    reset_peak_rss();
    let mut seconds = Vec::with_capacity(runs);
    let mut output = None;
    for i in 1..=runs {
        let t0 = Instant::now();
        let out = work(i)?;
        seconds.push(t0.elapsed().as_secs_f64());
        output = Some(out);
    }
    let peak_rss_mib = peak_rss_mib();
    Ok(Measured { output: output.expect("runs >= 1"), median_seconds: median(&seconds), seconds, peak_rss_mib })
}

pub fn run(bundle: &Path, n: usize, runs: usize, rt: &RuntimeOptions, task: Option<&dyn Task>, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let g = pdiff_train::Generator::load_bundle(bundle, DeviceChoice::Cpu)?;
    let sampler = Sampler::open(bundle, rt)?;
    let layout = sampler.layout().clone();
    let kinds = [SamplerKind::Ddpm, SamplerKind::Ddim { steps: 50 }];
    let sample = |backend: &str, kind: SamplerKind, n: usize, seed: u64| {
        let request = SampleRequest::new(n).seed(seed).sampler(kind);
        let source: &dyn ModelSource = if backend == "tch" { &g } else { &sampler };
        source.sample(&request, &mut no_progress).map(|s| s.params)
    };
    let mut rows = Vec::new();
    for backend in ["tch", sampler.backend_name()] {
        for kind in kinds {
            progress(&format!("{backend} {}: 1 warm-up + {runs} runs", kind.label()));
            // Same seed every run: the same models, so the accuracy is that of any run.
            let m = measure(runs, |_| sample(backend, kind, n, 7))?;
            let test_accuracy = match task {
                Some(t) => Some(Summary::of(&accuracies(&evaluate_rows(t, &layout, m.output.as_slice().expect("row-major"), false)?))),
                None => None,
            };
            rows.push(BenchRow {
                backend: backend.to_string(),
                sampler: kind.label(),
                n,
                seconds: m.median_seconds,
                run_seconds: m.seconds,
                models_per_second: n as f64 / m.median_seconds,
                peak_rss_mib: m.peak_rss_mib,
                test_accuracy,
            });
        }
    }
    let mut latency = Vec::new();
    for backend in ["tch", sampler.backend_name()] {
        progress(&format!("{backend} single-model latency: 1 warm-up + {LATENCY_RUNS} runs"));
        let m = measure(LATENCY_RUNS, |i| sample(backend, SamplerKind::Ddim { steps: 50 }, 1, i as u64).map(|_| ()))?;
        latency.push((backend.to_string(), m.median_seconds));
    }
    let ddpm_tch = rows.iter().find(|r| r.backend == "tch" && r.sampler == "ddpm").map(|r| r.seconds).unwrap_or(f64::NAN);
    let ddim_ort = rows.iter().find(|r| r.backend != "tch" && r.sampler == "ddim-50").map(|r| r.seconds).unwrap_or(f64::NAN);
    Ok(BenchReport {
        machine: machine_description(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        torch_threads: tch::get_num_threads().max(0) as usize,
        bundle: bundle.display().to_string(),
        param_count: layout.param_count(),
        warmup_runs: 1,
        runs,
        rows,
        single_sample_latency_s: latency,
        latency_runs: LATENCY_RUNS,
        speedup_ddim_ort_vs_ddpm_tch: ddpm_tch / ddim_ort,
        training: None,
    })
}

/// One batch size of a throughput sweep (`pdiff bench sweep`): the ONNX Runtime sampler
/// asked for `batch` models per call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRow {
    pub batch: usize,
    /// Host threads calling the one sampler at once, each for `batch` models (`--callers`).
    #[serde(default = "one")]
    pub callers: usize,
    /// The first call. It carries the provider's one-time work (CUDA kernel loading,
    /// cuBLAS/cuDNN handles, memory arena growth), so it is not counted below, unless it took
    /// [`SWEEP_SINGLE_CALL_SECONDS`] or more: then it is the only call, and counted.
    pub first_call_s: f64,
    pub first_call_counted: bool,
    /// Calls measured (see [`sweep`] for how many).
    pub calls: usize,
    /// Median and fastest time of one call, seconds: the latency of getting `batch` models.
    pub median_s: f64,
    pub min_s: f64,
    /// `callers * batch / median_s`: models per second over all callers.
    pub models_per_second: f64,
    /// Peak resident memory of the process while this batch size ran (MiB).
    pub peak_rss_mib: Option<f64>,
}

/// `pdiff bench sweep`: one bundle, one execution provider, several batch sizes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchSweep {
    pub machine: String,
    pub cores: usize,
    pub bundle: String,
    pub param_count: usize,
    pub preset: String,
    /// The execution provider asked for (auto, cpu, cuda) and the backend that ran
    /// (`Sampler::backend_name`, e.g. onnxruntime-cuda).
    pub provider: String,
    pub backend: String,
    /// The ONNX Runtime library given explicitly, if any.
    pub ort_library: Option<String>,
    pub sampler: String,
    /// DDIM ran as one graph (sampler.onnx) rather than step by step (`--whole-loop`).
    #[serde(default)]
    pub whole_loop: bool,
    pub seed: u64,
    pub rows: Vec<BatchRow>,
}

fn one() -> usize {
    1
}

/// A sweep keeps calling until this much time was measured per batch size (and at least
/// [`SWEEP_MIN_CALLS`] calls), at most [`SWEEP_MAX_CALLS`] calls.
pub const SWEEP_TARGET_SECONDS: f64 = 2.0;
pub const SWEEP_MIN_CALLS: usize = 3;
pub const SWEEP_MAX_CALLS: usize = 50;
/// A first call this long is the measurement itself: one-time work is small against it, and a
/// second call would double a sweep that already takes minutes (the CPU provider at batch 1,000
/// with the paper preset's denoiser).
pub const SWEEP_SINGLE_CALL_SECONDS: f64 = 20.0;

/// Time the ONNX Runtime sampler of `bundle` at each batch size: one untimed first call, then
/// calls until [`SWEEP_TARGET_SECONDS`] were measured and at least [`SWEEP_MIN_CALLS`] calls
/// were made (a single call when the first one already took longer than the target), at most
/// [`SWEEP_MAX_CALLS`]. A first call of [`SWEEP_SINGLE_CALL_SECONDS`] or more is the only one,
/// and counted: a slow provider at a large batch stays bounded.
///
/// Each batch size runs once per entry of `callers`: that many host threads sample from the one
/// sampler at the same time (each `batch` models, its own seed), and a call is timed from the
/// first thread's start to the last one's end. ONNX Runtime's Run is thread-safe and the
/// sampler keeps a pool of sessions, so two callers on two cores should come near twice one's
/// models per second when one caller's intra-op threads leave cores idle.
pub fn sweep(
    bundle: &Path,
    rt: &RuntimeOptions,
    batch_sizes: &[usize],
    callers: &[usize],
    kind: SamplerKind,
    progress: &mut dyn FnMut(&str),
) -> Result<BatchSweep> {
    let sampler = Sampler::open(bundle, rt)?;
    let seed = 7;
    let mut rows = Vec::new();
    for &batch in batch_sizes {
        for &callers in callers {
            progress(&format!("{} {} batch {batch}, {callers} caller(s)", sampler.backend_name(), kind.label()));
            reset_peak_rss();
            let timed = |s: &Sampler| -> Result<f64> {
                let t0 = Instant::now();
                if callers == 1 {
                    s.sample(&SampleRequest::new(batch).seed(seed).sampler(kind), &mut no_progress)?;
                } else {
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..callers as u64)
                            .map(|i| scope.spawn(move || s.sample(&SampleRequest::new(batch).seed(seed + i).sampler(kind), &mut no_progress).map(drop)))
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Err(pdiff_core::Error::invalid("callers", "a sampling thread panicked"))))
                            .collect::<Result<Vec<()>>>()
                    })?;
                }
                Ok(t0.elapsed().as_secs_f64())
            };
            let first_call_s = timed(&sampler)?;
            let first_call_counted = first_call_s >= SWEEP_SINGLE_CALL_SECONDS;
            let min_calls = if first_call_s < SWEEP_TARGET_SECONDS { SWEEP_MIN_CALLS } else { 1 };
            let mut times = Vec::new();
            if first_call_counted {
                times.push(first_call_s);
            }
            while times.len() < SWEEP_MAX_CALLS && (times.len() < min_calls || times.iter().sum::<f64>() < SWEEP_TARGET_SECONDS) {
                times.push(timed(&sampler)?);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let median_s = median_of_sorted(&times);
            rows.push(BatchRow {
                batch,
                callers,
                first_call_s,
                first_call_counted,
                calls: times.len(),
                median_s,
                min_s: times[0],
                models_per_second: (callers * batch) as f64 / median_s,
                peak_rss_mib: peak_rss_mib(),
            });
        }
    }
    Ok(BatchSweep {
        machine: machine_description(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        bundle: bundle.display().to_string(),
        param_count: sampler.layout().param_count(),
        preset: sampler.manifest().preset.to_string(),
        provider: format!("{:?}", rt.provider).to_lowercase(),
        backend: sampler.backend_name().to_string(),
        ort_library: rt.library.as_ref().map(|p| p.display().to_string()),
        sampler: kind.label(),
        whole_loop: sampler.runs_whole_loop(),
        seed,
        rows,
    })
}

/// Median of a sorted, non-empty slice (the mean of the two middle values for an even length).
fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
