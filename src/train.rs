//! Training of a generator (SPEC §2-3): the autoencoder on normalized, padded parameter
//! vectors, then the latent DDPM on standardized latents. tch on CUDA when available.
use crate::diffusion::{DecoderBackend, DenoiserBackend, Schedule};
use crate::error::{Error, Result};
use crate::model::{Autoencoder, AutoencoderConfig, Denoiser, DenoiserConfig, Preset};
use crate::params::{Layout, ParamSet};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

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

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if tch::Cuda::is_available() && i < n {
                    Ok(Device::Cuda(i))
                } else {
                    Err(Error::DeviceUnavailable(format!("CUDA device {i} requested, libtorch sees {n} CUDA device(s)")))
                }
            }
        }
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Everything that decides a training run. `TrainConfig::new(preset)` gives the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: Preset,
    /// Architecture overrides; `None` takes the preset's.
    pub autoencoder: Option<AutoencoderConfig>,
    pub denoiser: Option<DenoiserConfig>,
    pub ae_steps: usize,
    pub diffusion_steps: usize,
    pub batch_size: usize,
    pub ae_lr: f64,
    pub diffusion_lr: f64,
    pub weight_decay: f64,
    /// Gaussian noise added to the normalized input while training the autoencoder.
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
    pub schedule: Schedule,
    pub seed: u64,
    pub device: DeviceChoice,
}

impl TrainConfig {
    pub fn new(preset: Preset) -> Self {
        // The compact denoiser is a small MLP: it trains fast and wants a larger LR.
        let (ae_steps, diffusion_steps, diffusion_lr) = match preset {
            Preset::Compact => (1000, 8000, 3e-3),
            Preset::Paper => (30_000, 30_000, 1e-3),
        };
        TrainConfig {
            preset,
            autoencoder: None,
            denoiser: None,
            ae_steps,
            diffusion_steps,
            batch_size: 50,
            ae_lr: 1e-3,
            diffusion_lr,
            weight_decay: 2e-6,
            input_noise: 0.001,
            latent_noise: 0.1,
            latent_noise_relative: false,
            ema: None,
            schedule: Schedule::default(),
            seed: 0,
            device: DeviceChoice::Auto,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
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
        if let Some(e) = self.ema {
            if !(0.0..1.0).contains(&e) {
                return Err(Error::invalid("ema", format!("{e} (decay must be in [0, 1))")));
            }
        }
        Ok(())
    }
}

/// Training stage reported to a progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Autoencoder,
    Diffusion,
    Sampling,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Autoencoder => "autoencoder",
            Stage::Diffusion => "diffusion",
            Stage::Sampling => "sampling",
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
    /// Reconstruction error (MSE, normalized units) of the K inputs after training.
    pub final_reconstruction_mse: f64,
}

/// A trained generator: autoencoder + denoiser + the statistics that map latents back to
/// parameters in host units.
pub struct Generator {
    pub layout: Layout,
    pub config: TrainConfig,
    pub ae_config: AutoencoderConfig,
    pub denoiser_config: DenoiserConfig,
    pub padded_len: usize,
    pub latent_mean: Vec<f32>,
    pub latent_std: Vec<f32>,
    /// Per-dimension bound on |standardized latent| applied before decoding: LATENT_CLIP_MARGIN
    /// times the largest magnitude among the K training latents. A sample the reverse process
    /// throws far off the data (rare, seen with small K) then decodes to a plausible model
    /// instead of garbage.
    pub latent_clip: Vec<f32>,
    pub history: TrainHistory,
    pub sources: Vec<String>,
    pub device: Device,
    pub(crate) ae_vs: nn::VarStore,
    pub(crate) ae: Autoencoder,
    pub(crate) den_vs: nn::VarStore,
    pub(crate) den: Denoiser,
}

/// Latent std floor: a latent dimension that never varies is not divided by ~0.
pub const LATENT_STD_FLOOR: f32 = 1e-6;
/// Generated standardized latents are clipped to this multiple of the training latents' range.
pub const LATENT_CLIP_MARGIN: f64 = 1.5;

/// Rough upper estimate of the host memory a training run needs (bytes): the K padded inputs,
/// the autoencoder's parameters with gradients and two AdamW moments, and a batch's activations
/// (forward + backward) through every layer.
pub fn estimate_training_bytes(d: usize, k: usize, config: &TrainConfig) -> u128 {
    let (ae_default, _) = config.preset.architecture(d);
    let ae = config.autoencoder.clone().unwrap_or(ae_default);
    let padded = ae.padded_len(d) as u128;
    let batch = config.batch_size.min(k.max(1)) as u128;
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

/// MemAvailable of /proc/meminfo, if readable.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cosine_lr(base: f64, step: usize, total: usize) -> f64 {
    base * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
}

