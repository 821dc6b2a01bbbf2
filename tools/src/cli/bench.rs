//! `pdiff bench`: sampling (the default: tch and ONNX Runtime, DDPM-1000 and DDIM-50, time,
//! latency, memory, accuracy), `sweep` (throughput of the ONNX Runtime sampler over batch sizes
//! and concurrent callers), `scale` (training and sampling as D grows) and `train` (training
//! against the machine's matmul peak, idle and next to a busy process). Each writes a JSON
//! report that replaces only a previous report of its kind, unless --force.
use crate::args::{PresetArg, RuntimeArgs, SamplerArgs, TrainArgs};
use clap::{Args, Subcommand};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::model::Preset;
use pdiff_core::output::{self, IfForeign};
use pdiff_core::params::ParamSet;
use pdiff_core::{Error, Result};
use pdiff_tools::{bench, scale, train_bench, zoo};
use std::path::PathBuf;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    /// Without a mode: `pdiff bench sampling`.
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Subcommand)]
enum BenchMode {
    /// Sampling on tch and ONNX Runtime, DDPM-1000 vs DDIM-50: time, latency, memory, accuracy
    /// (the default mode).
    Sampling(SamplingArgs),
    /// Throughput of the ONNX Runtime sampler (DDIM-50) at several batch sizes and numbers of
    /// threads sampling at once: models/s, time per call.
    Sweep(SweepArgs),
    /// How training and sampling grow with D: synthetic trajectories of K checkpoints at each
    /// D, the preset chosen for D: time per step, generator parameters, peak RSS, bundle size,
    /// models/s; a PNG plot beside --out.
    Scale(ScaleArgs),
    /// ONNX Runtime adapters on mnist-cnn-bn: the reference host (one session, every model's
    /// adapter in turn) against the tools' evaluation, and a Run with an adapter against the
    /// plain model's, adapters activated per second against a session per model.
    Adapters(AdaptersArgs),
    /// Training speed against the machine: ms per step of each stage and preset at several D,
    /// FLOPs per step, GFLOP/s and their fraction of libtorch's matmul peak measured in the same
    /// run, each idle and next to one busy process (about two minutes).
    Train(TrainBenchArgs),
}

#[derive(Args)]
struct TrainBenchArgs {
    /// Cases as PRESET:D (compact or chunked), e.g. compact:10000,chunked:1000000.
    #[arg(long, value_delimiter = ',', value_name = "PRESET:D,...", default_value = "compact:10000,compact:100000,chunked:100000,chunked:1000000", value_parser = train_case)]
    cases: Vec<(Preset, usize)>,
    /// Checkpoints per case (synthetic trajectories).
    #[arg(long, default_value_t = 64, value_parser = crate::args::checkpoints)]
    k: usize,
    /// Steps of each stage not counted (first allocations, caches).
    #[arg(long, default_value_t = 3, value_parser = crate::args::steps)]
    warmup_steps: usize,
    /// Steps of each stage timed (their median is reported).
    #[arg(long, default_value_t = 20, value_parser = crate::args::steps)]
    timed_steps: usize,
    /// Side of the square matrices whose product measures the matmul peak.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(64..=16384))]
    matmul_n: u64,
    #[command(flatten)]
    train: TrainThreadsArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    report: ReportOut,
}

#[derive(Args)]
struct TrainThreadsArg {
    /// libtorch threads (0: the training default, the cores this process may run on).
    #[arg(long, default_value_t = 0, value_parser = crate::args::threads)]
    train_threads: usize,
}

/// `PRESET:D` of `--cases`.
fn train_case(text: &str) -> std::result::Result<(Preset, usize), String> {
    let (preset, d) = text.split_once(':').ok_or_else(|| format!("'{text}' is not PRESET:D"))?;
    let preset = match preset.trim() {
        "compact" => Preset::Compact,
        "chunked" => Preset::Chunked,
        other => return Err(format!("'{other}': the bench measures compact or chunked")),
    };
    let d: usize = d.trim().parse().map_err(|_| format!("'{d}' is not a whole number"))?;
    if !(16..=pdiff_core::limits::MAX_PARAMS).contains(&d) {
        return Err(format!("D = {d} is not in 16 ..= {}", pdiff_core::limits::MAX_PARAMS));
    }
    Ok((preset, d))
}

