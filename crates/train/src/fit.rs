//! Fitting a generator (docs/design.md, "Training"): the autoencoder on normalized parameter
//! vectors (or, for the chunked preset, on their tokens), the latent statistics and clip
//! bounds, then the latent DDPM on standardized latents.
use crate::generator::{Generator, LATENT_CLIP_MARGIN, LATENT_STD_FLOOR};
use crate::nets::{Autoencoder, ConditionBatch};
use crate::torch::{check_memory_on, libtorch_rng, resolve_device, tensor_to_vec, torch_boundary, training_threads, IntraOpThreads, TorchResult};
use pdiff_core::error::{Error, Result};
use pdiff_core::model::ChunkedSpec;
use pdiff_core::params::ParamSet;
use pdiff_core::training::{DiffusionTarget, Progress, Stage, TrainConfig};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

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
    /// failure (CUDA out of memory included) is `Error::Torch` with libtorch's message.
    pub fn train(set: &ParamSet, config: &TrainConfig, progress: &mut dyn FnMut(&Progress) -> bool) -> Result<Self> {
        config.validate()?;
        let device = resolve_device(config.device)?;
        // Refuse sizes that cannot fit before allocating anything.
        check_memory_on(set.layout.param_count(), set.k(), config, device)?;
        let _one_at_a_time = libtorch_rng();
        // The thread count is the training's, not the host's: restored when training ends.
        let _threads = IntraOpThreads::set(training_threads(config));
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
        let mut opt = nn::AdamW { wd: config.weight_decay, ..Default::default() }.build(&g.ae_vs, config.ae_lr).torch()?;
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
        g.latent_mean = tensor_to_vec(&mean)?;
        g.latent_std = tensor_to_vec(&std)?;
        let z0 = ((&latents - mean.unsqueeze(0)) / std.unsqueeze(0)).detach();
        let max_abs = z0.abs().amax(0, false) * LATENT_CLIP_MARGIN;
        g.latent_clip = tensor_to_vec(&max_abs)?;

        // Diffusion.
        let start = Instant::now();
        let tab = config.schedule.tables();
        let sqrt_ab: Vec<f32> = tab.alpha_bars.iter().map(|a| a.sqrt() as f32).collect();
        let sqrt_1mab: Vec<f32> = tab.alpha_bars.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
        let sqrt_ab = Tensor::from_slice(&sqrt_ab).to_device(device);
        let sqrt_1mab = Tensor::from_slice(&sqrt_1mab).to_device(device);
        let mut opt = nn::AdamW { wd: config.weight_decay, ..Default::default() }.build(&g.den_vs, config.diffusion_lr).torch()?;
        let mut ema: Option<Vec<(Tensor, Tensor)>> = config.ema.map(|_| g.den_vs.trainable_variables().into_iter().map(|v| (v.detach().copy(), v)).collect());
        let timesteps = config.schedule.timesteps as i64;
        // Conditional generators: every checkpoint's condition; each step drops a row's
        // condition with probability `condition_dropout` (the same network then also learns the
        // unconditional model that classifier-free guidance needs).
        let conditions = set.conditions.as_ref().map(|c| Tensor::from_slice(&c.values).view([k, c.spec.dim as i64]).to_device(device));
        for step in 0..config.diffusion_steps {
            opt.set_lr(cosine_lr(config.diffusion_lr, step, config.diffusion_steps));
            let idx = Tensor::randint(k, [batch], (Kind::Int64, device));
            // Each drawn latent `timesteps_per_row` times (1: the batch as drawn, the same draws
            // as before the option existed).
            let (idx, rows) = match config.timesteps_per_row as i64 {
                1 => (idx, batch),
                r => (idx.repeat([r]), batch * r),
            };
            let x0 = z0.index_select(0, &idx);
            // Every sample gets its own timestep.
            let t = Tensor::randint(timesteps, [rows], (Kind::Int64, device));
            let eps = Tensor::randn_like(&x0);
            let xt = &x0 * sqrt_ab.index_select(0, &t).unsqueeze(1) + &eps * sqrt_1mab.index_select(0, &t).unsqueeze(1);
            let mask;
            let values;
            let cond = match &conditions {
                Some(all) => {
                    values = all.index_select(0, &idx);
                    mask = Tensor::rand([rows], (Kind::Float, device)).ge(config.condition_dropout).to_kind(Kind::Float);
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
