//! Training a generator (docs/design.md, "Training"): the autoencoder on normalized, padded
//! parameter vectors, then the latent DDPM on standardized latents.
//!
//! This file holds what describes a training run and needs no libtorch (the configuration, its
//! validation, progress reports, the loss history and the memory estimate): the bundle manifest
//! records them. The training itself, on tch (CUDA when available), is in `generator`
//! (feature `train`).
use crate::diffusion::Schedule;
use crate::error::{Error, Result};
use crate::model::Preset;
use crate::model::{AutoencoderConfig, DenoiserConfig};
use serde::{Deserialize, Serialize};

/// Where training runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device index; an error when CUDA is not available (never a silent fallback).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| Error::invalid("device", format!("'{s}' (expected auto, cpu, cuda or cuda:N)"))),
        }
    }
}

/// Everything that decides a training run. `TrainConfig::new(preset)` gives the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: Preset,
    /// True when `preset` was chosen from D by [`Preset::auto`] ([`TrainConfig::auto`]), not
    /// named by the user. Recorded in the bundle (absent in older ones: false).
    #[serde(default)]
    pub preset_auto: bool,
    /// Architecture overrides; `None` takes the preset's.
    pub autoencoder: Option<AutoencoderConfig>,
    pub denoiser: Option<DenoiserConfig>,
    pub ae_steps: usize,
    pub diffusion_steps: usize,
    pub batch_size: usize,
    pub ae_lr: f64,
    pub diffusion_lr: f64,
    pub weight_decay: f64,
    /// Gaussian noise added to the normalized input while training the autoencoder (std; for
    /// the chunked preset relative to each token's spread across K, see `generator`).
    pub input_noise: f64,
    /// Gaussian noise added to the latent while training the autoencoder.
    pub latent_noise: f64,
    /// Scale the latent noise by the batch's per-dimension latent std (instead of absolute
    /// units), so the decoder must stay robust to perturbations of the size of the latents'
    /// actual spread.
    #[serde(default)]
    pub latent_noise_relative: bool,
    /// Exponential moving average of the denoiser's weights (decay), if any.
    pub ema: Option<f64>,
    /// Conditional generators: the probability that a training row's condition is replaced by
    /// "no condition" (classifier-free guidance needs the unconditional model too).
    #[serde(default = "default_condition_dropout")]
    pub condition_dropout: f64,
    /// What the denoiser is trained to predict (None: [`DiffusionTarget::default_for`]). The
    /// exported denoiser outputs the noise either way.
    #[serde(default)]
    pub target: Option<DiffusionTarget>,
    /// How the autoencoder's reconstruction error is weighted across the parameter vector.
    #[serde(default)]
    pub reconstruction_weighting: ReconstructionWeighting,
    pub schedule: Schedule,
    pub seed: u64,
    pub device: DeviceChoice,
    /// libtorch's intra-op threads while this run trains on the CPU; 0 (the default): the cores
    /// this process may run on (`sched_getaffinity`), see `pdiff_train::torch::training_threads`.
    /// A setting of the run, not of the model: not written into bundles when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threads: usize,
    /// Diffusion training: each latent drawn for a step is used this many times, each with its
    /// own timestep and noise (a batch of `batch_size` x this rows). The diffusion stage is bound
    /// by per-step overhead, so R rows per latent cost far less than R steps: fewer steps at a
    /// larger R see as many (latent, timestep) pairs (measured: docs/api.md, `--timesteps-per-row`). Default 1
    /// (the published results); not written into bundles when 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub timesteps_per_row: usize,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// The most timesteps per latent a diffusion step may draw.
pub const MAX_TIMESTEPS_PER_ROW: usize = 1024;

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The most intra-op threads a training run may ask for.
pub const MAX_TRAIN_THREADS: usize = 1024;

