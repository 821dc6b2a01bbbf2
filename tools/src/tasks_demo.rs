//! `pdiff demo --task mnist-tasks`: conditional generation measured on tasks the generator never
//! saw (docs/design.md, "Conditional generation"; the RPG protocol on MNIST, CPU-sized).
//!
//! 1. Tasks: the 252 five-digit sets shuffled by the seed; the first `heldout` are held out,
//!    the next `seen` are seen (the seen-tasks ablation takes prefixes of that list).
//! 2. Collection: the shared initialization (trained on the seen tasks only), then `k` checkpoints
//!    per seen task (`seen/<code>/checkpoints/<code>_XXXX.safetensors`, their conditions in
//!    `conditions.json`) and, trained the same way, `k` per held-out task
//!    (`heldout/<code>/scratch/`): the upper reference a generator would have to match.
//! 3. One conditional generator on the seen checkpoints (`generator/`).
//! 4. Per held-out task, `n` generated models (`heldout/<code>/generated/`), against the scratch
//!    models, the checkpoints of the nearest seen task by Hamming distance (what memorization
//!    gives), and the same generator without condition (the unconditional model that
//!    classifier-free guidance trains along); per seen task, `n` generated models against its
//!    originals; per task, the critique's yardsticks made of the seen checkpoints
//!    ([`crate::tasks_results::TasksYardsticks`]). Then the guidance ablation and the
//!    number-of-seen-tasks ablation.
//!
//! Nothing about the held-out tasks is used before step 4: hyper-parameters are chosen on the
//! seen tasks.
use crate::eval::Summary;
pub use crate::tasks_results::{
    GuidanceRow, HeldoutResult, NearestSeen, SeenResult, SeenTasksRow, TaskYardsticks, TasksResults, TasksSummary, TasksTimings, TasksYardsticks,
    YardstickTally,
};
use crate::zoo::mnist_tasks::{DigitSet, MnistTasks, Recipe};
use pdiff_core::diffusion::{Conditioning, SamplerKind};
use pdiff_core::error::{Error, Result};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::output::{IfForeign, OutputDir, OutputKind};
use pdiff_core::params::{ConditionSpec, Conditions, Layout, ParamSet};
use pdiff_core::training::{Progress, TrainConfig};
use pdiff_train::{device_name, Generator};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TasksDemoOptions {
    pub out_dir: PathBuf,
    pub if_foreign: IfForeign,
    pub data_dir: Option<PathBuf>,
    /// Seen tasks (training data of the generator) and held-out tasks.
    pub seen: usize,
    pub heldout: usize,
    /// Checkpoints per task (seen, and scratch models per held-out task), and how they are trained.
    pub k: usize,
    pub recipe: Recipe,
    /// Generated models per task.
    pub n: usize,
    /// Classifier-free guidance of the main results. None: chosen from `guidance_sweep` on
    /// validation tasks, seen tasks that the largest seen-tasks ablation generator did not see
    /// (1.0 without that ablation). The held-out tasks never take part in the choice.
    pub guidance: Option<f32>,
    pub guidance_sweep: Vec<f32>,
    /// Numbers of seen tasks for the ablation (each < `seen`; `seen` itself is the main run).
    pub seen_ablation: Vec<usize>,
    pub sampler: SamplerKind,
    pub sample_seed: u64,
    pub train: TrainConfig,
    /// Generate through the exported bundle with ONNX Runtime, or with the tch networks (None).
    pub runtime: Option<pdiff_core::runtime::RuntimeOptions>,
}

