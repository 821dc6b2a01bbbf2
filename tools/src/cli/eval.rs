//! `pdiff eval`: test accuracies of checkpoints (and of generated models, with their novelty
//! and the critique's yardsticks) on a reference task.
use clap::Args;
use pdiff_core::params::{Layout, ParamSet};
use pdiff_core::Result;
use pdiff_tools::eval::{accuracies, evaluate_rows, novelty, NearestOriginal, Summary};
use pdiff_tools::{yardsticks, zoo};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, default_value = "mnist-mlp3")]
    task: String,
    #[arg(long)]
    checkpoints: PathBuf,
    /// Generated models: their accuracies, novelty and the critique's yardsticks against them.
    #[arg(long)]
    generated: Option<PathBuf>,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed of the yardsticks' random choices (the same seed gives the same models).
    #[arg(long, default_value_t = 0)]
    yardstick_seed: u64,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let task = zoo::task(&a.task, a.data.as_deref())?;
    let set = ParamSet::load_dir(&a.checkpoints, &task.selection())?;
    task.load_base(std::path::Path::new(&set.sources[0]))?;
    let orig_evals = evaluate_rows(task.as_ref(), &set.layout, &set.data, false)?;
    let orig = Summary::of(&accuracies(&orig_evals));
    println!("originals (K = {}): {}", set.k(), summary_line(&orig));
    if let Some(dir) = a.generated {
        let gen = ParamSet::load_dir(&dir, &task.selection())?;
        let gen_evals = evaluate_rows(task.as_ref(), &gen.layout, &gen.data, false)?;
        let s = Summary::of(&accuracies(&gen_evals));
        println!("generated (N = {}): {}", gen.k(), summary_line(&s));
        // Novelty and the yardsticks compare vectors coordinate by coordinate: only for the same
        // layout.
        let shape = |l: &Layout| l.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.offset)).collect::<Vec<_>>();
        if shape(&gen.layout) != shape(&set.layout) {
            println!("novelty and yardsticks: not computed: the generated models' tensors differ from the originals' (names, shapes or order)");
            return Ok(());
        }
        println!("novelty: {}", novelty(&set, &gen.data).sentence());
        let nearest = NearestOriginal::new(&set);
        let gen_dist = nearest.distances(&gen.data);
        let y = yardsticks::evaluate(
            &nearest,
            &orig_evals,
            &gen_evals,
            &gen_dist,
            a.yardstick_seed,
            &mut |rows: &[f32]| evaluate_rows(task.as_ref(), &set.layout, rows, false),
            &mut |_| {},
        )?;
        println!(
            "yardsticks ({} models each, seed {}); generated: distance to the nearest original {:.4} (median), max IoU to an original {:.4} (median)",
            y.draws, y.seed, y.generated_to_nearest_original.median, y.generated_max_iou_to_originals.median
        );
        for b in &y.baselines {
            let sigma = b.sigma_rel.map(|s| format!(" ({s:.4} x tensor std)")).unwrap_or_default();
            println!(
                "  {}{sigma}: {}  distance {:.4}  max IoU {:.4}; generated are {} ({:+} test images)",
                b.name,
                summary_line(&b.accuracy),
                b.distance_to_nearest_original.median,
                b.max_iou_to_originals.median,
                b.comparison.verdict,
                b.comparison.difference_images
            );
        }
        for line in y.readings() {
            println!("reading: {line}");
        }
    }
    Ok(())
}

fn summary_line(s: &Summary) -> String {
    format!("best {:.4}  mean {:.4}  median {:.4}  min {:.4}  std {:.4}", s.best, s.mean, s.median, s.min, s.std)
}
