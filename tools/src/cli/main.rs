//! `pdiff`: the command line of libpdiff, one module per command (each declares its options
//! for clap and calls the engine and the tools' library); `args` holds the options several
//! commands share, `progress` the bars, plain progress lines and Ctrl-C.
mod ablation;
mod args;
mod bench;
mod collect;
mod demo;
mod eval;
mod export;
mod onnx;
mod progress;
mod sample;
mod train;

use clap::{Parser, Subcommand};
use progress::Progress;

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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Collect K checkpoints of a reference task (train, then one checkpoint per iteration).
    Collect(collect::CollectArgs),
    /// Train a generator on directories of safetensors checkpoints and write its bundle.
    Train(train::TrainCommandArgs),
    /// Re-export a generator (a bundle) as a fresh, verified bundle.
    Export(export::ExportArgs),
    /// Sample N parameter sets from a bundle into safetensors files or ONNX Runtime adapters
    /// (ONNX Runtime by default).
    Sample(sample::SampleArgs),
    /// Prepare a host's ONNX model for adapters (`pdiff onnx expose`).
    Onnx(onnx::OnnxArgs),
    /// Benchmarks: sampling (the default), sweep, scale, adapters, train.
    Bench(bench::BenchArgs),
    /// Evaluate checkpoints (and generated models) on a reference task.
    Eval(eval::EvalArgs),
    /// Ablations on a reference task: K (2, 10, 50, 200) and noise augmentation variants.
    Ablation(ablation::AblationArgs),
    /// The whole job on a reference task: collect -> train -> generate -> evaluate.
    Demo(demo::DemoArgs),
}

/// libtorch computes with libgomp (OpenMP) threads. When a core is taken by another process,
/// libgomp's default wait policy makes a thread that reaches a barrier spin for its partner
/// (a `make demo` trained 2.6x as long next to one busy process). libgomp reads
/// `OMP_WAIT_POLICY` once, in its ELF initializer, which runs when libtorch is loaded: before
/// `main`, so setting the variable now is too late for this process. Nor can an executable's
/// `.preinit_array` set it: it runs before libc's own initializer, which then sets `environ`
/// back to the environment the process was started with (glibc's `__libc_init_first`;
/// measured: libgomp still reported `GOMP_SPINCOUNT = '300000'`). So when the user has set
/// neither `OMP_WAIT_POLICY` nor `GOMP_SPINCOUNT`, `pdiff` starts itself again (same process,
/// same arguments: `execve`) with `OMP_WAIT_POLICY=passive`, under which waiting threads sleep
/// (`GOMP_SPINCOUNT = '0'`). If that exec fails, it runs on with libgomp's default. Only the
/// commands that train or collect with libtorch do this (a start costs about 0.2 s more):
/// `collect`, `train`, `demo`, `ablation`, `bench`.
fn run_with_passive_openmp_wait() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() || std::env::var_os("GOMP_SPINCOUNT").is_some() {
        return;
    }
    let trains = std::env::args_os().nth(1).is_some_and(|c| ["collect", "train", "demo", "ablation", "bench"].iter().any(|t| c == *t));
    if !trains {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "pdiff".into());
    // Returns only when the exec failed.
    let _ = std::process::Command::new("/proc/self/exe").arg0(argv0).args(args).env("OMP_WAIT_POLICY", "passive").exec();
}

fn main() {
    run_with_passive_openmp_wait();
    // Usage errors exit 1 like every other error (docs/reliability.md); help and version 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 });
    });
    progress::catch_interrupt();
    let mut progress = Progress::new();
    let result = match cli.command {
        Command::Collect(a) => collect::run(a, &mut progress),
        Command::Train(a) => train::run(a, &mut progress),
        Command::Export(a) => export::run(a),
        Command::Sample(a) => sample::run(a, &mut progress),
        Command::Onnx(a) => onnx::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Ablation(a) => ablation::run(a, &mut progress),
        Command::Demo(a) => demo::run(a, &mut progress),
    };
    if let Err(e) = result {
        progress.finish();
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