impl TasksDemoOptions {
    pub fn new(out_dir: PathBuf, train: TrainConfig) -> Self {
        TasksDemoOptions {
            out_dir,
            if_foreign: IfForeign::Refuse,
            data_dir: None,
            seen: 48,
            heldout: 8,
            k: 10,
            recipe: Recipe::default(),
            n: 20,
            guidance: None,
            guidance_sweep: vec![1.0, 2.0, 4.0],
            seen_ablation: Vec::new(),
            sampler: SamplerKind::Ddim { steps: 50 },
            sample_seed: 7,
            train,
            runtime: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.seen < 2 || self.heldout < 1 || self.seen + self.heldout > crate::zoo::mnist_tasks::TASK_COUNT {
            return Err(Error::invalid("tasks", format!("{} seen + {} held-out: need >= 2 seen, >= 1 held-out, at most 252 in all", self.seen, self.heldout)));
        }
        if self.k < 1 || self.n < 1 {
            return Err(Error::invalid("tasks", format!("k = {}, n = {}: both must be at least 1", self.k, self.n)));
        }
        if self.seen * self.k < 2 {
            return Err(Error::invalid("k", "the generator needs at least 2 checkpoints"));
        }
        if let Some(g) = self.guidance.iter().chain(&self.guidance_sweep).find(|g| !g.is_finite()) {
            return Err(Error::invalid("guidance", format!("{g} (must be a finite number)")));
        }
        if self.guidance.is_none() && !self.seen_ablation.is_empty() && self.guidance_sweep.is_empty() {
            return Err(Error::invalid("guidance sweep", "empty: give guidance scales to choose from, or --guidance"));
        }
        if let Some(m) = self.seen_ablation.iter().find(|&&m| m < 1 || m >= self.seen) {
            return Err(Error::invalid("seen-tasks ablation", format!("{m} seen tasks (each must be in 1..{})", self.seen)));
        }
        Ok(())
    }
}

/// The generator's settings for this task family, chosen on the seen tasks (docs/design.md,
/// "The tools"): the compact preset with a per-tensor reconstruction loss (the 34-value head
/// decides the task), 3,000 autoencoder steps with latent noise 0.02 (1,000 steps at 0.1 lost
/// 4 points of the originals' accuracy in reconstruction).
pub fn default_train_config() -> TrainConfig {
    let mut c = TrainConfig::new(pdiff_core::model::Preset::Compact);
    c.reconstruction_weighting = pdiff_core::training::ReconstructionWeighting::PerTensor;
    c.ae_steps = 3000;
    c.latent_noise = 0.02;
    c
}

/// The tasks of a run: held-out first in the seeded order, then seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSplit {
    pub seen: Vec<DigitSet>,
    pub heldout: Vec<DigitSet>,
}

pub fn split_tasks(seed: u64, seen: usize, heldout: usize) -> TaskSplit {
    let mut all = DigitSet::all();
    all.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    TaskSplit { heldout: all[..heldout].to_vec(), seen: all[heldout..heldout + seen].to_vec() }
}

/// The seen task nearest to `task` by Hamming distance (the first in `seen` on ties).
pub fn nearest(task: DigitSet, seen: &[DigitSet]) -> (usize, u32) {
    seen.iter().enumerate().map(|(i, s)| (i, s.hamming(task))).min_by_key(|&(i, h)| (h, i)).expect("at least one seen task")
}

/// Progress of the whole job: (stage, done, total, loss); return false to cancel.
pub type TasksProgress<'a> = dyn FnMut(&str, usize, usize, Option<f64>) -> bool + 'a;

/// The checkpoints of a run, in memory.
pub struct Collection {
    pub init: Vec<f32>,
    pub seen: Vec<(DigitSet, Vec<Vec<f32>>)>,
    pub heldout: Vec<(DigitSet, Vec<Vec<f32>>)>,
}

/// Step 2: the shared initialization and `k` checkpoints per task. Each task's training has its
/// own seed (from the run's seed and the task), so a task's checkpoints do not depend on which
/// other tasks are collected.
pub fn collect(tasks: &MnistTasks, split: &TaskSplit, recipe: &Recipe, k: usize, seed: u64, progress: &mut TasksProgress<'_>) -> Result<Collection> {
    let init = tasks.shared_init(&split.seen, recipe, seed, &mut |i, n| progress("shared init", i, n, None))?;
    let all: Vec<DigitSet> = split.seen.iter().chain(&split.heldout).copied().collect();
    let mut trained = Vec::with_capacity(all.len());
    for (i, &t) in all.iter().enumerate() {
        trained.push((t, tasks.train_task(&init, t, recipe, k, task_seed(seed, t))?));
        if !progress("collect", i + 1, all.len(), None) {
            return Err(Error::Cancelled);
        }
    }
    let heldout = trained.split_off(split.seen.len());
    Ok(Collection { init, seen: trained, heldout })
}