fn check_loss(stage: Stage, step: usize, loss: f64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged { stage: stage.name().into(), step, loss })
    }
}

impl Generator {
    /// Build the networks (untrained) for a layout; used by training and by loading.
    pub(crate) fn build(layout: Layout, config: TrainConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let d = layout.param_count();
        let (ae_default, den_default) = config.preset.architecture(d);
        let ae_config = config.autoencoder.clone().unwrap_or(ae_default);
        let denoiser_config = config.denoiser.clone().unwrap_or(den_default);
        if ae_config.encoder.is_empty() || ae_config.decoder_channels.len() != ae_config.encoder.len() {
            return Err(Error::invalid("autoencoder", "decoder_channels must have one entry per encoder conv"));
        }
        if ae_config.final_kernel.is_none() && ae_config.decoder_channels.last() != Some(&1) {
            return Err(Error::invalid("autoencoder", "without final_kernel the last decoder channel count must be 1"));
        }
        if ae_config.latent_dim < 1 {
            return Err(Error::invalid("autoencoder.latent_dim", "must be >= 1"));
        }
        let padded_len = ae_config.padded_len(d);
        tch::manual_seed(config.seed as i64);
        let ae_vs = nn::VarStore::new(device);
        let ae = Autoencoder::new(&ae_vs.root(), &ae_config, padded_len);
        let den_vs = nn::VarStore::new(device);
        let den = Denoiser::new(&den_vs.root(), &denoiser_config, ae_config.latent_dim);
        let ld = ae_config.latent_dim as usize;
        Ok(Generator {
            layout,
            config,
            ae_config,
            denoiser_config,
            padded_len,
            latent_mean: vec![0.0; ld],
            latent_std: vec![1.0; ld],
            latent_clip: vec![f32::MAX; ld],
            history: TrainHistory::default(),
            sources: Vec::new(),
            device,
            ae_vs,
            ae,
            den_vs,
            den,
        })
    }

