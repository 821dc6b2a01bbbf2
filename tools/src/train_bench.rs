//! `pdiff bench train`: how close each training stage gets to what this machine's CPU can
//! compute. For each case (a preset at a D), K synthetic trajectory checkpoints (as `pdiff bench
//! scale`) and a short training; per stage (autoencoder, diffusion): ms per step, the floating
//! point operations a step does (counted from the networks' shapes), GFLOP/s reached, and that
//! against the machine's matmul peak measured in the same run (libtorch multiplying two large
//! square matrices with the training's threads): the ratio, not the absolute time, is the
//! result. Everything is measured twice: on its own, and next to one competing busy
//! single-threaded process (what any user's machine has).
//!
//! Steps are timed by the training's progress callback: the first `warmup_steps` of each stage
//! are not counted (allocations, caches), and a stage's ms/step is the median of its next
//! `timed_steps` step times, so that a burst of other load on a shared machine moves it little.
use crate::bench::machine_description;
use pdiff_core::error::{Error, Result};
use pdiff_core::model::{AutoencoderConfig, DenoiserConfig, Preset, TokenMap};
use pdiff_core::params::synthetic_trajectory;
use pdiff_core::training::{DeviceChoice, Stage, TrainConfig};
use pdiff_train::Generator;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The cases of `pdiff bench train` without `--cases`: compact where it is the preset (small
/// D; at 10^6 its dense layers alone would need gigabytes), chunked from 10^5 to 10^6.
pub const DEFAULT_CASES: [(Preset, usize); 4] =
    [(Preset::Compact, 10_000), (Preset::Compact, 100_000), (Preset::Chunked, 100_000), (Preset::Chunked, 1_000_000)];

/// One stage of one case under one condition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainBenchRow {
    pub preset: String,
    pub d_requested: usize,
    pub param_count: usize,
    /// "autoencoder" or "diffusion".
    pub stage: String,
    /// "idle" (nothing of ours beside it) or "busy" (next to one busy single-threaded process).
    pub condition: String,
    /// Rows a step computes on: checkpoints of the batch (compact), tokens of the batch's
    /// checkpoints (chunked autoencoder), latents (diffusion).
    pub rows_per_step: usize,
    /// Median step time over the timed steps.
    pub ms_per_step: f64,
    /// Floating point operations of one step: 6 x the forward multiply-adds of the batch (a
    /// multiply-add is 2 operations; backward costs about twice the forward), matmuls and
    /// convolutions only (elementwise work, norms and the optimizer are not counted).
    pub flops_per_step: f64,
    pub gflops_per_second: f64,
    /// GFLOP/s reached over the matmul peak measured idle in the same run.
    pub fraction_of_peak: f64,
}

/// libtorch's matmul of two n x n f32 matrices: the best of `runs` after a warm-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatmulPeak {
    pub n: usize,
    pub runs: usize,
    pub idle_gflops_per_second: f64,
    pub busy_gflops_per_second: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainBenchReport {
    pub train_bench: bool,
    pub machine: String,
    /// Cores this process may run on (its affinity mask) and libtorch's training threads.
    pub cores: usize,
    pub threads: usize,
    /// `OMP_WAIT_POLICY` as the process saw it (the `pdiff` executable lends `passive` when
    /// unset; docs/api.md, "Threads").
    pub omp_wait_policy: Option<String>,
    pub k: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub matmul: MatmulPeak,
    pub rows: Vec<TrainBenchRow>,
}

/// Whether `bytes` are a `pdiff bench train` report.
pub fn is_report(bytes: &[u8]) -> bool {
    serde_json::from_slice::<TrainBenchReport>(bytes).map(|r| r.train_bench).unwrap_or(false)
}

/// What a train bench report is called where an existing file at its path is refused.
pub const REPORT_KIND: &str = "pdiff bench train report";

pub struct TrainBenchOptions {
    pub cases: Vec<(Preset, usize)>,
    pub k: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    /// libtorch threads (0: the training default).
    pub threads: usize,
    pub matmul_n: usize,
    pub seed: u64,
}

/// One busy single-threaded process (a shell loop), killed and reaped when dropped.
struct BusyProcess(std::process::Child);

