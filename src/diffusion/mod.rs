//! Latent DDPM: the linear noise schedule and the two samplers (DDPM ancestral, DDIM eta = 0),
//! written once over ndarray and generic over the backend that runs the networks (tch while
//! training, ONNX Runtime when serving). Noise comes from a seeded ChaCha RNG in a fixed order,
//! so a seed gives the same parameters on every backend.
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Linear beta schedule (docs/design.md, "Training": 1e-4 -> 2e-2, T = 1000).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: String,
    pub beta_start: f64,
    pub beta_end: f64,
    pub timesteps: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { kind: "linear".into(), beta_start: 1e-4, beta_end: 2e-2, timesteps: 1000 }
    }
}

/// Precomputed schedule quantities (f64, then used in f32 arithmetic).
#[derive(Clone, Debug)]
pub struct ScheduleTables {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alpha_bars: Vec<f64>,
    /// beta_t (1 - abar_{t-1}) / (1 - abar_t); 0 at t = 0.
    pub posterior_variance: Vec<f64>,
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if self.kind != "linear" {
            return Err(Error::invalid("schedule.kind", format!("'{}' (only 'linear' is supported)", self.kind)));
        }
        if self.timesteps < 2 {
            return Err(Error::invalid("schedule.timesteps", format!("{} (must be >= 2)", self.timesteps)));
        }
        if !(self.beta_start > 0.0 && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return Err(Error::invalid(
                "schedule.beta",
                format!("need 0 < beta_start < beta_end < 1, got {} .. {}", self.beta_start, self.beta_end),
            ));
        }
        Ok(())
    }

    pub fn tables(&self) -> ScheduleTables {
        let t = self.timesteps;
        let betas: Vec<f64> =
            (0..t).map(|i| self.beta_start + (self.beta_end - self.beta_start) * i as f64 / (t - 1) as f64).collect();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bars = Vec::with_capacity(t);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bars.push(acc);
        }
        let posterior_variance = (0..t)
            .map(|i| if i == 0 { 0.0 } else { betas[i] * (1.0 - alpha_bars[i - 1]) / (1.0 - alpha_bars[i]) })
            .collect();
        ScheduleTables { betas, alphas, alpha_bars, posterior_variance }
    }
}

/// Runs the denoiser network: x_t [B, d] and per-row timesteps -> predicted noise [B, d].
pub trait DenoiserBackend {
    fn latent_dim(&self) -> usize;
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64]) -> Result<Array2<f32>>;
}

/// Runs the decoder: standardized latents [B, d] -> parameters [B, D] in the host's units.
pub trait DecoderBackend {
    fn param_count(&self) -> usize;
    fn decode(&self, z: ArrayView2<'_, f32>) -> Result<Array2<f32>>;
}

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral DDPM over all T steps (posterior variance, no noise at t = 0).
    Ddpm,
    /// Deterministic DDIM (eta = 0) over `steps` evenly spaced timesteps.
    Ddim { steps: usize },
}

impl SamplerKind {
    pub fn parse(name: &str, steps: usize) -> Result<Self> {
        match name {
            "ddpm" => Ok(SamplerKind::Ddpm),
            "ddim" => {
                if steps == 0 {
                    return Err(Error::invalid("steps", "DDIM needs at least 1 step"));
                }
                Ok(SamplerKind::Ddim { steps })
            }
            _ => Err(Error::invalid("sampler", format!("'{name}' (expected 'ddpm' or 'ddim')"))),
        }
    }
    pub fn label(&self) -> String {
        match self {
            SamplerKind::Ddpm => "ddpm".into(),
            SamplerKind::Ddim { steps } => format!("ddim-{steps}"),
        }
    }
}

/// The DDIM timestep sequence, ascending: 0, c, 2c, ... with c = T / S (at least 1).
pub fn ddim_timesteps(timesteps: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, timesteps);
    (0..steps).map(|i| i * timesteps / steps).collect()
}

fn gaussian(rng: &mut ChaCha8Rng, n: usize, d: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((n, d), || StandardNormal.sample(rng))
}

