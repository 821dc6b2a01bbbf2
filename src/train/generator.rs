//! The training loop on tch and the trained [`Generator`] (feature `train`): autoencoder, then
//! latent diffusion, then the statistics that map latents back to parameters; tch backends of
//! the shared sampler loop; a generator's bundle (export and load).
use super::{available_memory_bytes, check_memory_against, DeviceChoice, DiffusionTarget, Progress, Stage, TrainConfig, TrainHistory};
use crate::bundle::{self, Bundle, LatentStats, Manifest, Normalization};
use crate::diffusion::{check_condition_input, CondInput, DecoderBackend, DenoiserBackend};
use crate::error::{Error, Result};
use crate::fsutil::IfForeign;
use crate::model::{Autoencoder, AutoencoderConfig, ChunkedSpec, ConditionBatch, Denoiser, DenoiserConfig, TokenMap};
use crate::params::{ConditionSpec, Layout, ParamSet, STD_FLOOR};
use ndarray::{Array2, ArrayView2};
use std::path::Path;
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

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
    /// What a conditional generator is conditioned on (None: unconditional).
    pub condition: Option<ConditionSpec>,
    /// Health warnings: the dataset's (few checkpoints, misaligned ones) and training's
    /// (reconstruction error large against the checkpoints' spread). Recorded in the bundle.
    pub warnings: Vec<String>,
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
    /// `k`: the number of training checkpoints (None when loading: the bundle's configuration
    /// is already resolved).
    pub(crate) fn build(layout: Layout, mut config: TrainConfig, condition: Option<ConditionSpec>, device: Device, k: Option<usize>) -> Result<Self> {
        config.validate()?;
        if let Some(c) = &condition {
            c.validate()?;
        }
        let d = layout.param_count();
        let (ae_default, den_default) = config.preset.architecture(d);
        let mut ae_config = config.autoencoder.clone().unwrap_or(ae_default);
        let denoiser_config = config.denoiser.clone().unwrap_or(den_default);
        let principal = ae_config.chunked.as_ref().is_some_and(|s| s.components > 0);
        // The target is recorded in the bundle's training config: a loaded generator converts
        // its network's output to the noise the same way. Principal coefficients train on v as
        // conditional generators do: with epsilon, a direction the denoiser gets wrong grows at
        // every DDIM step (measured on mnist-mlp-wide: coefficients up to 1e30 at 64 components).
        config.target.get_or_insert(DiffusionTarget::default_for(condition.is_some() || principal));
        if let Some(spec) = ae_config.chunked.as_mut() {
            validate_chunked(spec, &denoiser_config)?;
            // The latent follows from the layout: the token sequence, or its principal
            // coefficients.
            let token_latent = TokenMap::new(&layout, spec.chunk as usize).tokens() as i64 * spec.token_dim;
            if let (Some(k), true) = (k, spec.components > 0) {
                // K centered checkpoints of token_latent values span at most min(K - 1,
                // token_latent) directions.
                spec.components = spec.components.min(k as i64 - 1).min(token_latent).max(1);
            }
            ae_config.latent_dim = if spec.components > 0 { spec.components } else { token_latent };
        } else if matches!(denoiser_config, DenoiserConfig::Tokens { .. }) {
            return Err(Error::invalid("denoiser", "the tokens denoiser needs the chunked autoencoder (its latent is a token sequence)"));
        } else if ae_config.encoder.is_empty() || ae_config.decoder_channels.len() != ae_config.encoder.len() {
            return Err(Error::invalid("autoencoder", "decoder_channels must have one entry per encoder conv"));
        }
        if ae_config.chunked.is_none() && ae_config.final_kernel.is_none() && ae_config.decoder_channels.last() != Some(&1) {
            return Err(Error::invalid("autoencoder", "without final_kernel the last decoder channel count must be 1"));
        }
        if ae_config.latent_dim < 1 {
            return Err(Error::invalid("autoencoder.latent_dim", "must be >= 1"));
        }
        let padded_len = ae_config.padded_len(d);
        tch::manual_seed(config.seed as i64);
        let ae_vs = nn::VarStore::new(device);
        let ae = Autoencoder::new(&ae_vs.root(), &ae_config, padded_len, &layout);
        let den_vs = nn::VarStore::new(device);
        let den = Denoiser::new(&den_vs.root(), &denoiser_config, ae_config.latent_dim, condition.as_ref().map(|c| c.dim as i64));
        let ld = ae_config.latent_dim as usize;
        Ok(Generator {
            layout,
            config,
            condition,
            ae_config,
            denoiser_config,
            padded_len,
            latent_mean: vec![0.0; ld],
            latent_std: vec![1.0; ld],
            latent_clip: vec![f32::MAX; ld],
            history: TrainHistory::default(),
            sources: Vec::new(),
            warnings: Vec::new(),
            device,
            ae_vs,
            ae,
            den_vs,
            den,
        })
    }

    /// Train autoencoder then diffusion on `set`. `progress` is called every step. A libtorch
    /// failure (CUDA out of memory included) is `Error::Torch` with libtorch's message.
    pub fn train(set: &ParamSet, config: &TrainConfig, progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Self> {
        config.validate()?;
        let device = config.device.resolve()?;
        // Refuse sizes that cannot fit before allocating anything.
        check_memory_on(set.layout.param_count(), set.k(), config, device)?;
        let _one_at_a_time = libtorch_rng();
        torch_boundary("training", || Self::train_on(set, config, device, progress))
    }

    fn train_on(set: &ParamSet, config: &TrainConfig, device: Device, progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Self> {
        let mut g = Generator::build(set.layout.clone(), config.clone(), set.conditions.as_ref().map(|c| c.spec.clone()), device, Some(set.k()))?;
        g.sources = set.sources.clone();
        let k = set.k() as i64;
        let d = set.layout.param_count();
        let data = if g.ae_config.chunked.is_some() {
            // Large D: one copy of the K x D checkpoints, normalized in place ((x - mean) / std
            // in f32, as Layout::normalize), not three (normalized, padded, tensor).
            let data = Tensor::from_slice(&set.data).view([k, d as i64]);
            tch::no_grad(|| {
                for t in &set.layout.tensors {
                    let mut part = data.narrow(1, t.offset as i64, t.numel() as i64);
                    let _ = part.g_sub_scalar_(t.mean as f64).g_div_scalar_(t.std as f64);
                }
            });
            data.to_device(device)
        } else {
            let mut padded = vec![0f32; set.k() * g.padded_len];
            for (src, dst) in set.normalized().chunks_exact(d).zip(padded.chunks_exact_mut(g.padded_len)) {
                dst[..d].copy_from_slice(src);
            }
            Tensor::from_slice(&padded).view([k, g.padded_len as i64]).to_device(device)
        };
        let batch = (config.batch_size as i64).min(k);
        g.ae.init_from_data(&data);

        // Autoencoder.
        let start = Instant::now();
        let weight_values = config.reconstruction_weighting.weights(&set.layout);
        let weights = weight_values.as_ref().map(|w| Tensor::from_slice(w).unsqueeze(0).to_device(device));
        let mut opt = nn::AdamW { wd: config.weight_decay, ..Default::default() }.build(&g.ae_vs, config.ae_lr)?;
        if let Some(spec) = g.ae_config.chunked.clone() {
            g.history.ae_loss = train_chunked_autoencoder(&g, &spec, &data, batch, &mut opt, config, progress)?;
        }
        // The conv presets train on whole vectors.
        let conv_steps = if g.ae_config.chunked.is_some() { 0 } else { config.ae_steps };
        for step in 0..conv_steps {
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
            let loss = match &weights {
                None => recon.narrow(1, 0, d as i64).mse_loss(&x.narrow(1, 0, d as i64), tch::Reduction::Mean),
                Some(w) => ((recon.narrow(1, 0, d as i64) - x.narrow(1, 0, d as i64)).square() * w).mean(Kind::Float),
            };
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
        let latents;
        if let Some(ae) = g.ae.chunked_mut() {
            // One pass of the encoder over the K checkpoints, in slices of rows (all K at once
            // would hold K x (tokens x chunk) activations, more than the data itself): their
            // token latents fix the principal basis, the latents are their coefficients in it.
            let token_latents = tch::no_grad(|| in_slices(&data, |rows| ae.token_latents(rows)));
            ae.fit_principal_components(&token_latents);
            latents = tch::no_grad(|| in_slices(&token_latents, |z| ae.project(z)));
            // (The chunked preset's loss is uniform.)
            g.history.final_reconstruction_mse = tch::no_grad(|| reconstruction_mse_in_slices(&g.ae, &data, &latents, d));
            g.history.checkpoint_variance = set.checkpoint_variance();
        } else {
            latents = tch::no_grad(|| g.ae.encode(&data));
            // Both in the loss's weighting, so that their ratio judges what training optimised.
            g.history.final_reconstruction_mse = tch::no_grad(|| {
                let err = (g.ae.decode(&latents).narrow(1, 0, d as i64) - data.narrow(1, 0, d as i64)).square();
                match &weights {
                    None => err.mean(Kind::Float),
                    Some(w) => (err * w).mean(Kind::Float),
                }
                .double_value(&[])
            });
            g.history.checkpoint_variance = set.checkpoint_variance_weighted(weight_values.as_deref());
        }
        g.warnings = set.warnings.clone();
        g.warnings.extend(g.history.reconstruction_warning());
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
        // Conditional generators: every checkpoint's condition; each step drops a row's
        // condition with probability `condition_dropout` (the same network then also learns the
        // unconditional model that classifier-free guidance needs).
        let conditions = match &set.conditions {
            Some(c) => Some(Tensor::from_slice(&c.values).view([k, c.spec.dim as i64]).to_device(device)),
            None => None,
        };
        for step in 0..config.diffusion_steps {
            opt.set_lr(cosine_lr(config.diffusion_lr, step, config.diffusion_steps));
            let idx = Tensor::randint(k, [batch], (Kind::Int64, device));
            let x0 = z0.index_select(0, &idx);
            // Every sample gets its own timestep.
            let t = Tensor::randint(timesteps, [batch], (Kind::Int64, device));
            let eps = Tensor::randn_like(&x0);
            let xt = &x0 * sqrt_ab.index_select(0, &t).unsqueeze(1) + &eps * sqrt_1mab.index_select(0, &t).unsqueeze(1);
            let mask;
            let values;
            let cond = match &conditions {
                Some(all) => {
                    values = all.index_select(0, &idx);
                    mask = Tensor::rand([batch], (Kind::Float, device)).ge(config.condition_dropout).to_kind(Kind::Float);
                    Some(ConditionBatch { values: &values, mask: &mask })
                }
                None => None,
            };
            let target = match g.target() {
                DiffusionTarget::Epsilon => eps.shallow_clone(),
                DiffusionTarget::V => &eps * sqrt_ab.index_select(0, &t).unsqueeze(1) - &x0 * sqrt_1mab.index_select(0, &t).unsqueeze(1),
            };
            let loss = g.den.forward(&xt, &t, cond).mse_loss(&target, tch::Reduction::Mean);
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
        let mut z = torch_boundary("encoder", || {
            let x = Tensor::from_slice(&padded).view([n as i64, self.padded_len as i64]).to_device(self.device);
            tensor_to_array(&tch::no_grad(|| self.ae.encode(&x)))
        })?;
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

    /// The tokens denoiser's position embedding as f32 values, [tokens x hidden] row-major.
    pub(crate) fn denoiser_position_embedding(&self) -> Result<Vec<f32>> {
        let t = self.den.position_embedding().ok_or_else(|| Error::invalid("denoiser", "not a tokens denoiser"))?;
        Ok(Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().view([-1]))?)
    }

    /// Trainable parameters of the autoencoder and of the denoiser (the chunked autoencoder's
    /// anchor and token scales are fixed data, not counted: [`Generator::fixed_values`]).
    pub fn parameter_counts(&self) -> (usize, usize) {
        let count = |vs: &nn::VarStore| vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>();
        (count(&self.ae_vs), count(&self.den_vs))
    }

    /// Values the generator stores that are not trained (the chunked autoencoder's anchor and
    /// token scales).
    pub fn fixed_values(&self) -> usize {
        let all: usize = self.ae_vs.variables().values().map(|t| t.numel()).sum::<usize>() + self.den_vs.variables().values().map(|t| t.numel()).sum::<usize>();
        let (a, d) = self.parameter_counts();
        all - a - d
    }

    /// tch backends over this generator, for the shared sampler loop.
    /// What the denoiser network predicts (its output is converted to the noise for sampling).
    pub fn target(&self) -> DiffusionTarget {
        self.config.target.unwrap_or(DiffusionTarget::default_for(self.condition.is_some()))
    }

    pub fn tch_denoiser(&self) -> TchDenoiser<'_> {
        TchDenoiser { g: self }
    }
    pub fn tch_decoder(&self) -> TchDecoder<'_> {
        TchDecoder { g: self }
    }
}

/// The chunked autoencoder's training: each step draws `batch` checkpoints and
/// `tokens_per_step` tokens and trains on those tokens of those checkpoints only. Tokens are
/// encoded and decoded independently by one shared network, so this is the same objective as
/// whole vectors (MSE over real parameters) at a cost that does not grow with D. The noise is
/// `latent_noise` on the latent as for the conv presets; `input_noise` is relative to each
/// token's spread (`scale`), not absolute.
fn train_chunked_autoencoder(
    g: &Generator,
    spec: &ChunkedSpec,
    data: &Tensor,
    batch: i64,
    opt: &mut nn::Optimizer,
    config: &TrainConfig,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Vec<f32>> {
    let ae = g.ae.chunked().ok_or_else(|| Error::invalid("autoencoder", "chunked spec without a chunked network"))?;
    let device = data.device();
    let (k, n) = (data.size()[0], ae.token_count());
    let per_step = spec.tokens_per_step.clamp(1, n);
    let mut losses = Vec::with_capacity(config.ae_steps);
    for step in 0..config.ae_steps {
        opt.set_lr(cosine_lr(config.ae_lr, step, config.ae_steps));
        let idx = Tensor::randint(k, [batch], (Kind::Int64, device));
        let tok = Tensor::randperm(n, (Kind::Int64, device)).narrow(0, 0, per_step);
        let x = ae.deviation_of_rows(data, &idx, &tok);
        let mask = ae.slot_mask(&tok).unsqueeze(0);
        // Input noise relative to each token's spread: trajectories of a wide network move by
        // ~5e-4 of a tensor's std over K checkpoints (mnist-mlp-wide), so an absolute 0.001
        // would be twice the signal; compact's 0.001 is ~10% of mnist-mlp3's spread.
        let sigma_in = ae.token_scale(&tok).view([1, -1, 1]) * config.input_noise;
        let noisy = (&x + Tensor::randn_like(&x) * sigma_in) * &mask;
        let z = ae.encode_deviation(&noisy, &tok);
        let sigma = if config.latent_noise_relative {
            z.std_dim(0, false, true).detach() * config.latent_noise
        } else {
            Tensor::from(config.latent_noise as f32).to_device(device)
        };
        let z = &z + Tensor::randn_like(&z) * sigma;
        let recon = ae.decode_deviation(&z, &tok) * &mask;
        let loss = (recon - &x).square().sum(Kind::Float) / (mask.sum(Kind::Float) * batch as f64);
        opt.backward_step(&loss);
        let l = loss.double_value(&[]);
        check_loss(Stage::Autoencoder, step, l)?;
        losses.push(l as f32);
        if !progress(&Progress { stage: Stage::Autoencoder, step: step + 1, total: config.ae_steps, loss: l }) {
            return Err(Error::Cancelled);
        }
    }
    Ok(losses)
}

/// `f` of every row of `data` [K, ..], 16 rows at a time, concatenated.
fn in_slices(data: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let k = data.size()[0];
    let parts: Vec<Tensor> = (0..k).step_by(16).map(|start| f(&data.narrow(0, start, 16.min(k - start)))).collect();
    Tensor::cat(&parts, 0)
}

/// The autoencoder's reconstruction MSE of `data` [K, D] from its `latents` [K, d], decoding 16
/// rows at a time.
fn reconstruction_mse_in_slices(ae: &Autoencoder, data: &Tensor, latents: &Tensor, d: usize) -> f64 {
    let k = data.size()[0];
    let mut sq = 0f64;
    for start in (0..k).step_by(16) {
        let n = 16.min(k - start);
        let rows = data.narrow(0, start, n);
        sq += (ae.decode(&latents.narrow(0, start, n)).narrow(1, 0, d as i64) - rows.narrow(1, 0, d as i64)).square().sum(Kind::Float).double_value(&[]);
    }
    sq / (k as f64 * d as f64)
}

/// A chunked autoencoder's spec and the denoiser it needs, checked before building anything.
fn validate_chunked(spec: &ChunkedSpec, denoiser: &DenoiserConfig) -> Result<()> {
    for (field, v) in [("chunk", spec.chunk), ("hidden", spec.hidden), ("token_dim", spec.token_dim), ("tokens_per_step", spec.tokens_per_step)] {
        if v < 1 {
            return Err(Error::invalid(&format!("autoencoder.chunked.{field}"), format!("{v} (must be >= 1)")));
        }
    }
    if spec.components < 0 {
        return Err(Error::invalid("autoencoder.chunked.components", format!("{} (must be >= 0)", spec.components)));
    }
    if spec.components > 0 {
        // The latent is a plain vector of coefficients: any vector denoiser.
        return match denoiser {
            DenoiserConfig::Tokens { .. } => Err(Error::invalid(
                "denoiser",
                "the chunked autoencoder's latent is its principal coefficients (components > 0): the tokens denoiser needs components = 0",
            )),
            _ => Ok(()),
        };
    }
    match denoiser {
        DenoiserConfig::Tokens { token_dim, hidden, blocks, position_dim, time_dim } => {
            if *token_dim != spec.token_dim {
                return Err(Error::invalid("denoiser.token_dim", format!("{token_dim}, but the chunked autoencoder's token_dim is {}", spec.token_dim)));
            }
            for (field, v) in [("hidden", *hidden), ("blocks", *blocks), ("position_dim", *position_dim), ("time_dim", *time_dim)] {
                if v < 1 || (field == "time_dim" && v % 2 != 0) {
                    return Err(Error::invalid(&format!("denoiser.{field}"), format!("{v} (must be >= 1{})", if field == "time_dim" { " and even" } else { "" })));
                }
            }
            Ok(())
        }
        other => Err(Error::invalid("denoiser", format!("the chunked autoencoder's latent is a token sequence (components = 0): it needs the tokens denoiser, not {other:?}"))),
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
    fn condition_dim(&self) -> Option<usize> {
        self.g.condition.as_ref().map(|c| c.dim)
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64], cond: Option<CondInput<'_>>) -> Result<Array2<f32>> {
        if x.ncols() != self.latent_dim() || t.len() != x.nrows() {
            return Err(Error::invalid("denoiser input", format!("x {:?}, t [{}]; expected [B, {}] and [B]", x.dim(), t.len(), self.latent_dim())));
        }
        check_condition_input(self.condition_dim(), x.nrows(), cond.as_ref())?;
        torch_boundary("denoiser", || {
            let device = self.g.device;
            let xt = array_to_tensor(x, device);
            let tt = Tensor::from_slice(t).to_device(device);
            let values = cond.map(|c| array_to_tensor(c.values, device));
            let mask = cond.map(|c| Tensor::from_slice(c.mask).to_device(device));
            let batch = values.as_ref().zip(mask.as_ref()).map(|(values, mask)| ConditionBatch { values, mask });
            let out = tch::no_grad(|| self.g.den.forward(&xt, &tt, batch));
            let eps = match self.g.target() {
                DiffusionTarget::Epsilon => out,
                // eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t, with the f32 coefficients the
                // exported graph uses.
                DiffusionTarget::V => {
                    let tab = self.g.config.schedule.tables();
                    let (a, b): (Vec<f32>, Vec<f32>) = t.iter().map(|&ti| (tab.alpha_bars[ti as usize].sqrt() as f32, (1.0 - tab.alpha_bars[ti as usize]).sqrt() as f32)).unzip();
                    let a = Tensor::from_slice(&a).to_device(device).unsqueeze(1);
                    let b = Tensor::from_slice(&b).to_device(device).unsqueeze(1);
                    out * a + &xt * b
                }
            };
            tensor_to_array(&eps)
        })
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
        let d = g.layout.param_count();
        let mut a = torch_boundary("decoder", || {
            let mean = Tensor::from_slice(&g.latent_mean).to_device(g.device).unsqueeze(0);
            let std = Tensor::from_slice(&g.latent_std).to_device(g.device).unsqueeze(0);
            let clip = Tensor::from_slice(&g.latent_clip).to_device(g.device).unsqueeze(0);
            let zt = array_to_tensor(z, g.device).minimum(&clip).maximum(&(-&clip)) * std + mean;
            tensor_to_array(&tch::no_grad(|| g.ae.decode(&zt).narrow(1, 0, d as i64)))
        })?;
        let mut tmp = vec![0f32; d];
        for mut row in a.rows_mut() {
            let src = row.as_slice().expect("row-major").to_vec();
            g.layout.denormalize(&src, &mut tmp);
            row.as_slice_mut().unwrap().copy_from_slice(&tmp);
        }
        Ok(a)
    }
}

impl Generator {
    /// The bundle manifest of this generator (file lists are filled in by [`bundle::write`]).
    pub fn manifest(&self) -> Manifest {
        Manifest {
            format_version: bundle::FORMAT_VERSION,
            library_version: env!("CARGO_PKG_VERSION").into(),
            param_count: self.layout.param_count(),
            padded_len: self.padded_len,
            latent_dim: self.latent_dim(),
            layout: self.layout.tensors.clone(),
            normalization: Normalization { kind: "per_tensor_standardize".into(), std_floor: STD_FLOOR },
            latent: LatentStats { mean: self.latent_mean.clone(), std: self.latent_std.clone(), clip: self.latent_clip.clone() },
            schedule: self.config.schedule.clone(),
            prediction: "epsilon".into(),
            preset: self.config.preset,
            autoencoder: self.ae_config.clone(),
            denoiser: self.denoiser_config.clone(),
            training: self.config.clone(),
            history: self.history.clone(),
            sources: self.sources.clone(),
            condition: self.condition.clone(),
            warnings: self.warnings.clone(),
            files: Default::default(),
            sha256: Default::default(),
        }
    }

    /// Export as a bundle directory (docs/bundle-format.md), written atomically: the manifest,
    /// both ONNX graphs and the tch weights (for further training or tch sampling). A previous
    /// bundle at `dir` is replaced; anything else there is refused ([`Error::OutputExists`]).
    pub fn export_bundle(&self, dir: &Path) -> Result<Manifest> {
        self.export_bundle_with(dir, IfForeign::Refuse)
    }

    /// [`Generator::export_bundle`] with the policy for files libpdiff did not write at `dir`
    /// ([`IfForeign::Force`] writes the bundle beside them; they are kept).
    pub fn export_bundle_with(&self, dir: &Path, if_foreign: IfForeign) -> Result<Manifest> {
        self.export_bundle_opts(dir, &bundle::ExportOptions { if_foreign, ..Default::default() })
    }

    /// [`Generator::export_bundle`] with all the options: the policy for foreign files, and
    /// the size above which a graph keeps its largest initializers in an external data file
    /// (`<graph>.data`, role `<role>_data`; the bundle's format_version is then 2).
    pub fn export_bundle_opts(&self, dir: &Path, opts: &bundle::ExportOptions) -> Result<Manifest> {
        let mut files = vec![
            ("autoencoder_weights".to_string(), bundle::AE_WEIGHTS.to_string(), varstore_to_safetensors(&self.ae_vs)?),
            ("denoiser_weights".to_string(), bundle::DENOISER_WEIGHTS.to_string(), varstore_to_safetensors(&self.den_vs)?),
        ];
        let graphs: [(&str, &str, fn(&Generator) -> Result<crate::onnx::proto::ModelProto>); 3] = [
            ("decoder", bundle::DECODER_ONNX, crate::onnx::export_decoder),
            ("denoiser", bundle::DENOISER_ONNX, crate::onnx::export_denoiser),
            ("sampler", bundle::SAMPLER_ONNX, crate::onnx::export_sampler),
        ];
        for (role, file, export) in graphs {
            let data_file = format!("{file}.data");
            let encoded = crate::onnx::external::encode(export(self)?, file, &data_file, opts.inline_graph_limit)?;
            files.push((role.to_string(), file.to_string(), encoded.graph));
            if let Some(data) = encoded.data {
                files.push((bundle::data_role(role), data_file, data));
            }
        }
        bundle::write(dir, self.manifest(), files.iter().map(|(r, n, b)| (r.as_str(), n.as_str(), b.as_slice())).collect(), opts.if_foreign)
    }

    /// Load the tch generator of a bundle (for further training, re-export or tch sampling).
    pub fn load_bundle(dir: &Path, device: DeviceChoice) -> Result<Generator> {
        let _one_at_a_time = libtorch_rng();
        torch_boundary("loading the generator", || Self::load_bundle_on(dir, device))
    }

    fn load_bundle_on(dir: &Path, device: DeviceChoice) -> Result<Generator> {
        let b = Bundle::read(dir, &["autoencoder_weights", "denoiser_weights"])?;
        let m = &b.manifest;
        let mut config = m.training.clone();
        config.autoencoder = Some(m.autoencoder.clone());
        config.denoiser = Some(m.denoiser.clone());
        let mut g = Generator::build(m.layout(), config, m.condition.clone(), device.resolve()?, None)?;
        for (vs, role) in [(&g.ae_vs, "autoencoder_weights"), (&g.den_vs, "denoiser_weights")] {
            load_safetensors_into(vs, b.file(role)?).map_err(|e| Error::bundle(dir, format!("{}: {e}", m.files[role])))?;
        }
        g.latent_mean = m.latent.mean.clone();
        g.latent_std = m.latent.std.clone();
        g.latent_clip = m.latent.clip.clone();
        g.history = m.history.clone();
        g.sources = m.sources.clone();
        g.warnings = m.warnings.clone();
        g.padded_len = m.padded_len;
        Ok(g)
    }
}

/// Exclusive use of libtorch's random number generator. It is process-wide, and a training run
/// seeds it and then draws from it at every step (initialization, batches, noise): two runs at
/// once would interleave their draws and neither would be reproducible. So trainings (and
/// generator loads, which build networks) in one process run one at a time; on a CPU libtorch
/// already uses every core for one run, on a GPU runs queue.
fn libtorch_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run libtorch work; a libtorch error becomes `Error::Torch` with libtorch's own message
/// (prefixed by `what`), never a panic. tch's infallible methods panic on a libtorch error
/// (CUDA out of memory, a device-side assertion, a shape libtorch refuses); training runs long
/// on devices that can fail, so each stage runs inside this boundary rather than through the
/// `f_` variant of every call. Any other panic is a bug of ours and unwinds on (to the C ABI's
/// panic boundary).
pub fn torch_boundary<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            match torch_message(text) {
                Some(message) => Err(Error::Torch(format!("{what}: {message}"))),
                None => std::panic::resume_unwind(payload),
            }
        }
    }
}

