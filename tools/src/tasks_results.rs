//! results.json of `pdiff demo --task mnist-tasks` (written by [`crate::tasks_demo`], read by
//! [`crate::tasks_report`] and the numbers test).
use crate::eval::Summary;
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
}
