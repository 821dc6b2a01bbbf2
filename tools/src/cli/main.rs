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
    /// Benchmarks: sampling (the default), sweep, scale.
    Bench(bench::BenchArgs),
    /// Evaluate checkpoints (and generated models) on a reference task.
    Eval(eval::EvalArgs),
    /// Ablations on a reference task: K (2, 10, 50, 200) and noise augmentation variants.
    Ablation(ablation::AblationArgs),
    /// The whole job on a reference task: collect -> train -> generate -> evaluate.
    Demo(demo::DemoArgs),
}

fn main() {
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
