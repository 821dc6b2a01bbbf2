//! `pdiff demo`: the whole job on a reference task, collect -> train -> generate -> evaluate,
//! into one output directory with results.json and report.md.
use crate::args::{ForceArg, RuntimeArgs, SamplerArgs, TrainArgs};
use crate::progress::Progress;
use clap::Args;
use pdiff_core::Result;
use pdiff_tools::results::DemoResults;
use pdiff_tools::tasks_demo::{self, TasksDemoOptions};
use pdiff_tools::zoo::{self, mnist_tasks};
use pdiff_tools::{demo, tasks_report};
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "mnist-mlp3")]
    task: String,
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    #[command(flatten)]
    force: ForceArg,
    /// Checkpoints to collect (mnist-tasks: per task) [default: 200; mnist-tasks: 10].
    #[arg(long, value_parser = crate::args::checkpoints_per_task)]
    k: Option<usize>,
    /// Models to generate (mnist-tasks: per task) [default: 100; mnist-tasks: 20].
    #[arg(short = 'n', long, value_parser = crate::args::models)]
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
}

/// Options of the conditional reference task (`pdiff demo --task mnist-tasks`).
#[derive(Args)]
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
    #[arg(long, value_name = "G,G,...", value_delimiter = ',', default_value = "1,2,4")]
    guidance_sweep: Vec<f32>,
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
    #[arg(long, value_name = "M,M,...", value_delimiter = ',')]
    seen_ablation: Vec<usize>,
}

pub fn run(a: DemoArgs, progress: &mut Progress) -> Result<()> {
    if a.task == mnist_tasks::NAME {
        return run_tasks(a, progress);
    }
    if a.k.is_some_and(|k| k < 2) {
        return Err(pdiff_core::Error::invalid("k", "at least 2 checkpoints are needed to learn a distribution"));
    }
    let opts = demo::DemoOptions {
        train: a.train.config(zoo::param_count(&a.task)?)?,
        task: a.task,
        out_dir: a.out.clone(),
        if_foreign: a.force.policy(),
        data_dir: a.data,
        k: a.k.unwrap_or(200),
        n: a.n.unwrap_or(100),
        sampler: a.sampler.kind(),
        sample_seed: a.sample_seed,
        runtime: a.runtime.options(),
    };
    let r = demo::run(&opts, &mut |s, i, t, l| progress.update(s, i, t, l))?;
    progress.finish();
    print_results(&r);
    println!("results: {}", a.out.join("results.json").display());
    Ok(())
}

/// The conditional reference task: seen and held-out tasks, guidance, ablations.
fn run_tasks(a: DemoArgs, progress: &mut Progress) -> Result<()> {
    let mut opts = TasksDemoOptions::new(a.out.clone(), a.train.config_from(tasks_demo::default_train_config())?);
    opts.if_foreign = a.force.policy();
    opts.data_dir = a.data;
    opts.seen = a.tasks.seen;
    opts.heldout = a.tasks.heldout;
    opts.k = a.k.unwrap_or(opts.k);
    opts.n = a.n.unwrap_or(opts.n);
    opts.guidance = a.tasks.guidance;
    opts.guidance_sweep = a.tasks.guidance_sweep;
    opts.seen_ablation = a.tasks.seen_ablation;
    opts.recipe.shared_steps = a.tasks.shared_steps.unwrap_or(opts.recipe.shared_steps);
    opts.recipe.finetune_steps = a.tasks.finetune_steps;
    opts.sampler = a.sampler.kind();
    opts.sample_seed = a.sample_seed;
    opts.runtime = a.runtime.options();
    let r = tasks_demo::run(&opts, &mut |s, i, t, l| progress.update(s, i, t, l))?;
    progress.finish();
    for (line, ok) in tasks_report::verdicts(&r) {
        println!("{} {line}", if ok { "met:" } else { "NOT met:" });
    }
    println!("held-out tasks without condition: {:.4}; total {:.0} s", r.summary.heldout_unconditional, r.timings_s.total);
    println!("results: {}", a.out.join("results.json").display());
    Ok(())
}

/// The demo's headline numbers, warnings and timings.
fn print_results(r: &DemoResults) {
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