/// Where a report goes.
#[derive(Args)]
struct ReportOut {
    /// The report (JSON). An existing file there is replaced only when it is a previous report
    /// of the same kind, or with --force.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing file at --out even when it is not such a report (never a directory,
    /// a symbolic link or a special file).
    #[arg(long)]
    force: bool,
}

impl ReportOut {
    fn path(&self, default: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(default))
    }
    fn policy(&self) -> IfForeign {
        if self.force {
            IfForeign::Force
        } else {
            IfForeign::Refuse
        }
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// The bundle to measure.
    #[arg(long, required = true)]
    bundle: Option<PathBuf>,
    /// Reference task to measure the accuracy of the sampled models on.
    #[arg(long)]
    task: Option<String>,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(short = 'n', long, default_value_t = 100, value_parser = crate::args::models)]
    n: usize,
    /// Timed runs per measurement (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Also measure training (time per step, peak memory) on these checkpoints.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    report: ReportOut,
}

#[derive(Args)]
struct AdaptersArgs {
    /// A generator trained on mnist-cnn-bn's checkpoints (its last two BatchNorm layers).
    #[arg(long)]
    bundle: PathBuf,
    /// The task's checkpoints: the first one's fixed part is the network the host serves.
    #[arg(long)]
    checkpoints: PathBuf,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(short = 'n', long, default_value_t = 100, value_parser = crate::args::models)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Also write the models, the adapters and the test split there, for another host
    /// (scripts/adapter_host.py).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// A conditional generator trained on mnist-tasks: also time the whole conditional request
    /// (sample one model for a task's condition, its adapter in memory, one image).
    #[arg(long)]
    tasks_bundle: Option<PathBuf>,
    /// The task asked for by the conditional requests (its 10-character code; a held-out
    /// task of the tasks generator).
    #[arg(long, default_value = "0110100101")]
    task_code: String,
    /// Classifier-free guidance of the conditional requests (2: what the tasks demo chose).
    #[arg(long, default_value_t = 2.0)]
    guidance: f32,
    /// Whole conditional requests timed.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    requests: u64,
    /// Timed single-image runs per case and round (5 rounds, interleaved).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    runs: u64,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    report: ReportOut,
}

#[derive(Args)]
struct SweepArgs {
    /// The bundle to measure.
    #[arg(long)]
    bundle: PathBuf,
    /// Batch sizes, e.g. 1,100,1000.
    #[arg(long, required = true, value_delimiter = ',', value_name = "N,N,...", value_parser = clap::value_parser!(u64).range(1..))]
    batch_sizes: Vec<u64>,
    /// Numbers of host threads sampling from the one sampler at once, e.g. 1,2 (models/s over
    /// all of them).
    #[arg(long, default_value = "1", value_delimiter = ',', value_name = "N,N,...", value_parser = clap::value_parser!(u64).range(1..))]
    callers: Vec<u64>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    report: ReportOut,
}

#[derive(Args)]
struct ScaleArgs {
    /// The values of D to measure.
    #[arg(long, value_delimiter = ',', value_name = "D,D,...", default_value = "10000,100000,1000000", value_parser = clap::value_parser!(u64).range(1..))]
    sizes: Vec<u64>,
    /// Presets to measure at each D: auto (chosen by D) and/or compact, chunked, paper.
    #[arg(long, value_delimiter = ',', value_name = "P,P,...", default_value = "auto", value_enum)]
    presets: Vec<PresetArg>,
    /// Checkpoints per D.
    #[arg(long, default_value_t = 200, value_parser = crate::args::checkpoints)]
    k: usize,
    /// Models sampled per D.
    #[arg(short = 'n', long, default_value_t = 100, value_parser = crate::args::models)]
    n: usize,
    /// Autoencoder training steps per D.
    #[arg(long, default_value_t = 100, value_parser = crate::args::steps)]
    ae_steps: usize,
    /// Diffusion training steps per D.
    #[arg(long, default_value_t = 100, value_parser = crate::args::steps)]
    diffusion_steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Measure nothing: print and plot this previous scale report (the PNG goes beside --out).
    #[arg(long, value_name = "FILE")]
    report_from: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    report: ReportOut,
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.mode {
        None => sampling(a.sampling),
        Some(BenchMode::Sampling(s)) => sampling(s),
        Some(BenchMode::Sweep(s)) => sweep(s),
        Some(BenchMode::Scale(s)) => scale(s),
        Some(BenchMode::Adapters(s)) => adapters(s),
        Some(BenchMode::Train(t)) => train(t),
    }
}