impl TrainConfig {
    pub fn new(preset: Preset) -> Self {
        // The compact denoiser is a small MLP: it trains fast and wants a larger LR.
        // Chunked: each autoencoder step sees `tokens_per_step` tokens of each checkpoint of the
        // batch, so it needs more steps than a whole-vector one; its denoiser is a small MLP
        // over the principal coefficients (under a millisecond a step), trained 40,000 steps:
        // at 8,000 it was underfit, its samples far from every training latent (mnist-mlp-wide
        // seed 4: median distance to the nearest one 5.7 standardized units, against 1.7
        // between training latents; docs/design.md, "Training").
        let (ae_steps, diffusion_steps, diffusion_lr) = match preset {
            Preset::Compact => (1000, 8000, 3e-3),
            Preset::Paper => (30_000, 30_000, 1e-3),
            Preset::Chunked => (2000, 40_000, 2e-3),
        };
        TrainConfig {
            preset,
            preset_auto: false,
            autoencoder: None,
            denoiser: None,
            ae_steps,
            diffusion_steps,
            // Chunked: a diffusion step runs every token of 32 rows (the CPU budget).
            batch_size: if preset == Preset::Chunked { 32 } else { 50 },
            ae_lr: 1e-3,
            diffusion_lr,
            weight_decay: 2e-6,
            input_noise: if preset == Preset::Chunked { 0.1 } else { 0.001 },
            latent_noise: 0.1,
            latent_noise_relative: false,
            ema: None,
            condition_dropout: default_condition_dropout(),
            target: None,
            reconstruction_weighting: ReconstructionWeighting::Uniform,
            schedule: Schedule::default(),
            seed: 0,
            device: DeviceChoice::Auto,
            threads: 0,
            timesteps_per_row: 1,
        }
    }

    /// The defaults of the preset [`Preset::auto`] chooses for D parameters, marked as chosen.
    pub fn auto(d: usize) -> Self {
        TrainConfig { preset_auto: true, ..TrainConfig::new(Preset::auto(d)) }
    }

    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        if !(1..=MAX_TIMESTEPS_PER_ROW).contains(&self.timesteps_per_row) {
            return Err(Error::invalid("timesteps_per_row", format!("{} (must be in 1 ..= {MAX_TIMESTEPS_PER_ROW})", self.timesteps_per_row)));
        }
        if self.threads > MAX_TRAIN_THREADS {
            return Err(Error::invalid("threads", format!("{} (at most {MAX_TRAIN_THREADS}; 0: the cores available)", self.threads)));
        }
        for (name, v) in [("ae_lr", self.ae_lr), ("diffusion_lr", self.diffusion_lr)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::invalid(name, format!("{v} (must be > 0)")));
            }
        }
        for (name, v) in [("input_noise", self.input_noise), ("latent_noise", self.latent_noise), ("weight_decay", self.weight_decay)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::invalid(name, format!("{v} (must be >= 0)")));
            }
        }
        if !(0.0..1.0).contains(&self.condition_dropout) {
            return Err(Error::invalid("condition_dropout", format!("{} (must be in [0, 1))", self.condition_dropout)));
        }
        if let Some(e) = self.ema {
            if !(0.0..1.0).contains(&e) {
                return Err(Error::invalid("ema", format!("{e} (decay must be in [0, 1))")));
            }
        }
        Ok(())
    }
}

/// The denoiser's training target.
///
/// `Epsilon` is the paper's: the network predicts the noise. At large t, x_t is almost pure
/// noise, so predicting the noise is almost copying x_t and needs no condition: a conditional
/// generator trained this way learns to ignore its condition where it matters most, at the
/// start of sampling, which decides which task's region a sample lands in (measured: two tasks,
/// 1,500 steps, 32 of 64 samples on their own task with epsilon, 64 of 64 with v). `V`, the
/// velocity v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022), is x0-like at large t
/// and eps-like at small t, so the condition is needed at every step. The sampler needs the
/// noise: eps = sqrt(abar) v + sqrt(1 - abar) x_t, computed inside the exported denoiser (and by
/// the tch backend), so a bundle's interface is the same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffusionTarget {
    Epsilon,
    V,
}

impl DiffusionTarget {
    /// Epsilon for unconditional generators (the paper's, and the published mnist numbers), v
    /// for conditional ones.
    pub fn default_for(conditional: bool) -> Self {
        if conditional {
            DiffusionTarget::V
        } else {
            DiffusionTarget::Epsilon
        }
    }
}

