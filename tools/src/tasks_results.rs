//! results.json of `pdiff demo --task mnist-tasks` (written by [`crate::tasks_demo`], read by
//! [`crate::tasks_report`] and the numbers test).
use crate::eval::Summary;
use crate::yardsticks::Yardsticks;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NearestSeen {
    pub code: String,
    pub hamming: u32,
    #[serde(flatten)]
    pub accuracy: Summary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldoutResult {
    pub code: String,
    pub generated: Summary,
    pub scratch: Summary,
    pub nearest_seen: NearestSeen,
    /// The generator without condition, evaluated on this task.
    pub unconditional: Summary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeenResult {
    pub code: String,
    pub generated: Summary,
    pub originals: Summary,
}

/// Medians over tasks of the per-task median test accuracies.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TasksSummary {
    pub heldout_generated: f64,
    pub heldout_scratch: f64,
    pub heldout_nearest_seen: f64,
    pub heldout_unconditional: f64,
    pub seen_generated: f64,
    pub seen_originals: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuidanceRow {
    pub guidance: f32,
    /// Median over the validation tasks (None when the guidance was given, not chosen).
    pub validation_generated: Option<f64>,
    pub heldout_generated: f64,
    pub seen_generated: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeenTasksRow {
    pub seen_tasks: usize,
    pub heldout_generated: f64,
    pub heldout_nearest_seen: f64,
    pub seen_generated: f64,
    pub seen_originals: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TasksTimings {
    pub collect: f64,
    pub train_autoencoder: f64,
    pub train_diffusion: f64,
    pub sample: f64,
    pub evaluate: f64,
    pub ablation: f64,
    pub total: f64,
}

/// results.json of `pdiff demo --task mnist-tasks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TasksResults {
    pub task: String,
    pub num_params: usize,
    pub condition_dim: usize,
    pub checkpoints_per_task: usize,
    pub generated_per_task: usize,
    pub test_images: usize,
    pub guidance: f32,
    /// How `guidance` was decided: "given", "default", or "validation: ...".
    pub guidance_choice: String,
    pub seen_tasks: Vec<String>,
    pub heldout_tasks: Vec<String>,
    pub device: String,
    pub torch_threads: usize,
    pub preset: String,
    pub target: String,
    pub sampler: String,
    pub backend: String,
    pub seed: u64,
    pub heldout: Vec<HeldoutResult>,
    pub seen: Vec<SeenResult>,
    pub summary: TasksSummary,
    pub guidance_ablation: Vec<GuidanceRow>,
    pub seen_tasks_ablation: Vec<SeenTasksRow>,
    pub reconstruction_mse: f64,
    pub checkpoint_variance: f64,
    pub warnings: Vec<String>,
    pub timings_s: TasksTimings,
    /// The critique's yardsticks (absent from result files written before them, and when a task
    /// has fewer than 2 checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yardsticks: Option<TasksYardsticks>,
}

/// The critique's yardsticks ([`crate::yardsticks`]) made of the checkpoints the generator
/// learned from: a seen task's own, and for a held-out task those of its nearest seen task (what
/// memorization has to offer), each evaluated on the task itself; distances and IoU against those
/// checkpoints. Per held-out task in full; the seen tasks summarized.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TasksYardsticks {
    pub draws: usize,
    pub heldout: Vec<TaskYardsticks>,
    pub heldout_summary: Vec<YardstickTally>,
    pub seen_summary: Vec<YardstickTally>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskYardsticks {
    pub code: String,
    /// The seen task whose checkpoints the yardsticks are made of.
    pub from: String,
    pub yardsticks: Yardsticks,
}

/// One yardstick over the tasks of one kind: medians over tasks of each task's median, and on
/// how many tasks the generated models' median is better, equal or worse (in test images).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct YardstickTally {
    pub name: String,
    pub accuracy: f64,
    pub generated: f64,
    pub distance_to_nearest_original: f64,
    pub generated_distance: f64,
    pub max_iou_to_originals: f64,
    pub generated_max_iou: f64,
    pub better: usize,
    pub equal: usize,
    pub worse: usize,
}

impl YardstickTally {
    /// One tally per yardstick over `tasks` (each task's yardsticks, in the same order).
    pub fn over(tasks: &[&Yardsticks]) -> Vec<YardstickTally> {
        let Some(first) = tasks.first() else {
            return Vec::new();
        };
        let med = |f: &dyn Fn(&Yardsticks) -> f64| Summary::of(&tasks.iter().map(|y| f(y)).collect::<Vec<_>>()).median;
        (0..first.baselines.len())
            .map(|i| {
                let count = |v: &str| tasks.iter().filter(|y| y.baselines[i].comparison.verdict == v).count();
                YardstickTally {
                    name: first.baselines[i].name.clone(),
                    accuracy: med(&|y| y.baselines[i].accuracy.median),
                    generated: med(&|y| y.baselines[i].comparison.generated_median),
                    distance_to_nearest_original: med(&|y| y.baselines[i].distance_to_nearest_original.median),
                    generated_distance: med(&|y| y.generated_to_nearest_original.median),
                    max_iou_to_originals: med(&|y| y.baselines[i].max_iou_to_originals.median),
                    generated_max_iou: med(&|y| y.generated_max_iou_to_originals.median),
                    better: count("better"),
                    equal: count("equal"),
                    worse: count("worse"),
                }
            })
            .collect()
    }
}