fn adapters(a: AdaptersArgs) -> Result<()> {
    let out = a.report.path("adapters.json");
    let report_kind = "pdiff bench adapters report";
    output::check_output_file(&out, a.report.policy(), report_kind, pdiff_tools::adapters::is_report)?;
    let opts = a.runtime.options().unwrap_or_default();
    let checkpoint = pdiff_core::params::list_checkpoints(&a.checkpoints)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid("checkpoints", format!("{}: no *.safetensors checkpoint", a.checkpoints.display())))?;
    let task = zoo::cnn_bn::CnnBn::new(a.data.as_deref())?;
    let bench = pdiff_tools::adapters::AdapterBench {
        checkpoint: &checkpoint,
        bundle: &a.bundle,
        n: a.n,
        seed: a.seed,
        sampler: a.sampler.kind(),
        runs: a.runs as usize,
        runtime: &opts,
        artifacts: a.artifacts.as_deref(),
    };
    let mut r = pdiff_tools::adapters::run(&task, &bench, &mut |w| eprintln!("bench: {w}"))?;
    match &a.tasks_bundle {
        Some(bundle) => {
            let tasks = zoo::mnist_tasks::MnistTasks::new(a.data.as_deref())?;
            let c = pdiff_tools::adapters::ConditionalBench {
                bundle,
                task_code: &a.task_code,
                requests: a.requests as usize,
                sampler: a.sampler.kind(),
                guidance: a.guidance,
                runtime: &opts,
            };
            r.conditional = Some(pdiff_tools::adapters::conditional(&tasks, &c, &mut |w| eprintln!("bench: {w}"))?);
        }
        None => eprintln!("SKIPPED: the whole conditional request (no --tasks-bundle: a generator trained on mnist-tasks is needed)"),
    }
    let json = serde_json::to_vec_pretty(&r).expect("an adapters report serializes");
    output::write_output_file(&out, &json, a.report.policy(), report_kind, pdiff_tools::adapters::is_report)?;
    println!("machine: {}", r.machine);
    println!(
        "reference host ({} models, one ONNX Runtime session, {} test images): {} of {} accuracies equal the tools' evaluation; logits within {:.3e} abs, {:.3e} relative",
        r.models, r.test_images, r.equal_accuracies, r.models, r.max_abs_logit_diff, r.max_rel_logit_diff
    );
    let t = &r.timings;
    for (name, l) in [("plain model", &t.plain_run), ("exposed, no adapter", &t.exposed_run), ("exposed, adapter", &t.adapter_run)] {
        println!("one image, {name:<20} p50 {:.3} ms, p99 {:.3} ms ({} runs)", l.p50_ms, l.p99_ms, t.runs);
    }
    println!("adapter Run p50 / plain Run p50: {:.2}", t.adapter_over_plain_p50);
    if let Some(c) = &r.conditional {
        println!(
            "whole conditional request (task {}, {}, guidance {}, {} requests): p50 {:.3} ms, p99 {:.3} ms; its model on the task's test split: host {:.4}, tools {:.4}",
            c.task, c.sampler, c.guidance, c.requests, c.p50_ms, c.p99_ms, c.host_accuracy, c.tools_accuracy
        );
    }
    println!(
        "models/s: {:.1} in one session (adapter from memory + one image), {:.1} with a session per model",
        t.one_session_models_per_s, t.session_per_model_models_per_s
    );
    Ok(())
}

/// `values` as counts, each at most once.
fn distinct(flag: &str, values: &[u64]) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for &v in values {
        let v = usize::try_from(v).map_err(|_| Error::invalid(flag, format!("{v} is too large")))?;
        if out.contains(&v) {
            return Err(Error::invalid(flag, format!("{v} appears twice")));
        }
        out.push(v);
    }
    Ok(out)
}