/// The weight of each parameter in the autoencoder's reconstruction loss.
///
/// `Uniform` (the paper's MSE) gives every scalar the same weight, so a tensor counts by its
/// size: a 34-value classifier head next to a 12,544-value first layer is 0.3% of the loss, and
/// the autoencoder may spend its capacity on the large tensor even where the small one decides
/// the model (measured on mnist-tasks, where the head carries most of what tells tasks apart).
/// `PerTensor` gives each tensor the same total weight (a scalar of tensor t weighs
/// D / (T numel(t)), mean weight 1), so every tensor is reconstructed to a similar relative
/// error whatever its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReconstructionWeighting {
    #[default]
    Uniform,
    PerTensor,
}

impl std::str::FromStr for ReconstructionWeighting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(ReconstructionWeighting::Uniform),
            "per-tensor" => Ok(ReconstructionWeighting::PerTensor),
            _ => Err(Error::invalid("reconstruction weighting", format!("'{s}' (expected uniform or per-tensor)"))),
        }
    }
}

impl ReconstructionWeighting {
    /// The weight of each of the D parameters of `layout` (None for uniform).
    pub fn weights(self, layout: &crate::params::Layout) -> Option<Vec<f32>> {
        match self {
            ReconstructionWeighting::Uniform => None,
            ReconstructionWeighting::PerTensor => {
                let d = layout.param_count() as f64;
                let t = layout.tensors.len().max(1) as f64;
                let mut w = vec![0f32; layout.param_count()];
                for spec in &layout.tensors {
                    let v = (d / (t * spec.numel().max(1) as f64)) as f32;
                    w[spec.offset..spec.offset + spec.numel()].fill(v);
                }
                Some(w)
            }
        }
    }
}

fn default_condition_dropout() -> f64 {
    0.1
}

/// Training stage reported to a progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Autoencoder,
    Diffusion,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Autoencoder => "autoencoder",
            Stage::Diffusion => "diffusion",
        }
    }
}

/// One progress report: return `false` from the callback to cancel.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub stage: Stage,
    pub step: usize,
    pub total: usize,
    pub loss: f64,
}

/// Loss curves and wall time of a training run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainHistory {
    pub ae_loss: Vec<f32>,
    pub diffusion_loss: Vec<f32>,
    pub ae_seconds: f64,
    pub diffusion_seconds: f64,
    /// Reconstruction error (MSE, normalized units) of the K inputs after training, weighted as
    /// the training loss was (`TrainConfig::reconstruction_weighting`).
    pub final_reconstruction_mse: f64,
    /// The checkpoints' spread in the same units and weighting
    /// (`ParamSet::checkpoint_variance_weighted`): the MSE of
    /// reproducing every checkpoint by their mean. 0 in bundles written before it was recorded.
    #[serde(default)]
    pub checkpoint_variance: f64,
}

impl TrainHistory {
    /// Reconstruction error as a fraction of the checkpoints' spread: near 0 when the
    /// autoencoder reproduces each checkpoint, near 1 when it outputs their mean (what its
    /// zero-initialised output layer does before training). `None` when the spread is unknown
    /// (older bundles) or 0 (identical checkpoints).
    pub fn reconstruction_ratio(&self) -> Option<f64> {
        (self.checkpoint_variance > 0.0).then(|| self.final_reconstruction_mse / self.checkpoint_variance)
    }

    /// The training-quality warning, if the reconstruction error is at least
    /// [`RECONSTRUCTION_WARN_RATIO`] of the checkpoints' spread.
    pub fn reconstruction_warning(&self) -> Option<String> {
        let ratio = self.reconstruction_ratio()?;
        (ratio >= RECONSTRUCTION_WARN_RATIO).then(|| {
            format!(
                "the autoencoder reconstructs the checkpoints with MSE {:.2e} (normalized units), {:.0}% of their spread \
                 across K ({:.2e}): generated models will lose what distinguishes the checkpoints; train the autoencoder \
                 longer (ae_steps) or check the checkpoints",
                self.final_reconstruction_mse,
                100.0 * ratio,
                self.checkpoint_variance
            )
        })
    }
}

