//! `pdiff eval`: test accuracies of checkpoints (and of generated models) on a reference task.
use clap::Args;
use pdiff_core::params::{Layout, ParamSet};
use pdiff_core::Result;
use pdiff_tools::eval::{accuracies, evaluate_rows, novelty, Summary};
use pdiff_tools::zoo;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, default_value = "mnist-mlp3")]
    task: String,
    #[arg(long)]
    checkpoints: PathBuf,
    #[arg(long)]
    generated: Option<PathBuf>,
    #[arg(long)]
    data: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let task = zoo::task(&a.task, a.data.as_deref())?;
    let set = ParamSet::load_dir(&a.checkpoints, &task.selection())?;
    task.load_base(std::path::Path::new(&set.sources[0]))?;
    let orig = Summary::of(&accuracies(&evaluate_rows(task.as_ref(), &set.layout, &set.data, false)?));
    println!("originals (K = {}): {}", set.k(), summary_line(&orig));
    if let Some(dir) = a.generated {
        let gen = ParamSet::load_dir(&dir, &task.selection())?;
        let s = Summary::of(&accuracies(&evaluate_rows(task.as_ref(), &gen.layout, &gen.data, false)?));
        println!("generated (N = {}): {}", gen.k(), summary_line(&s));
        // Novelty compares vectors coordinate by coordinate: only for the same layout.
        let shape = |l: &Layout| l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.offset)).collect::<Vec<_>>();
        if shape(&gen.layout) == shape(&set.layout) {
            println!("novelty: {}", novelty(&set, &gen.data).sentence());
        } else {
            println!("novelty: not computed: the generated models' tensors differ from the originals' (names, shapes or order)");
        }
    }
    Ok(())
}

fn summary_line(s: &Summary) -> String {
    format!("best {:.4}  mean {:.4}  median {:.4}  min {:.4}  std {:.4}", s.best, s.mean, s.median, s.min, s.std)
}