fn sampling(a: SamplingArgs) -> Result<()> {
    let dir = a.bundle.ok_or_else(|| Error::invalid("bundle", "--bundle is required (the bundle to measure)"))?;
    let opts = a.runtime.options().unwrap_or_default();
    let out = a.report.path("bench.json");
    let report_kind = "pdiff bench report";
    output::check_output_file(&out, a.report.policy(), report_kind, bench::is_report)?;
    let task = a.task.map(|t| zoo::task(&t, a.data.as_deref())).transpose()?;
    let mut report = bench::run(&dir, a.n, a.runs, &opts, task.as_deref(), &mut |what| eprintln!("bench: {what}"))?;
    if let Some(c) = a.checkpoints {
        eprintln!("bench: training");
        let sel = task.as_ref().map(|t| t.selection()).unwrap_or_default();
        let set = ParamSet::load_dir(&c, &sel)?;
        let t = bench::train(&set, &a.train.config(set.layout.param_count())?)?;
        println!(
            "training (K = {}, D = {}, {}): autoencoder {:.1} ms/step, diffusion {:.1} ms/step, peak RSS {} MiB",
            t.k,
            t.param_count,
            t.preset,
            t.ae_ms_per_step,
            t.diffusion_ms_per_step,
            mib(t.peak_rss_mib)
        );
        report.training = Some(t);
    }
    let json = serde_json::to_vec_pretty(&report).expect("a bench report serializes");
    output::write_output_file(&out, &json, a.report.policy(), report_kind, bench::is_report)?;
    println!("machine: {} (libtorch threads: {})", report.machine, report.torch_threads);
    println!("sampling: median of {} timed runs after {} warm-up run(s)", report.runs, report.warmup_runs);
    println!("{:<18} {:<9} {:>5} {:>9} {:>10} {:>10} {:>9}", "backend", "sampler", "n", "seconds", "models/s", "peak MiB", "test acc");
    for r in &report.rows {
        println!(
            "{:<18} {:<9} {:>5} {:>9.3} {:>10.1} {:>10} {:>9}",
            r.backend,
            r.sampler,
            r.n,
            r.seconds,
            r.models_per_second,
            mib(r.peak_rss_mib),
            r.test_accuracy.map(|s| format!("{:.4}", s.median)).unwrap_or_else(|| "-".into())
        );
    }
    for (b, s) in &report.single_sample_latency_s {
        println!("single-sample latency (DDIM-50, median of {}) {b}: {:.1} ms", report.latency_runs, s * 1e3);
    }
    println!("speed-up DDIM-50 on ONNX Runtime vs DDPM-1000 on tch: {:.1}x", report.speedup_ddim_ort_vs_ddpm_tch);
    println!("written: {}", out.display());
    Ok(())
}

fn sweep(a: SweepArgs) -> Result<()> {
    let sizes = distinct("batch-sizes", &a.batch_sizes)?;
    let callers = distinct("callers", &a.callers)?;
    let opts = a.runtime.options().ok_or_else(|| Error::invalid("backend", "the sweep measures the ONNX Runtime sampler: --backend tch is not swept"))?;
    let out = a.report.path("bench.json");
    output::check_output_file(&out, a.report.policy(), "pdiff bench report", bench::is_report)?;
    let kind = SamplerKind::Ddim { steps: 50 };
    let report = bench::sweep(&a.bundle, &opts, &sizes, &callers, kind, &mut |what| eprintln!("bench: {what}"))?;
    let json = serde_json::to_vec_pretty(&report).expect("a sweep report serializes");
    output::write_output_file(&out, &json, a.report.policy(), "pdiff bench report", bench::is_report)?;
    println!("machine: {}", report.machine);
    let how = if report.whole_loop { "whole loop" } else { "step by step" };
    println!("{} ({} requested), {} {how}, bundle {} (D = {})", report.backend, report.provider, report.sampler, report.bundle, report.param_count);
    println!("{:>6} {:>8} {:>12} {:>12} {:>12} {:>6} {:>10}", "batch", "callers", "models/s", "median ms", "first ms", "calls", "peak MiB");
    for r in &report.rows {
        println!(
            "{:>6} {:>8} {:>12.1} {:>12.2} {:>12.2} {:>6} {:>10}",
            r.batch,
            r.callers,
            r.models_per_second,
            r.median_s * 1e3,
            r.first_call_s * 1e3,
            r.calls,
            mib(r.peak_rss_mib)
        );
    }
    println!("written: {}", out.display());
    Ok(())
}

