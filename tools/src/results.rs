//! The schema of a demo run's results.json, shared by the job that produces it (`demo`) and the
//! report that renders it (`report`). Accuracies are fractions in [0, 1], test split unless
//! named otherwise.
use crate::eval::Evaluation;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub collect: f64,
    pub train_autoencoder: f64,
    pub train_diffusion: f64,
    pub sample: f64,
    pub evaluate: f64,
}

/// results.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoResults {
    pub task: String,
    pub num_params: usize,
    pub k: usize,
    pub n_generated: usize,
    pub device: String,
    pub preset: String,
    pub sampler: String,
    pub backend: String,
    /// originals, soup, generated, selected_on_train, noise_baselines, similarity and
    /// comparisons, at the top level of results.json.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub timings_s: Timings,
    pub reconstruction_mse: f64,
    pub seed: u64,
}

