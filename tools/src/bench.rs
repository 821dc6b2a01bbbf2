//! `pdiff bench`: sampling speed, latency and peak memory of the tch and ONNX Runtime backends
//! with DDPM-1000 and DDIM-50, plus the accuracy their models reach on a reference task. Every
//! sampling measurement is one warm-up run (not counted: first-call allocations, lazy
//! initialisation, cold caches), then the median of `runs` (>= 3) timed runs.
use pdiff::diffusion::{sample_params, SamplerKind};
use pdiff::error::Result;
use crate::eval::{accuracies, evaluate_rows, Summary};
use pdiff::runtime::{RuntimeOptions, Sampler};
use pdiff::train::DeviceChoice;
use crate::zoo::Task;
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

/// Train a generator on `set` with `config` and measure time and peak memory: one run (a
/// training run takes minutes; its times per step are means over every step).
pub fn train(set: &pdiff::params::ParamSet, config: &pdiff::train::TrainConfig) -> Result<TrainingBench> {
    reset_peak_rss();
    let g = pdiff::train::Generator::train(set, config, &mut |_| true)?;
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
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Run `work` once untimed (warm-up), then `runs` (>= [`MIN_RUNS`]) timed times.
pub fn measure<T>(runs: usize, mut work: impl FnMut(usize) -> Result<T>) -> Result<Measured<T>> {
    if runs < MIN_RUNS {
        return Err(pdiff::Error::invalid("runs", format!("{runs}: a median needs at least {MIN_RUNS} timed runs")));
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
    let g = pdiff::train::Generator::load_bundle(bundle, DeviceChoice::Cpu)?;
    let sampler = Sampler::open(bundle, rt)?;
    let layout = sampler.layout().clone();
    let schedule = sampler.manifest().schedule.clone();
    let kinds = [SamplerKind::Ddpm, SamplerKind::Ddim { steps: 50 }];
    let sample = |backend: &str, kind: SamplerKind, n: usize, seed: u64| {
        if backend == "tch" {
            sample_params(&g.tch_denoiser(), &g.tch_decoder(), &schedule, kind, n, seed, &mut |_, _| true)
        } else {
            sampler.sample(n, seed, kind, &mut |_, _| true)
        }
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