/// libtorch's message in a panic of tch's `.unwrap()` on a `TchError::Torch` (its Debug form:
/// `Torch("...")`), unescaped; `None` when the panic is not a libtorch error.
fn torch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let end = panic.rfind("\")")?;
    let escaped = panic.get(start..end)?;
    // The Debug form escapes quotes, backslashes and newlines; keep the first lines readable.
    let message = escaped.replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\");
    Some(message.lines().take(3).collect::<Vec<_>>().join(" ").trim().to_string())
}

/// Free memory of CUDA device `index` (cudaMemGetInfo), through the CUDA runtime that libtorch
/// loaded; None when it cannot be asked.
/// Refuse a training run on `config.device` that cannot fit (see [`check_memory_against`]):
/// against the GPU's free memory when it trains on CUDA, the host's available memory otherwise.
pub fn check_memory(d: usize, k: usize, config: &TrainConfig) -> Result<()> {
    check_memory_on(d, k, config, config.device.resolve()?)
}

fn check_memory_on(d: usize, k: usize, config: &TrainConfig, device: Device) -> Result<()> {
    match device {
        Device::Cuda(i) => check_memory_against(d, k, config, cuda_free_memory(i), &format!("free on CUDA device {i}")),
        _ => check_memory_against(d, k, config, available_memory_bytes(), "of memory is available"),
    }
}