/// A reconstruction error at least this fraction of the checkpoints' spread gets a generator
/// warning: the autoencoder then loses half of what distinguishes the checkpoints. Measured with
/// the compact preset, seed 0, K = 200 (reconstruction / spread after N autoencoder steps;
/// `pdiff train` on the demos' checkpoints with every float tensor selected: all 13,002
/// parameters of mnist-mlp3, the whole CNN for mnist-cnn-bn):
///
/// | N | 10 | 30 | 100 | 300 | 1000 (the default) |
/// |---|---|---|---|---|---|
/// | mnist-mlp3 | 0.99 | 0.95 | 0.66 | 0.33 | 0.12 |
/// | mnist-cnn-bn | 0.96 | 0.79 | 0.26 | 0.07 | 0.04 |
///
/// Trained generators sit at 0.12 and below, 4x under the threshold; the mean checkpoint alone
/// (an untrained autoencoder) is 1.
pub const RECONSTRUCTION_WARN_RATIO: f64 = 0.5;

/// Rough upper estimate of the host memory a training run needs (bytes): the K padded inputs,
/// the autoencoder's parameters with gradients and two AdamW moments, and a batch's activations
/// (forward + backward) through every layer.
pub fn estimate_training_bytes(d: usize, k: usize, config: &TrainConfig) -> u128 {
    let (ae_default, _) = config.preset.architecture(d);
    let ae = config.autoencoder.clone().unwrap_or(ae_default);
    let padded = ae.padded_len(d) as u128;
    let batch = config.batch_size.min(k.max(1)) as u128;
    if let Some(spec) = &ae.chunked {
        // The K inputs; the anchor, index maps (i64) and slot mask (~ 4 x D); a step's tokens
        // (batch x tokens_per_step x chunk, a few copies through forward and backward); the
        // latents' pass over 16 rows at a time (16 x the padded grid, ~2 x D, a few copies).
        // The networks themselves are small (~ chunk x hidden + tokens x hidden).
        let chunk = spec.chunk.max(1) as u128;
        let step = batch * spec.tokens_per_step.max(1) as u128 * chunk;
        let floats = k as u128 * padded + 4 * padded + 8 * step + 4 * 16 * 2 * padded;
        return floats * 4;
    }
    let flat = ae.encoder.last().map(|c| c.channels).unwrap_or(1) as u128 * padded / ae.encoder.iter().map(|c| c.stride as u128).product::<u128>().max(1);
    let mut params = 2 * flat * ae.latent_dim.max(1) as u128 + padded;
    let mut activations = padded;
    let (mut len, mut ch) = (padded, 1u128);
    for c in &ae.encoder {
        params += ch * c.channels as u128 * c.kernel as u128;
        len /= c.stride.max(1) as u128;
        ch = c.channels as u128;
        activations += len * ch;
    }
    for (c, &out) in ae.encoder.iter().rev().zip(&ae.decoder_channels) {
        params += ch * out as u128 * c.kernel as u128;
        len *= c.stride.max(1) as u128;
        ch = out as u128;
        activations += len * ch;
    }
    let floats = k as u128 * padded + 4 * params + 4 * batch * activations;
    floats * 4
}

/// Refuse a training run that cannot fit before anything is allocated: the estimate of
/// [`estimate_training_bytes`] against `avail` bytes (when known), `what` saying where they are
/// ("of memory is available", "free on CUDA device 0"). `check_memory` (feature `train`) picks
/// the device's figure.
pub fn check_memory_against(d: usize, k: usize, config: &TrainConfig, avail: Option<u64>, what: &str) -> Result<()> {
    let need = estimate_training_bytes(d, k, config);
    match avail {
        Some(avail) if need > avail as u128 => Err(Error::invalid(
            "parameters",
            format!(
                "D = {d}, K = {k} needs about {:.1} GiB to train but {:.1} GiB {what}; select fewer tensors or a smaller latent",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            ),
        )),
        _ => Ok(()),
    }
}

/// MemAvailable of /proc/meminfo, if readable.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
