//! The schema of a demo run's results.json, shared by the job that produces it (`demo`) and the
//! report that renders it (`report`). Accuracies are fractions in [0, 1], test split unless
//! named otherwise.
use crate::eval::{Evaluation, Novelty};
use pdiff_core::diffusion::ClipCount;
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
    /// libtorch's intra-op threads (training, and sampling with tch): timings depend on it.
    #[serde(default)]
    pub torch_threads: usize,
    pub preset: String,
    /// True when the preset was chosen from D (`--preset auto`, the default), not named.
    #[serde(default)]
    pub preset_auto: bool,
    pub sampler: String,
    pub backend: String,
    /// originals, soup, generated, selected_on_train, noise_baselines, similarity, comparisons
    /// and yardsticks, at the top level of results.json.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub timings_s: Timings,
    /// Reconstruction MSE of the autoencoder on the K originals and their spread across K
    /// (both in normalized units; `TrainHistory`).
    pub reconstruction_mse: f64,
    pub checkpoint_variance: f64,
    /// The generator's health warnings (`Generator::warnings`).
    pub warnings: Vec<String>,
    /// Generated latents outside the training range (clipped by the decoder).
    pub latent_clipping: LatentClipping,
    /// Distances to the nearest original against the originals' own (no task needed).
    pub novelty: Novelty,
    pub seed: u64,
    /// Peak resident memory of the demo process per stage, MiB (absent in older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<PeakRss>,
}

/// Peak RSS of each stage of a demo, MiB: the kernel's high-water mark (VmHWM) reset at the
/// start of the stage (/proc/self/clear_refs) and read at its end; `demo` is the largest, the
/// peak of the whole run. `None` where the kernel does not offer it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PeakRss {
    pub collect: Option<f64>,
    /// Loading the checkpoints, training the generator and exporting its bundle.
    pub train: Option<f64>,
    /// Sampling N models through the bundle and writing them.
    pub sample: Option<f64>,
    pub evaluate: Option<f64>,
    pub demo: Option<f64>,
}

/// How many of the generated latents fell outside the per-dimension training range
/// (`diffusion::count_outside_clip`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LatentClipping {
    /// N generated latents of `latent_dim` values each.
    pub generated: usize,
    pub latent_dim: usize,
    /// `rows`: latents with a clipped value; `values`: clipped values.
    #[serde(flatten)]
    pub clipped: ClipCount,
}

impl LatentClipping {
    /// "k of N generated latents were clipped (v of N x d values)".
    pub fn sentence(&self) -> String {
        format!(
            "{} of {} generated latents were clipped to the training range ({} of {} values)",
            self.clipped.rows,
            self.generated,
            self.clipped.values,
            self.generated * self.latent_dim
        )
    }

    /// The health warning when some generated latents were clipped: the models decoded from them
    /// come from outside the region the autoencoder was trained on.
    pub fn warning(&self) -> Option<String> {
        (self.clipped.rows > 0).then(|| {
            format!(
                "{}: the models decoded from them come from outside the region the autoencoder was trained on; check them, or train the diffusion model longer",
                self.sentence()
            )
        })
    }
}