    /// Train autoencoder then diffusion on `set`. `progress` is called every step.
    pub fn train(set: &ParamSet, config: &TrainConfig, progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Self> {
        config.validate()?;
        // Refuse sizes that cannot fit before allocating anything.
        let need = estimate_training_bytes(set.layout.param_count(), set.k(), config);
        if let Some(avail) = available_memory_bytes() {
            if need > avail as u128 {
                return Err(Error::invalid(
                    "parameters",
                    format!(
                        "D = {}, K = {} needs about {:.1} GiB to train but {:.1} GiB of memory is available; select fewer tensors or a smaller latent",
                        set.layout.param_count(),
                        set.k(),
                        need as f64 / (1u64 << 30) as f64,
                        avail as f64 / (1u64 << 30) as f64
                    ),
                ));
            }
        }
        let device = config.device.resolve()?;
        let mut g = Generator::build(set.layout.clone(), config.clone(), device)?;
        g.sources = set.sources.clone();
        let k = set.k() as i64;
        let d = set.layout.param_count();
        let mut padded = vec![0f32; set.k() * g.padded_len];
        for (src, dst) in set.normalized().chunks_exact(d).zip(padded.chunks_exact_mut(g.padded_len)) {
            dst[..d].copy_from_slice(src);
        }
        let data = Tensor::from_slice(&padded).view([k, g.padded_len as i64]).to_device(device);
        let batch = (config.batch_size as i64).min(k);
        g.ae.init_position_bias(&data.mean_dim(0, false, Kind::Float));

        // Autoencoder.
        let start = Instant::now();
        let mut opt = nn::AdamW { wd: config.weight_decay, ..Default::default() }.build(&g.ae_vs, config.ae_lr)?;
        for step in 0..config.ae_steps {
            opt.set_lr(cosine_lr(config.ae_lr, step, config.ae_steps));
            let idx = Tensor::randint(k, [batch], (Kind::Int64, device));
            let x = data.index_select(0, &idx);
            let noisy = &x + Tensor::randn_like(&x) * config.input_noise;
            let z = g.ae.encode(&noisy);
            let sigma = if config.latent_noise_relative {
                z.std_dim(0, false, true).detach() * config.latent_noise
            } else {
                Tensor::from(config.latent_noise as f32).to_device(device)
            };
            let z = &z + Tensor::randn_like(&z) * sigma;
            let recon = g.ae.decode(&z);
            let loss = recon.narrow(1, 0, d as i64).mse_loss(&x.narrow(1, 0, d as i64), tch::Reduction::Mean);
            opt.backward_step(&loss);
            let l = loss.double_value(&[]);
            check_loss(Stage::Autoencoder, step, l)?;
            g.history.ae_loss.push(l as f32);
            if !progress(&Progress { stage: Stage::Autoencoder, step: step + 1, total: config.ae_steps, loss: l }) {
                return Err(Error::Cancelled);
            }
        }
        g.history.ae_seconds = start.elapsed().as_secs_f64();

        // Latent statistics (no noise).
        let latents = tch::no_grad(|| g.ae.encode(&data));
        g.history.final_reconstruction_mse = tch::no_grad(|| {
            g.ae.decode(&latents).narrow(1, 0, d as i64).mse_loss(&data.narrow(1, 0, d as i64), tch::Reduction::Mean).double_value(&[])
        });
        let mean = latents.mean_dim(0, false, Kind::Float);
        let std = latents.std_dim(0, false, false).clamp_min(LATENT_STD_FLOOR as f64);
        g.latent_mean = Vec::<f32>::try_from(&mean.to_device(Device::Cpu))?;
        g.latent_std = Vec::<f32>::try_from(&std.to_device(Device::Cpu))?;
        let z0 = ((&latents - mean.unsqueeze(0)) / std.unsqueeze(0)).detach();
        let max_abs = z0.abs().amax(0, false) * LATENT_CLIP_MARGIN;
        g.latent_clip = Vec::<f32>::try_from(&max_abs.to_device(Device::Cpu))?;

        // Diffusion.
        let start = Instant::now();
        let tab = config.schedule.tables();
        let sqrt_ab: Vec<f32> = tab.alpha_bars.iter().map(|a| a.sqrt() as f32).collect();
        let sqrt_1mab: Vec<f32> = tab.alpha_bars.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
        let sqrt_ab = Tensor::from_slice(&sqrt_ab).to_device(device);
        let sqrt_1mab = Tensor::from_slice(&sqrt_1mab).to_device(device);
        let mut opt = nn::AdamW { wd: config.weight_decay, ..Default::default() }.build(&g.den_vs, config.diffusion_lr)?;
        let mut ema: Option<Vec<(Tensor, Tensor)>> = config.ema.map(|_| {
            g.den_vs.trainable_variables().into_iter().map(|v| (v.detach().copy(), v)).collect()
        });
        let timesteps = config.schedule.timesteps as i64;
        for step in 0..config.diffusion_steps {
            opt.set_lr(cosine_lr(config.diffusion_lr, step, config.diffusion_steps));
            let idx = Tensor::randint(k, [batch], (Kind::Int64, device));
            let x0 = z0.index_select(0, &idx);
            // Every sample gets its own timestep.
            let t = Tensor::randint(timesteps, [batch], (Kind::Int64, device));
            let eps = Tensor::randn_like(&x0);
            let xt = &x0 * sqrt_ab.index_select(0, &t).unsqueeze(1) + &eps * sqrt_1mab.index_select(0, &t).unsqueeze(1);
            let loss = g.den.forward(&xt, &t).mse_loss(&eps, tch::Reduction::Mean);
            opt.backward_step(&loss);
            if let (Some(decay), Some(ema)) = (config.ema, ema.as_mut()) {
                tch::no_grad(|| {
                    for (avg, w) in ema.iter_mut() {
                        let _ = avg.g_mul_scalar_(decay).g_add_(&(w.detach() * (1.0 - decay)));
                    }
                });
            }
            let l = loss.double_value(&[]);
            check_loss(Stage::Diffusion, step, l)?;
            g.history.diffusion_loss.push(l as f32);
            if !progress(&Progress { stage: Stage::Diffusion, step: step + 1, total: config.diffusion_steps, loss: l }) {
                return Err(Error::Cancelled);
            }
        }
        if let Some(ema) = ema {
            tch::no_grad(|| {
                for (avg, mut w) in ema {
                    w.copy_(&avg);
                }
            });
        }
        g.history.diffusion_seconds = start.elapsed().as_secs_f64();
        Ok(g)
    }

    pub fn latent_dim(&self) -> usize {
        self.ae_config.latent_dim as usize
    }

    /// Encode K parameter vectors (host units, row-major) to standardized latents.
    pub fn encode(&self, rows: &[f32]) -> Result<Array2<f32>> {
        let d = self.layout.param_count();
        if rows.len() % d != 0 || rows.is_empty() {
            return Err(Error::invalid("parameters", format!("{} values is not a multiple of D = {d}", rows.len())));
        }
        let n = rows.len() / d;
        let mut padded = vec![0f32; n * self.padded_len];
        for (src, dst) in rows.chunks_exact(d).zip(padded.chunks_exact_mut(self.padded_len)) {
            self.layout.normalize(src, &mut dst[..d]);
        }
        let x = Tensor::from_slice(&padded).view([n as i64, self.padded_len as i64]).to_device(self.device);
        let z = tch::no_grad(|| self.ae.encode(&x));
        let mut z = tensor_to_array(&z)?;
        for mut row in z.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&self.latent_mean).zip(&self.latent_std) {
                *v = (*v - m) / s;
            }
        }
        Ok(z)
    }

    /// Named tensors of both networks (for export).
    pub fn autoencoder_variables(&self) -> std::collections::HashMap<String, Tensor> {
        self.ae_vs.variables()
    }
    pub fn denoiser_variables(&self) -> std::collections::HashMap<String, Tensor> {
        self.den_vs.variables()
    }

    /// tch backends over this generator, for the shared sampler loop.
    pub fn tch_denoiser(&self) -> TchDenoiser<'_> {
        TchDenoiser { g: self }
    }
    pub fn tch_decoder(&self) -> TchDecoder<'_> {
        TchDecoder { g: self }
    }
}