/// Generate `n` standardized latents with the reverse process. `on_step(done, total)` returns
/// false to cancel.
pub fn sample_latents(
    denoiser: &dyn DenoiserBackend,
    schedule: &Schedule,
    kind: SamplerKind,
    n: usize,
    seed: u64,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Array2<f32>> {
    schedule.validate()?;
    if n == 0 {
        return Err(Error::invalid("n", "number of samples must be at least 1"));
    }
    let tab = schedule.tables();
    let d = denoiser.latent_dim();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = gaussian(&mut rng, n, d);
    match kind {
        SamplerKind::Ddpm => {
            let total = schedule.timesteps;
            for (done, t) in (0..total).rev().enumerate() {
                let eps = denoiser.predict_noise(x.view(), &vec![t as i64; n])?;
                check_shape(&eps, n, d)?;
                let coef = (tab.betas[t] / (1.0 - tab.alpha_bars[t]).sqrt()) as f32;
                let inv_sqrt_alpha = (1.0 / tab.alphas[t].sqrt()) as f32;
                x.zip_mut_with(&eps, |xv, &e| *xv = inv_sqrt_alpha * (*xv - coef * e));
                if t > 0 {
                    let sigma = tab.posterior_variance[t].sqrt() as f32;
                    let z = gaussian(&mut rng, n, d);
                    x.zip_mut_with(&z, |xv, &zv| *xv += sigma * zv);
                }
                if !on_step(done + 1, total) {
                    return Err(Error::Cancelled);
                }
            }
        }
        SamplerKind::Ddim { steps } => {
            if steps == 0 {
                return Err(Error::invalid("steps", "DDIM needs at least 1 step"));
            }
            let seq = ddim_timesteps(schedule.timesteps, steps);
            let total = seq.len();
            for (done, i) in (0..seq.len()).rev().enumerate() {
                let t = seq[i];
                let ab = tab.alpha_bars[t];
                let ab_prev = if i == 0 { 1.0 } else { tab.alpha_bars[seq[i - 1]] };
                let eps = denoiser.predict_noise(x.view(), &vec![t as i64; n])?;
                check_shape(&eps, n, d)?;
                let (sa, s1a) = (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32);
                let (sp, s1p) = (ab_prev.sqrt() as f32, (1.0 - ab_prev).sqrt() as f32);
                x.zip_mut_with(&eps, |xv, &e| {
                    let x0 = (*xv - s1a * e) / sa;
                    *xv = sp * x0 + s1p * e;
                });
                if !on_step(done + 1, total) {
                    return Err(Error::Cancelled);
                }
            }
        }
    }
    Ok(x)
}

fn check_shape(eps: &Array2<f32>, n: usize, d: usize) -> Result<()> {
    if eps.dim() != (n, d) {
        return Err(Error::Runtime(format!("denoiser returned shape {:?}, expected [{n}, {d}]", eps.dim())));
    }
    Ok(())
}

/// Sample `n` parameter vectors in host units ([n, D]): latents, then the decoder.
pub fn sample_params(
    denoiser: &dyn DenoiserBackend,
    decoder: &dyn DecoderBackend,
    schedule: &Schedule,
    kind: SamplerKind,
    n: usize,
    seed: u64,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Array2<f32>> {
    let z = sample_latents(denoiser, schedule, kind, n, seed, on_step)?;
    let params = decoder.decode(z.view())?;
    if params.dim() != (n, decoder.param_count()) {
        return Err(Error::Runtime(format!(
            "decoder returned shape {:?}, expected [{n}, {}]",
            params.dim(),
            decoder.param_count()
        )));
    }
    Ok(params)
}

/// How many generated standardized latents fall outside the training range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipCount {
    /// Latents (rows) with at least one dimension outside its bound.
    pub rows: usize,
    /// Values outside their bound, over all rows and dimensions.
    pub values: usize,
}

/// Count, in a batch of standardized latents `[n, d]`, the values and rows outside the
/// per-dimension bounds `clip` (`[d]`, the manifest's `latent.clip`: 1.5 x the largest training
/// magnitude). The decoder clips such values to the bound, so a generated model whose latent was
/// clipped comes from outside the region the autoencoder was trained on. A non-finite value
/// counts as outside.
pub fn count_outside_clip(latents: ArrayView2<'_, f32>, clip: &[f32]) -> Result<ClipCount> {
    if latents.ncols() != clip.len() {
        return Err(Error::invalid("latents", format!("{} dimensions, but {} clip bounds", latents.ncols(), clip.len())));
    }
    let mut count = ClipCount::default();
    for row in latents.rows() {
        let outside = row.iter().zip(clip).filter(|(v, c)| !(v.abs() <= **c)).count();
        count.values += outside;
        count.rows += usize::from(outside > 0);
    }
    Ok(count)
}