fn cuda_free_memory(index: usize) -> Option<u64> {
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: looks up the CUDA runtime already in the process (RTLD_NOLOAD) and calls three of
    // its documented functions with valid pointers; the current device is restored.
    unsafe {
        let lib = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"].iter().find_map(|name| {
            let c = std::ffi::CString::new(*name).ok()?;
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            (!h.is_null()).then_some(h)
        })?;
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let get: GetDevice = std::mem::transmute(sym(c"cudaGetDevice")?);
        let set: SetDevice = std::mem::transmute(sym(c"cudaSetDevice")?);
        let info: MemGetInfo = std::mem::transmute(sym(c"cudaMemGetInfo")?);
        let mut current = 0;
        if get(&mut current) != 0 || set(index as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let ok = info(&mut free, &mut total) == 0;
        set(current);
        ok.then_some(free as u64)
    }
}

/// A VarStore's variables as safetensors bytes (f32, sorted by name).
fn varstore_to_safetensors(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut values = Vec::with_capacity(vars.len());
    for (name, t) in &vars {
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let v = Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]))?;
        values.push((name.clone(), shape, v));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = values
        .iter()
        .map(|(name, shape, v)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), f32_bytes(v))
                .map_err(|e| Error::Torch(format!("variable '{name}': {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Torch(format!("serializing weights: {e}")))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; safetensors is little-endian
    // like every target this library builds for.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Copy safetensors weights into the variables of `vs`: every variable must be present with
/// its shape, as f32 (the format [`varstore_to_safetensors`] writes).
fn load_safetensors_into(vs: &nn::VarStore, bytes: &[u8]) -> std::result::Result<(), String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a readable safetensors file ({e})"))?;
    for (name, mut var) in vs.variables() {
        let view = st.tensor(&name).map_err(|_| format!("variable '{name}' is missing"))?;
        let want: Vec<usize> = var.size().iter().map(|&s| s as usize).collect();
        if view.shape() != want.as_slice() || view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("variable '{name}': {:?} {:?}, expected F32 {want:?}", view.dtype(), view.shape()));
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let src = Tensor::from_slice(&values).view(var.size().as_slice()).to_device(var.device());
        tch::no_grad(|| var.copy_(&src));
    }
    Ok(())
}