pub(crate) fn tensor_to_array(t: &Tensor) -> Result<Array2<f32>> {
    let size = t.size();
    let (r, c) = (size[0] as usize, size[1] as usize);
    let v = Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]))?;
    Array2::from_shape_vec((r, c), v).map_err(|e| Error::Torch(e.to_string()))
}

fn array_to_tensor(a: ArrayView2<'_, f32>, device: Device) -> Tensor {
    let (r, c) = a.dim();
    let v: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&v).view([r as i64, c as i64]).to_device(device)
}

/// The denoiser run by libtorch.
pub struct TchDenoiser<'a> {
    g: &'a Generator,
}

impl DenoiserBackend for TchDenoiser<'_> {
    fn latent_dim(&self) -> usize {
        self.g.latent_dim()
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64]) -> Result<Array2<f32>> {
        if x.ncols() != self.latent_dim() || t.len() != x.nrows() {
            return Err(Error::invalid("denoiser input", format!("x {:?}, t [{}]; expected [B, {}] and [B]", x.dim(), t.len(), self.latent_dim())));
        }
        let xt = array_to_tensor(x, self.g.device);
        let tt = Tensor::from_slice(t).to_device(self.g.device);
        tensor_to_array(&tch::no_grad(|| self.g.den.forward(&xt, &tt)))
    }
}

/// The decoder run by libtorch, with the same de-standardization, unpadding and
/// de-normalization that the exported decoder graph does.
pub struct TchDecoder<'a> {
    g: &'a Generator,
}

impl DecoderBackend for TchDecoder<'_> {
    fn param_count(&self) -> usize {
        self.g.layout.param_count()
    }
    fn decode(&self, z: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let g = self.g;
        if z.ncols() != g.latent_dim() {
            return Err(Error::invalid("decoder input", format!("z {:?}; expected [B, {}]", z.dim(), g.latent_dim())));
        }
        let mean = Tensor::from_slice(&g.latent_mean).to_device(g.device).unsqueeze(0);
        let std = Tensor::from_slice(&g.latent_std).to_device(g.device).unsqueeze(0);
        let clip = Tensor::from_slice(&g.latent_clip).to_device(g.device).unsqueeze(0);
        let zt = array_to_tensor(z, g.device).minimum(&clip).maximum(&(-&clip)) * std + mean;
        let d = g.layout.param_count();
        let out = tch::no_grad(|| g.ae.decode(&zt).narrow(1, 0, d as i64));
        let mut a = tensor_to_array(&out)?;
        let mut tmp = vec![0f32; d];
        for mut row in a.rows_mut() {
            let src = row.as_slice().expect("row-major").to_vec();
            g.layout.denormalize(&src, &mut tmp);
            row.as_slice_mut().unwrap().copy_from_slice(&tmp);
        }
        Ok(a)
    }
}
