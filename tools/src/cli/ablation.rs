//! `pdiff ablation`: K (2, 10, 50, 200) and noise augmentation variants on a reference task.
use crate::args::{ForceArg, TrainArgs};
use crate::progress::Progress;
use clap::Args;
use pdiff_core::files;
use pdiff_core::output::{self, IfForeign, OutputKind};
use pdiff_core::Result;
use pdiff_tools::zoo;
use std::path::PathBuf;

#[derive(Args)]
pub struct AblationArgs {
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
    #[arg(short = 'n', long, default_value_t = 100, value_parser = crate::args::models)]
    n: usize,
    #[command(flatten)]
    train: TrainArgs,
}

pub fn run(a: AblationArgs, progress: &mut Progress) -> Result<()> {
    let config = a.train.config(zoo::param_count(&a.task)?)?;
    if let Some(c) = &a.checkpoints {
        output::check_apart(c, &a.out, "checkpoints")?;
    }
    // OUT as one output: built in staging, put in place at the end (a previous ablation run is
    // replaced, files pdiff did not write are refused or kept with --force).
    let output = output::OutputDir::begin(&a.out, OutputKind::Ablation, a.force.policy())?;
    let task = zoo::task(&a.task, a.data.as_deref())?;
    let ckpts = match a.checkpoints {
        Some(c) => c,
        None => {
            let dir = output.path().join("checkpoints");
            output::write_output_dir(&dir, OutputKind::Checkpoints, IfForeign::Refuse, |tmp| {
                task.collect(tmp, 200, config.seed, &mut |i, n| progress.update("collect", i, n, None)).map(|_| ())
            })?;
            dir
        }
    };
    let rows = pdiff_tools::ablation::run(task.as_ref(), &ckpts, &config, a.n, &mut |i, t| {
        progress.update("ablation", i, t, None);
    })?;
    progress.finish();
    let md = pdiff_tools::ablation::markdown(task.name(), &rows);
    files::write_atomic(&output.path().join("ablation.json"), &serde_json::to_vec_pretty(&rows).unwrap())?;
    files::write_atomic(&output.path().join("ablation.md"), md.as_bytes())?;
    output.commit()?;
    println!("{md}");
    Ok(())
}
