//! `pdiff train`: a generator from directories of safetensors checkpoints, written as a bundle.
use crate::args::{ForceArg, TrainArgs};
use crate::progress::Progress;
use clap::Args;
use pdiff_core::output::{self, OutputKind};
use pdiff_core::params::{check_k, list_checkpoints, peek_dir, ParamSet, Selection};
use pdiff_core::training::TrainConfig;
use pdiff_core::Result;
use pdiff_train::Generator;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainCommandArgs {
    /// Directory of *.safetensors checkpoints (K >= 2 in all); repeatable, the directories'
    /// checkpoints are taken in the order given (e.g. every task's directory of a mnist-tasks
    /// demo).
    #[arg(long, required = true)]
    checkpoints: Vec<PathBuf>,
    /// Tensor names or glob patterns to model (repeatable); default: every float tensor.
    #[arg(long = "select")]
    select: Vec<String>,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// Conditional generator: one condition vector per checkpoint, a .json or .csv file
    /// (docs/api.md, "Conditional generation").
    #[arg(long)]
    conditions: Option<PathBuf>,
    #[command(flatten)]
    force: ForceArg,
    #[command(flatten)]
    train: TrainArgs,
}

pub fn run(a: TrainCommandArgs, progress: &mut Progress) -> Result<()> {
    a.train.config(0)?;
    for dir in &a.checkpoints {
        output::check_apart(dir, &a.out, "checkpoints")?;
    }
    output::check_output_dir(&a.out, OutputKind::Bundle, a.force.policy())?;
    let selection = Selection::patterns(&a.select);
    let (config, paths) = plan(&a.checkpoints, &selection, &a.train)?;
    println!("preset {}{}", config.preset, if config.preset_auto { " (chosen automatically for D)" } else { "" });
    let mut set = ParamSet::load(&paths, &selection)?;
    if let Some(file) = &a.conditions {
        set = set.with_conditions_file(file)?;
        println!("conditional: C = {}", set.conditions.as_ref().map(|c| c.spec.dim).unwrap_or(0));
    }
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    println!("K = {}, D = {} ({} tensors)", set.k(), set.layout.param_count(), set.layout.tensors.len());
    let g = Generator::train(&set, &config, &mut |p| progress.update(p.stage.name(), p.step, p.total, Some(p.loss)))?;
    progress.finish();
    for w in g.warnings.iter().filter(|w| !set.warnings.contains(w)) {
        eprintln!("warning: {w}");
    }
    g.export_bundle_with(&a.out, a.force.policy())?;
    println!(
        "trained on {}: autoencoder {:.1}s, diffusion {:.1}s, reconstruction mse {:.2e} ({} of the checkpoints' spread {:.2e}); bundle written to {}",
        pdiff_train::device_name(g.device),
        g.history.ae_seconds,
        g.history.diffusion_seconds,
        g.history.final_reconstruction_mse,
        g.history.reconstruction_ratio().map(|r| format!("{:.1}%", 100.0 * r)).unwrap_or_else(|| "-".into()),
        g.history.checkpoint_variance,
        a.out.display()
    );
    Ok(())
}

/// The configuration for the checkpoints' D and the checkpoint files, from their headers alone:
/// a size that cannot be trained is refused before any tensor is read.
fn plan(dirs: &[PathBuf], selection: &Selection, train: &TrainArgs) -> Result<(TrainConfig, Vec<PathBuf>)> {
    let mut k = 0;
    let mut paths = Vec::new();
    let mut config: Option<TrainConfig> = None;
    for dir in dirs {
        let (layout, k_dir) = peek_dir(dir, selection)?;
        k += k_dir;
        let c = match config.take() {
            Some(c) => c,
            None => train.config(layout.param_count())?,
        };
        pdiff_train::check_memory(layout.param_count(), k, &c)?;
        config = Some(c);
        paths.extend(list_checkpoints(dir)?);
    }
    check_k(k)?;
    Ok((config.expect("clap requires at least one --checkpoints"), paths))
}