impl BusyProcess {
    fn start() -> Result<Self> {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::invalid("bench", format!("cannot start the competing busy process (sh): {e}")))?;
        // Let it reach its loop before anything is timed.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(BusyProcess(child))
    }
}

impl Drop for BusyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GFLOP/s of libtorch's matmul of two n x n f32 matrices with `threads` threads: the best of
/// `runs` timed runs after one warm-up run.
pub fn matmul_gflops(n: usize, runs: usize, threads: usize) -> f64 {
    let previous = tch::get_num_threads();
    tch::set_num_threads(threads.max(1) as i32);
    let opts = (tch::Kind::Float, tch::Device::Cpu);
    let (a, b) = (tch::Tensor::randn([n as i64, n as i64], opts), tch::Tensor::randn([n as i64, n as i64], opts));
    let _ = a.matmul(&b);
    let best = (0..runs.max(1))
        .map(|_| {
            let t0 = Instant::now();
            let c = a.matmul(&b);
            let s = t0.elapsed().as_secs_f64();
            drop(c);
            s
        })
        .fold(f64::INFINITY, f64::min);
    if previous > 0 {
        tch::set_num_threads(previous);
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Forward multiply-adds of the autoencoder (encode + decode) for one row: one padded
/// checkpoint for the conv presets, one token for the chunked one.
pub fn autoencoder_forward_macs(cfg: &AutoencoderConfig, padded_len: usize) -> f64 {
    if let Some(spec) = &cfg.chunked {
        let (c, h, e) = (spec.chunk as f64, spec.hidden as f64, spec.token_dim as f64);
        // in, mid, out of the encoder; in, mid, out of the decoder.
        return 2.0 * (c * h + h * h + h * e);
    }
    let mut macs = 0.0;
    let (mut len, mut ch) = (padded_len as f64, 1.0);
    let mut lens = Vec::new();
    for c in &cfg.encoder {
        let out_len = ((len + 2.0 * c.padding as f64 - c.kernel as f64) / c.stride as f64).floor() + 1.0;
        macs += out_len * c.channels as f64 * ch * c.kernel as f64;
        lens.push(len);
        len = out_len;
        ch = c.channels as f64;
    }
    let flat = len * ch;
    macs += 2.0 * flat * cfg.latent_dim as f64; // the linear to the latent and back
    for (c, &out) in cfg.encoder.iter().rev().zip(&cfg.decoder_channels) {
        // A transposed convolution: every input position meets k weights per (in, out) pair.
        macs += len * ch * out as f64 * c.kernel as f64;
        len = lens.pop().unwrap_or(len);
        ch = out as f64;
    }
    if let Some(k) = cfg.final_kernel {
        macs += len * ch * k as f64;
    }
    macs
}

/// Forward multiply-adds of the denoiser for one latent of `latent_dim` values (time embedding
/// included; `condition_dim` for conditional generators).
pub fn denoiser_forward_macs(cfg: &DenoiserConfig, latent_dim: usize, condition_dim: usize) -> f64 {
    let d = latent_dim as f64;
    let t = cfg.time_dim() as f64;
    match cfg {
        DenoiserConfig::Mlp { hidden, blocks, .. } => {
            let h = *hidden as f64;
            t * t + t * h + condition_dim as f64 * h + d * h + *blocks as f64 * 2.0 * h * h + h * d
        }
        DenoiserConfig::Cnn { channels, kernel, .. } => {
            let convs: f64 = channels.windows(2).map(|w| d * w[0] as f64 * w[1] as f64 * *kernel as f64).sum();
            t * t + t * d + condition_dim as f64 * d + convs
        }
    }
}

/// Step times of one stage from the progress callback's timestamps.
fn median_step_ms(times: &[Instant], warmup: usize) -> Result<f64> {
    let steps: Vec<f64> = times.windows(2).skip(warmup.saturating_sub(1)).map(|w| 1e3 * (w[1] - w[0]).as_secs_f64()).collect();
    if steps.is_empty() {
        return Err(Error::invalid("timed-steps", "no step was timed"));
    }
    Ok(crate::bench::median(&steps))
}

/// Run every case idle and next to one busy process.
pub fn run(opts: &TrainBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<TrainBenchReport> {
    if opts.timed_steps < 3 || opts.warmup_steps < 1 {
        return Err(Error::invalid("timed-steps", format!("{} timed after {} warm-up steps: at least 3 after 1", opts.timed_steps, opts.warmup_steps)));
    }
    let base = TrainConfig { threads: opts.threads, ..TrainConfig::new(Preset::Compact) };
    let threads = pdiff_train::training_threads(&base);
    const MATMUL_RUNS: usize = 5;
    progress(&format!("matmul peak: {n} x {n}, {threads} thread(s), idle", n = opts.matmul_n));
    let idle_peak = matmul_gflops(opts.matmul_n, MATMUL_RUNS, threads);
    let busy_peak = {
        let _busy = BusyProcess::start()?;
        progress("matmul peak next to a busy process");
        matmul_gflops(opts.matmul_n, MATMUL_RUNS, threads)
    };
    let mut rows = Vec::new();
    for &(preset, d_req) in &opts.cases {
        let layout = crate::scale::layout_for(d_req)?;
        let d = layout.param_count();
        let mut config = TrainConfig::new(preset);
        config.ae_steps = opts.warmup_steps + opts.timed_steps;
        config.diffusion_steps = opts.warmup_steps + opts.timed_steps;
        config.seed = opts.seed;
        config.device = DeviceChoice::Cpu;
        config.threads = opts.threads;
        pdiff_train::check_memory(d, opts.k, &config)?;
        let set = synthetic_trajectory(layout.clone(), opts.k, 0.1, opts.seed)?;
        for condition in ["idle", "busy"] {
            progress(&format!("D = {d}, preset {preset}, {condition}: {} + {} steps per stage", opts.warmup_steps, opts.timed_steps));
            let _busy = if condition == "busy" { Some(BusyProcess::start()?) } else { None };
            let (mut ae_times, mut diffusion_times) = (vec![], vec![]);
            let g = Generator::train(&set, &config, &mut |p| {
                match p.stage {
                    Stage::Autoencoder => ae_times.push(Instant::now()),
                    Stage::Diffusion => diffusion_times.push(Instant::now()),
                }
                true
            })?;
            drop(_busy);
            let batch = config.batch_size.min(opts.k);
            let ae_rows = match &g.ae_config.chunked {
                Some(spec) => batch * (spec.tokens_per_step.max(1) as usize).min(TokenMap::new(&g.layout, spec.chunk as usize).tokens()),
                None => batch,
            };
            let ae_flops = 6.0 * autoencoder_forward_macs(&g.ae_config, g.padded_len) * ae_rows as f64;
            let den_flops = 6.0 * denoiser_forward_macs(&g.denoiser_config, g.latent_dim(), 0) * batch as f64;
            for (stage, times, rows_per_step, flops) in [("autoencoder", &ae_times, ae_rows, ae_flops), ("diffusion", &diffusion_times, batch, den_flops)] {
                let ms = median_step_ms(times, opts.warmup_steps)?;
                let gflops = flops / (ms * 1e-3) / 1e9;
                rows.push(TrainBenchRow {
                    preset: preset.to_string(),
                    d_requested: d_req,
                    param_count: d,
                    stage: stage.into(),
                    condition: condition.into(),
                    rows_per_step,
                    ms_per_step: ms,
                    flops_per_step: flops,
                    gflops_per_second: gflops,
                    fraction_of_peak: gflops / idle_peak,
                });
            }
        }
    }
    Ok(TrainBenchReport {
        train_bench: true,
        machine: machine_description(),
        cores: pdiff_train::available_cores(),
        threads,
        omp_wait_policy: std::env::var("OMP_WAIT_POLICY").ok(),
        k: opts.k,
        warmup_steps: opts.warmup_steps,
        timed_steps: opts.timed_steps,
        matmul: MatmulPeak { n: opts.matmul_n, runs: MATMUL_RUNS, idle_gflops_per_second: idle_peak, busy_gflops_per_second: busy_peak },
        rows,
    })
}
