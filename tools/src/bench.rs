//! `pdiff bench`: sampling speed, latency and peak memory of the tch and ONNX Runtime backends
//! with DDPM-1000 and DDIM-50, plus the accuracy their models reach on a reference task.
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
    pub seconds: f64,
    pub models_per_second: f64,
    /// Peak resident memory of the process during this run (MiB), after a reset of the peak.
    pub peak_rss_mib: Option<f64>,
    pub test_accuracy: Option<Summary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: String,
    pub cores: usize,
    pub bundle: String,
    pub param_count: usize,
    pub rows: Vec<BenchRow>,
    /// Median latency of one model (n = 1, DDIM-50), seconds, per backend.
    pub single_sample_latency_s: Vec<(String, f64)>,
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
    serde_json::from_slice::<BenchReport>(bytes).is_ok()
}

/// Train a generator on `set` with `config` and measure time and peak memory.
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

pub fn run(bundle: &Path, n: usize, rt: &RuntimeOptions, task: Option<&dyn Task>, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let g = pdiff::train::Generator::load_bundle(bundle, DeviceChoice::Cpu)?;
    let sampler = Sampler::open(bundle, rt)?;
    let layout = sampler.layout().clone();
    let schedule = sampler.manifest().schedule.clone();
    let kinds = [SamplerKind::Ddpm, SamplerKind::Ddim { steps: 50 }];
    let mut rows = Vec::new();
    for backend in ["tch", sampler.backend_name()] {
        for kind in kinds {
            progress(&format!("{backend} {}", kind.label()));
            reset_peak_rss();
            let t0 = Instant::now();
            let out = if backend == "tch" {
                sample_params(&g.tch_denoiser(), &g.tch_decoder(), &schedule, kind, n, 7, &mut |_, _| true)?
            } else {
                sampler.sample(n, 7, kind, &mut |_, _| true)?
            };
            let seconds = t0.elapsed().as_secs_f64();
            let peak = peak_rss_mib();
            let test_accuracy = match task {
                Some(t) => Some(Summary::of(&accuracies(&evaluate_rows(t, &layout, out.as_slice().unwrap(), false)?))),
                None => None,
            };
            rows.push(BenchRow {
                backend: backend.to_string(),
                sampler: kind.label(),
                n,
                seconds,
                models_per_second: n as f64 / seconds,
                peak_rss_mib: peak,
                test_accuracy,
            });
        }
    }
    let mut latency = Vec::new();
    for backend in ["tch", sampler.backend_name()] {
        let mut times: Vec<f64> = (0..5)
            .map(|i| {
                let t0 = Instant::now();
                let kind = SamplerKind::Ddim { steps: 50 };
                let r = if backend == "tch" {
                    sample_params(&g.tch_denoiser(), &g.tch_decoder(), &schedule, kind, 1, i, &mut |_, _| true).map(|_| ())
                } else {
                    sampler.sample(1, i, kind, &mut |_, _| true).map(|_| ())
                };
                r.map(|_| t0.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        latency.push((backend.to_string(), times[2]));
    }
    let ddpm_tch = rows.iter().find(|r| r.backend == "tch" && r.sampler == "ddpm").map(|r| r.seconds).unwrap_or(f64::NAN);
    let ddim_ort = rows.iter().find(|r| r.backend != "tch" && r.sampler == "ddim-50").map(|r| r.seconds).unwrap_or(f64::NAN);
    Ok(BenchReport {
        machine: machine_description(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        bundle: bundle.display().to_string(),
        param_count: layout.param_count(),
        rows,
        single_sample_latency_s: latency,
        speedup_ddim_ort_vs_ddpm_tch: ddpm_tch / ddim_ort,
        training: None,
    })
}