fn scale(a: ScaleArgs) -> Result<()> {
    let sizes = distinct("sizes", &a.sizes)?;
    let presets: Vec<Option<Preset>> = a
        .presets
        .iter()
        .map(|p| match p {
            PresetArg::Auto => None,
            PresetArg::Compact => Some(Preset::Compact),
            PresetArg::Chunked => Some(Preset::Chunked),
            PresetArg::Paper => Some(Preset::Paper),
        })
        .collect();
    let rt = a.runtime.options().ok_or_else(|| Error::invalid("backend", "bench scale samples through ONNX Runtime"))?;
    let out = a.report.path("scale.json");
    let png = out.with_extension("png");
    output::check_output_file(&out, a.report.policy(), scale::REPORT_KIND, scale::is_report)?;
    output::check_output_file(&png, a.report.policy(), scale::PLOT_KIND, scale::is_plot)?;
    let work_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."));
    let opts =
        scale::ScaleOptions { sizes, presets, k: a.k, ae_steps: a.ae_steps, diffusion_steps: a.diffusion_steps, n: a.n, runtime: rt, work_dir, seed: a.seed };
    let measured = a.report_from.is_none();
    let report = match &a.report_from {
        Some(file) => scale::read_report(file)?,
        None => {
            let report = scale::run(&opts, &mut |what| eprintln!("bench: {what}"))?;
            let json = serde_json::to_vec_pretty(&report).expect("a scale report serializes");
            output::write_output_file(&out, &json, a.report.policy(), scale::REPORT_KIND, scale::is_report)?;
            report
        }
    };
    scale::write_plot(&png, &report, a.report.policy())?;
    println!(
        "machine: {} (libtorch threads: {}), K = {}, {} + {} training steps, {} models sampled ({}, DDIM-50)",
        report.machine, report.torch_threads, report.k, report.ae_steps, report.diffusion_steps, report.n, report.backend
    );
    println!(
        "{:>9} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "D", "preset", "gen params", "% of D", "ae ms", "diff ms", "train MiB", "bundle MB", "models/s", "sample s", "samp MiB"
    );
    for r in &report.rows {
        println!(
            "{:>9} {:>8} {:>10} {:>7.2} {:>9.1} {:>9.1} {:>9} {:>9.1} {:>10.1} {:>9.2} {:>9}",
            r.param_count,
            r.preset,
            r.generator_params,
            100.0 * r.generator_params_per_d,
            r.ae_ms_per_step,
            r.diffusion_ms_per_step,
            mib(r.train_peak_rss_mib),
            r.bundle_bytes as f64 / 1e6,
            r.models_per_second,
            r.sample_seconds,
            mib(r.sample_peak_rss_mib)
        );
    }
    if measured {
        println!("written: {}, {}", out.display(), png.display());
    } else {
        println!("written: {}", png.display());
    }
    Ok(())
}

fn train(a: TrainBenchArgs) -> Result<()> {
    let out = a.report.path("train-bench.json");
    output::check_output_file(&out, a.report.policy(), train_bench::REPORT_KIND, train_bench::is_report)?;
    let opts = train_bench::TrainBenchOptions {
        cases: a.cases,
        k: a.k,
        warmup_steps: a.warmup_steps,
        timed_steps: a.timed_steps,
        threads: a.train.train_threads,
        matmul_n: a.matmul_n as usize,
        seed: a.seed,
    };
    let report = train_bench::run(&opts, &mut |what| eprintln!("bench: {what}"))?;
    let json = serde_json::to_vec_pretty(&report).expect("a train bench report serializes");
    output::write_output_file(&out, &json, a.report.policy(), train_bench::REPORT_KIND, train_bench::is_report)?;
    println!(
        "machine: {} ({} cores available, {} libtorch threads, OMP_WAIT_POLICY={}), K = {}",
        report.machine,
        report.cores,
        report.threads,
        report.omp_wait_policy.as_deref().unwrap_or("unset"),
        report.k
    );
    println!(
        "matmul peak ({n} x {n}, best of {}): {:.1} GFLOP/s idle, {:.1} next to a busy process",
        report.matmul.runs,
        report.matmul.idle_gflops_per_second,
        report.matmul.busy_gflops_per_second,
        n = report.matmul.n
    );
    println!("{:>9} {:>8} {:>11} {:>5} {:>7} {:>10} {:>12} {:>8} {:>7}", "D", "preset", "stage", "load", "rows", "ms/step", "MFLOP/step", "GFLOP/s", "% peak");
    for r in &report.rows {
        println!(
            "{:>9} {:>8} {:>11} {:>5} {:>7} {:>10.2} {:>12.1} {:>8.2} {:>6.1}%",
            r.param_count,
            r.preset,
            r.stage,
            r.condition,
            r.rows_per_step,
            r.ms_per_step,
            r.flops_per_step / 1e6,
            r.gflops_per_second,
            100.0 * r.fraction_of_peak
        );
    }
    println!("written: {}", out.display());
    Ok(())
}

fn mib(v: Option<f64>) -> String {
    v.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
}