fn task_seed(seed: u64, t: DigitSet) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(u64::from_str_radix(&t.code(), 2).unwrap_or(0))
}

/// The conditional training set of the first `m` seen tasks.
pub fn training_set(layout: &Layout, seen: &[(DigitSet, Vec<Vec<f32>>)]) -> Result<ParamSet> {
    let mut data = Vec::new();
    let mut sources = Vec::new();
    let mut conds = Vec::new();
    for (t, rows) in seen {
        for (i, r) in rows.iter().enumerate() {
            data.extend_from_slice(r);
            sources.push(checkpoint_name(*t, i));
            conds.extend_from_slice(&t.condition());
        }
    }
    let names = (0..10).map(|d| format!("digit{d}")).collect();
    ParamSet::from_rows(layout.clone(), data, sources)?.with_conditions(Conditions::new(ConditionSpec { dim: 10, names: Some(names) }, conds)?)
}

fn checkpoint_name(t: DigitSet, i: usize) -> String {
    format!("{}_{i:04}.safetensors", t.code())
}

/// `n` models for a condition (None: the generator without condition), host units, row-major.
pub fn generate(source: &dyn ModelSource, kind: SamplerKind, condition: Option<&[f32]>, guidance: f32, n: usize, seed: u64) -> Result<Vec<f32>> {
    let mut request = SampleRequest::new(n).seed(seed).sampler(kind);
    request.condition = condition.map(|values| Conditioning { values, guidance });
    Ok(source.sample(&request, &mut no_progress)?.params.into_raw_vec_and_offset().0)
}

/// What one generator gives on a list of seen tasks and on the held-out tasks (per-task median
/// accuracies, and the generated rows of the held-out tasks).
struct GeneratorScores {
    seen: Vec<Summary>,
    heldout: Vec<Summary>,
    seen_rows: Vec<Vec<f32>>,
    heldout_rows: Vec<Vec<f32>>,
}

#[allow(clippy::too_many_arguments)]
fn score(
    tasks: &MnistTasks,
    layout: &Layout,
    source: &dyn ModelSource,
    opts: &TasksDemoOptions,
    seen: &[DigitSet],
    heldout: &[DigitSet],
    guidance: f32,
) -> Result<GeneratorScores> {
    let mut out = GeneratorScores { seen: Vec::new(), heldout: Vec::new(), seen_rows: Vec::new(), heldout_rows: Vec::new() };
    for &t in seen {
        let rows = generate(source, opts.sampler, Some(&t.condition()), guidance, opts.n, opts.sample_seed)?;
        out.seen.push(test_summary(tasks, layout, &rows, t)?);
        out.seen_rows.push(rows);
    }
    for &t in heldout {
        let rows = generate(source, opts.sampler, Some(&t.condition()), guidance, opts.n, opts.sample_seed)?;
        out.heldout.push(test_summary(tasks, layout, &rows, t)?);
        out.heldout_rows.push(rows);
    }
    Ok(out)
}

/// The test accuracies of `rows` (flat, row-major) on `task`, summarized.
fn test_summary(tasks: &MnistTasks, layout: &Layout, rows: &[f32], task: DigitSet) -> Result<Summary> {
    Ok(Summary::of(&tasks.accuracies(layout, rows, task, false)?))
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    Summary::of(&v.collect::<Vec<_>>()).median
}

pub fn run(opts: &TasksDemoOptions, progress: &mut TasksProgress<'_>) -> Result<TasksResults> {
    opts.validate()?;
    let started = Instant::now();
    let output = OutputDir::begin(&opts.out_dir, OutputKind::Demo, opts.if_foreign)?;
    let tasks = MnistTasks::new(opts.data_dir.as_deref())?;
    let layout = MnistTasks::layout();
    let out = output.path();
    let seed = opts.train.seed;
    let split = split_tasks(seed, opts.seen, opts.heldout);

    // 2. Collection, written as the reference task's files.
    let t0 = Instant::now();
    let col = collect(&tasks, &split, &opts.recipe, opts.k, seed, progress)?;
    layout.save_safetensors(&col.init, &out.join("shared_init.safetensors"))?;
    let mut cond_map = serde_json::Map::new();
    for (t, rows) in &col.seen {
        let dir = out.join("seen").join(t.code()).join("checkpoints");
        write_rows(&layout, rows, &dir, |i| checkpoint_name(*t, i), OutputKind::Checkpoints)?;
        for i in 0..rows.len() {
            cond_map.insert(checkpoint_name(*t, i), serde_json::json!(t.condition()));
        }
    }
    let names: Vec<String> = (0..10).map(|d| format!("digit{d}")).collect();
    let cond_json = serde_json::json!({ "names": names, "conditions": cond_map });
    pdiff_core::files::write_atomic(&out.join("conditions.json"), &serde_json::to_vec_pretty(&cond_json).expect("JSON"))?;
    for (t, rows) in &col.heldout {
        let dir = out.join("heldout").join(t.code()).join("scratch");
        write_rows(&layout, rows, &dir, |i| format!("scratch_{i:04}.safetensors"), OutputKind::Checkpoints)?;
    }
    let collect_s = t0.elapsed().as_secs_f64();

    // 3. The conditional generator on every seen task.
    let set = training_set(&layout, &col.seen)?;
    let g = Generator::train(&set, &opts.train, &mut |p: &Progress| progress(p.stage.name(), p.step, p.total, Some(p.loss)))?;
    let gen_dir = out.join("generator");
    g.export_bundle(&gen_dir)?;

    // 4. The seen-tasks ablation: generators on the first m seen tasks (sampled with tch).
    let t0 = Instant::now();
    let mut ablation_generators = Vec::new();
    for &m in &opts.seen_ablation {
        let sub = training_set(&layout, &col.seen[..m])?;
        let gm = Generator::train(&sub, &opts.train, &mut |p: &Progress| progress(&format!("{m} tasks: {}", p.stage.name()), p.step, p.total, Some(p.loss)))?;
        ablation_generators.push((m, gm));
    }
    let mut ablation_s = t0.elapsed().as_secs_f64();

    // 5. The guidance: given, or chosen on validation tasks (seen tasks the largest ablation
    //    generator did not see), never on the held-out tasks.
    let t0 = Instant::now();
    let validation = ablation_generators.iter().max_by_key(|(m, _)| *m);
    let mut validation_scores = Vec::new();
    if let (None, Some((m, gm))) = (opts.guidance, validation) {
        for &gs in &opts.guidance_sweep {
            if !progress("validation", validation_scores.len(), opts.guidance_sweep.len(), None) {
                return Err(Error::Cancelled);
            }
            let s = score(&tasks, &layout, gm, opts, &split.seen[*m..], &[], gs)?;
            validation_scores.push(median(s.seen.iter().map(|x| x.median)));
        }
    }
    // The best validation median; on ties the smaller scale (the plainer model).
    let (guidance, guidance_choice) = match (opts.guidance, validation) {
        (Some(g), _) => (g, "given".to_string()),
        (None, Some((m, _))) => {
            let best = (0..opts.guidance_sweep.len())
                .min_by(|&a, &b| validation_scores[b].total_cmp(&validation_scores[a]).then(opts.guidance_sweep[a].total_cmp(&opts.guidance_sweep[b])))
                .expect("a non-empty sweep");
            (opts.guidance_sweep[best], format!("validation: the generator of the first {m} seen tasks on the other {} seen tasks", split.seen.len() - m))
        }
        (None, None) => (1.0, "default".to_string()),
    };
    ablation_s += t0.elapsed().as_secs_f64();

    // 6. Generation and evaluation.
    let t0 = Instant::now();
    let sampler = match &opts.runtime {
        Some(rt) => Some(pdiff_core::runtime::Sampler::open(&gen_dir, rt)?),
        None => None,
    };
    let (source, backend): (&dyn ModelSource, String) = match &sampler {
        Some(s) => (s, s.backend_name().to_string()),
        None => (&g, "tch".to_string()),
    };
    if !progress("generate", 0, 1, None) {
        return Err(Error::Cancelled);
    }
    let main_scores = score(&tasks, &layout, source, opts, &split.seen, &split.heldout, guidance)?;
    for ((t, _), rows) in col.heldout.iter().zip(&main_scores.heldout_rows) {
        let dir = out.join("heldout").join(t.code()).join("generated");
        pdiff_core::generate::write_models(&layout, rows, &dir, IfForeign::Refuse)?;
    }
    let uncond_rows = generate(source, opts.sampler, None, 1.0, opts.n, opts.sample_seed)?;
    let sample_s = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut heldout = Vec::new();
    for (i, (t, scratch)) in col.heldout.iter().enumerate() {
        let (j, hamming) = nearest(*t, &split.seen);
        let near_rows: Vec<f32> = col.seen[j].1.concat();
        heldout.push(HeldoutResult {
            code: t.code(),
            generated: main_scores.heldout[i],
            scratch: test_summary(&tasks, &layout, &scratch.concat(), *t)?,
            nearest_seen: NearestSeen { code: split.seen[j].code(), hamming, accuracy: test_summary(&tasks, &layout, &near_rows, *t)? },
            unconditional: test_summary(&tasks, &layout, &uncond_rows, *t)?,
        });
    }
    let mut seen = Vec::new();
    for (i, (t, rows)) in col.seen.iter().enumerate() {
        seen.push(SeenResult { code: t.code(), generated: main_scores.seen[i], originals: test_summary(&tasks, &layout, &rows.concat(), *t)? });
    }
    let summary = TasksSummary {
        heldout_generated: median(heldout.iter().map(|h| h.generated.median)),
        heldout_scratch: median(heldout.iter().map(|h| h.scratch.median)),
        heldout_nearest_seen: median(heldout.iter().map(|h| h.nearest_seen.accuracy.median)),
        heldout_unconditional: median(heldout.iter().map(|h| h.unconditional.median)),
        seen_generated: median(seen.iter().map(|s| s.generated.median)),
        seen_originals: median(seen.iter().map(|s| s.originals.median)),
    };
    // The critique's yardsticks: of the nearest seen task's checkpoints for a held-out task, of
    // a seen task's own, evaluated on the task; each task's random choices from its own seed.
    let task_yardsticks = |originals: &[Vec<f32>], generated: &[f32], t: DigitSet| {
        crate::yardsticks::evaluate_of_rows(&layout, originals, generated, task_seed(seed, t), &mut |r: &[f32]| tasks.evals(&layout, r, t, false))
    };
    let mut y_heldout = Vec::new();
    for (i, (t, _)) in col.heldout.iter().enumerate() {
        let (j, _) = nearest(*t, &split.seen);
        if !progress("yardsticks", i, col.heldout.len() + col.seen.len(), None) {
            return Err(Error::Cancelled);
        }
        if let Some(y) = task_yardsticks(&col.seen[j].1, &main_scores.heldout_rows[i], *t)? {
            y_heldout.push(TaskYardsticks { code: t.code(), from: split.seen[j].code(), yardsticks: y });
        }
    }
    let mut y_seen = Vec::new();
    for (i, (t, rows)) in col.seen.iter().enumerate() {
        if !progress("yardsticks", col.heldout.len() + i, col.heldout.len() + col.seen.len(), None) {
            return Err(Error::Cancelled);
        }
        y_seen.extend(task_yardsticks(rows, &main_scores.seen_rows[i], *t)?);
    }
    let yardsticks = (!y_heldout.is_empty()).then(|| TasksYardsticks {
        draws: crate::yardsticks::DRAWS,
        heldout_summary: YardstickTally::over(&y_heldout.iter().map(|h| &h.yardsticks).collect::<Vec<_>>()),
        seen_summary: YardstickTally::over(&y_seen.iter().collect::<Vec<_>>()),
        heldout: y_heldout,
    });
    let evaluate_s = t0.elapsed().as_secs_f64();

    // 7. The ablations' numbers: every guidance scale on the main generator, and the
    //    generators of fewer seen tasks at the chosen guidance.
    let t0 = Instant::now();
    let mut guidance_ablation = Vec::new();
    for (i, &gs) in opts.guidance_sweep.iter().enumerate() {
        if !progress("guidance ablation", i, opts.guidance_sweep.len(), None) {
            return Err(Error::Cancelled);
        }
        let s = if gs == guidance { None } else { Some(score(&tasks, &layout, source, opts, &split.seen, &split.heldout, gs)?) };
        let s = s.as_ref().unwrap_or(&main_scores);
        guidance_ablation.push(GuidanceRow {
            guidance: gs,
            validation_generated: validation_scores.get(i).copied(),
            heldout_generated: median(s.heldout.iter().map(|x| x.median)),
            seen_generated: median(s.seen.iter().map(|x| x.median)),
        });
    }
    let mut seen_tasks_ablation = Vec::new();
    for (m, gm) in &ablation_generators {
        let m = *m;
        let s = score(&tasks, &layout, gm, opts, &split.seen[..m], &split.heldout, guidance)?;
        let near = split.heldout.iter().map(|&t| {
            let (j, _) = nearest(t, &split.seen[..m]);
            test_summary(&tasks, &layout, &col.seen[j].1.concat(), t).map(|a| a.median)
        });
        let near: Vec<f64> = near.collect::<Result<_>>()?;
        seen_tasks_ablation.push(SeenTasksRow {
            seen_tasks: m,
            heldout_generated: median(s.heldout.iter().map(|x| x.median)),
            heldout_nearest_seen: median(near.into_iter()),
            seen_generated: median(s.seen.iter().map(|x| x.median)),
            seen_originals: median(seen[..m].iter().map(|x| x.originals.median)),
        });
    }
    if !opts.seen_ablation.is_empty() {
        seen_tasks_ablation.push(SeenTasksRow {
            seen_tasks: opts.seen,
            heldout_generated: summary.heldout_generated,
            heldout_nearest_seen: summary.heldout_nearest_seen,
            seen_generated: summary.seen_generated,
            seen_originals: summary.seen_originals,
        });
    }
    ablation_s += t0.elapsed().as_secs_f64();

    let results = TasksResults {
        task: crate::zoo::mnist_tasks::NAME.to_string(),
        num_params: layout.param_count(),
        condition_dim: 10,
        checkpoints_per_task: opts.k,
        generated_per_task: opts.n,
        test_images: tasks.test_len(),
        guidance,
        guidance_choice,
        seen_tasks: split.seen.iter().map(|t| t.code()).collect(),
        heldout_tasks: split.heldout.iter().map(|t| t.code()).collect(),
        device: device_name(g.device),
        torch_threads: pdiff_train::training_threads(&g.config),
        preset: g.config.preset.to_string(),
        target: format!("{:?}", g.target()).to_lowercase(),
        sampler: opts.sampler.label(),
        backend,
        seed,
        heldout,
        seen,
        summary,
        guidance_ablation,
        seen_tasks_ablation,
        reconstruction_mse: g.history.final_reconstruction_mse,
        checkpoint_variance: g.history.checkpoint_variance,
        warnings: g.warnings.clone(),
        timings_s: TasksTimings {
            collect: collect_s,
            train_autoencoder: g.history.ae_seconds,
            train_diffusion: g.history.diffusion_seconds,
            sample: sample_s,
            evaluate: evaluate_s,
            ablation: ablation_s,
            total: started.elapsed().as_secs_f64(),
        },
        yardsticks,
    };
    crate::tasks_report::write(out, &results, &g.history)?;
    pdiff_core::files::write_atomic(&out.join("results.json"), &serde_json::to_vec_pretty(&results).expect("serializable"))?;
    output.commit()?;
    Ok(results)
}

/// Write rows as safetensors files named by `name(i)` into `dir`, one output of `kind`.
fn write_rows(layout: &Layout, rows: &[Vec<f32>], dir: &Path, name: impl Fn(usize) -> String, kind: OutputKind) -> Result<()> {
    pdiff_core::output::write_output_dir(dir, kind, IfForeign::Refuse, |tmp| {
        for (i, r) in rows.iter().enumerate() {
            layout.save_safetensors(r, &tmp.join(name(i)))?;
        }
        Ok(())
    })
}
