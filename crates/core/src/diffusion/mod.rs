//! Latent DDPM: the linear noise schedule and the two samplers (DDPM ancestral, DDIM eta = 0),
//! written once over ndarray and generic over the backend that runs the networks (tch while
//! training, ONNX Runtime when serving). Noise comes from a seeded ChaCha RNG, one stream per
//! generated row, so a seed gives the same parameters on every backend, and row i is the same
//! whatever the batch or chunk it is sampled in.
use crate::error::{Error, Result};
use crate::limits::MAX_TIMESTEPS;
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
        if !(2..=MAX_TIMESTEPS).contains(&self.timesteps) {
            return Err(Error::invalid("schedule.timesteps", format!("{} (must be 2 ..= {MAX_TIMESTEPS})", self.timesteps)));
        }
        if !(self.beta_start > 0.0 && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return Err(Error::invalid("schedule.beta", format!("need 0 < beta_start < beta_end < 1, got {} .. {}", self.beta_start, self.beta_end)));
        }
        Ok(())
    }

    pub fn tables(&self) -> ScheduleTables {
        let t = self.timesteps;
        let betas: Vec<f64> = (0..t).map(|i| self.beta_start + (self.beta_end - self.beta_start) * i as f64 / (t - 1) as f64).collect();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bars = Vec::with_capacity(t);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bars.push(acc);
        }
        let posterior_variance = (0..t).map(|i| if i == 0 { 0.0 } else { betas[i] * (1.0 - alpha_bars[i - 1]) / (1.0 - alpha_bars[i]) }).collect();
        ScheduleTables { betas, alphas, alpha_bars, posterior_variance }
    }
}

/// Runs the denoiser network: x_t [B, d] and per-row timesteps -> predicted noise [B, d].
pub trait DenoiserBackend {
    fn latent_dim(&self) -> usize;
    /// C, for a denoiser conditioned on a C-dimensional vector.
    fn condition_dim(&self) -> Option<usize> {
        None
    }
    /// `cond` is given exactly when [`DenoiserBackend::condition_dim`] is.
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64], cond: Option<CondInput<'_>>) -> Result<Array2<f32>>;
}

/// A batch's conditions for a conditional denoiser: values [B, C] and a mask [B] (1: the row
/// is conditioned on its values, 0: the learned "no condition" embedding is used instead).
#[derive(Clone, Copy, Debug)]
pub struct CondInput<'a> {
    pub values: ArrayView2<'a, f32>,
    pub mask: &'a [f32],
}

/// Check what a caller gives a denoiser backend against its condition dimension: conditions
/// exactly when it is conditional, [B, C] values and B mask entries.
pub fn check_condition_input(condition_dim: Option<usize>, rows: usize, cond: Option<&CondInput<'_>>) -> Result<()> {
    match (condition_dim, cond) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::invalid("condition", "this denoiser is unconditional")),
        (Some(c), None) => Err(Error::invalid("condition", format!("this denoiser is conditioned on {c} values: give a condition and its mask"))),
        (Some(c), Some(ci)) => {
            if ci.values.dim() != (rows, c) || ci.mask.len() != rows {
                return Err(Error::invalid(
                    "condition",
                    format!("values {:?} and mask [{}]; expected [{rows}, {c}] and [{rows}]", ci.values.dim(), ci.mask.len()),
                ));
            }
            Ok(())
        }
    }
}

/// The condition of a sampling call on a conditional generator.
#[derive(Clone, Copy, Debug)]
pub struct Conditioning<'a> {
    /// C floats shared by every generated row, or one vector per row (n x C, row-major, for the
    /// call's n rows): exactly one of the two lengths.
    pub values: &'a [f32],
    /// Classifier-free guidance scale g: eps = eps_none + g (eps_cond - eps_none). 1 is the plain
    /// conditional model (one pass), 0 the unconditional one, above 1 pushes further from it.
    pub guidance: f32,
}

/// What a sampling call feeds the denoiser, decided once per call.
pub enum RowCondition {
    /// An unconditional denoiser.
    Unconditional,
    /// A conditional denoiser asked for no condition: the "no condition" embedding ([n, C] zeros,
    /// mask 0).
    Null(Array2<f32>),
    /// Conditioned on `values` [n, C] with guidance scale `guidance`.
    Guided { values: Array2<f32>, guidance: f32 },
}

impl RowCondition {
    /// Check `cond` against the denoiser and lay it out for `n` rows.
    pub fn new(condition_dim: Option<usize>, cond: Option<&Conditioning<'_>>, n: usize) -> Result<Self> {
        match (condition_dim, cond) {
            (None, None) => Ok(RowCondition::Unconditional),
            (None, Some(_)) => Err(Error::invalid("condition", "this generator is unconditional: sample it without a condition")),
            (Some(c), None) => Ok(RowCondition::Null(Array2::zeros((n, c)))),
            (Some(c), Some(cond)) => {
                if !cond.guidance.is_finite() {
                    return Err(Error::invalid("guidance", format!("{} (must be a finite number)", cond.guidance)));
                }
                if let Some(v) = cond.values.iter().find(|v| !v.is_finite()) {
                    return Err(Error::invalid("condition", format!("value {v} is not finite")));
                }
                check_condition_len(c, cond.values.len(), n)?;
                let values = if cond.values.len() == c {
                    Array2::from_shape_fn((n, c), |(_, j)| cond.values[j])
                } else {
                    Array2::from_shape_vec((n, c), cond.values.to_vec()).expect("n x c values")
                };
                Ok(RowCondition::Guided { values, guidance: cond.guidance })
            }
        }
    }

    /// The denoiser's noise prediction for x_t under this condition: one pass, or two (the
    /// conditioned rows, then the same rows without condition, in one batch) combined by
    /// classifier-free guidance.
    pub fn predict(&self, denoiser: &dyn DenoiserBackend, x: ArrayView2<'_, f32>, t: i64) -> Result<Array2<f32>> {
        let n = x.nrows();
        match self {
            RowCondition::Unconditional => denoiser.predict_noise(x, &vec![t; n], None),
            RowCondition::Null(zeros) => denoiser.predict_noise(x, &vec![t; n], Some(CondInput { values: zeros.view(), mask: &vec![0.0; n] })),
            RowCondition::Guided { values, guidance } if *guidance == 1.0 => {
                denoiser.predict_noise(x, &vec![t; n], Some(CondInput { values: values.view(), mask: &vec![1.0; n] }))
            }
            RowCondition::Guided { values, guidance } => {
                let x2 = ndarray::concatenate(ndarray::Axis(0), &[x, x]).expect("same widths");
                let v2 = ndarray::concatenate(ndarray::Axis(0), &[values.view(), values.view()]).expect("same widths");
                let mask: Vec<f32> = (0..2 * n).map(|i| if i < n { 1.0 } else { 0.0 }).collect();
                let eps2 = denoiser.predict_noise(x2.view(), &vec![t; 2 * n], Some(CondInput { values: v2.view(), mask: &mask }))?;
                check_shape(&eps2, 2 * n, x.ncols())?;
                let (cond, none) = eps2.view().split_at(ndarray::Axis(0), n);
                let g = *guidance;
                Ok(ndarray::Zip::from(&cond).and(&none).map_collect(|&c, &u| u + g * (c - u)))
            }
        }
    }
}

/// A condition of `len` values for `n` rows of a C-dimensional condition: exactly C (one for
/// every row) or n x C (one per row); anything else is refused, never cut or repeated.
pub fn check_condition_len(c: usize, len: usize, n: usize) -> Result<()> {
    if len == c || Some(len) == n.checked_mul(c) {
        return Ok(());
    }
    Err(Error::invalid(
        "condition",
        format!(
            "{len} value{}: expected C = {c} (one condition for every model) or n x C = {n} x {c} = {} (one per model)",
            if len == 1 { "" } else { "s" },
            n.saturating_mul(c)
        ),
    ))
}

/// Runs the decoder: standardized latents [B, d] -> parameters [B, D] in the host's units.
pub trait DecoderBackend {
    fn param_count(&self) -> usize;
    /// The bound on |standardized latent| per dimension that the decoder clips to (the
    /// manifest's `latent.clip`), for [`count_outside_clip`].
    fn latent_clip(&self) -> &[f32];
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

/// The noise stream of row `row` for `seed`.
fn row_rng(seed: u64, row: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(row as u64);
    rng
}

/// One [rows, d] draw: the next d standard normals of each row's stream.
fn gaussian_rows(rngs: &mut [ChaCha8Rng], d: usize) -> Array2<f32> {
    let mut a = Array2::zeros((rngs.len(), d));
    for (mut row, rng) in a.rows_mut().into_iter().zip(rngs.iter_mut()) {
        row.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
    }
    a
}

/// Settings a sampler can run with on `schedule`: DDIM needs 1 ..= T steps.
pub fn check_kind(schedule: &Schedule, kind: SamplerKind) -> Result<()> {
    if let SamplerKind::Ddim { steps } = kind {
        if steps == 0 {
            return Err(Error::invalid("steps", "DDIM needs at least 1 step"));
        }
        if steps > schedule.timesteps {
            return Err(Error::invalid("steps", format!("DDIM with {steps} steps: the schedule has only T = {} timesteps", schedule.timesteps)));
        }
    }
    Ok(())
}

/// The initial noise x_T of rows `rows` of [`sample_latents`] for `seed`: [rows, d]
/// standard normal, the first d draws of each row's stream. A backend that runs the whole loop
/// itself (sampler.onnx) starts from it and so gives the step-by-step loop's parameters.
pub fn initial_noise(seed: u64, rows: std::ops::Range<usize>, d: usize) -> Array2<f32> {
    gaussian_rows(&mut rows.map(|r| row_rng(seed, r)).collect::<Vec<_>>(), d)
}

/// Rows `rows` of the standardized latents the reverse process gives for `seed`: each row's
/// noise comes from its own stream (ChaCha8 seeded with `seed`, stream = the row's index), so a
/// row is the same whether it is sampled alone, in a chunk, or among any number of others. This
/// is what lets a caller sample N models in bounded chunks. `cond`: the condition of a
/// conditional generator (None: the "no condition" embedding; unconditional generators take
/// none). `on_step(done, total)` returns false to cancel.
pub fn sample_latents(
    denoiser: &dyn DenoiserBackend,
    schedule: &Schedule,
    kind: SamplerKind,
    cond: Option<&Conditioning<'_>>,
    seed: u64,
    rows: std::ops::Range<usize>,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Array2<f32>> {
    schedule.validate()?;
    if rows.is_empty() {
        return Err(Error::invalid("n", "number of samples must be at least 1"));
    }
    check_kind(schedule, kind)?;
    let condition = RowCondition::new(denoiser.condition_dim(), cond, rows.len())?;
    let tab = schedule.tables();
    let d = denoiser.latent_dim();
    let n = rows.len();
    let mut rngs: Vec<ChaCha8Rng> = rows.clone().map(|r| row_rng(seed, r)).collect();
    let mut x = gaussian_rows(&mut rngs, d);
    match kind {
        SamplerKind::Ddpm => {
            let total = schedule.timesteps;
            for (done, t) in (0..total).rev().enumerate() {
                let eps = condition.predict(denoiser, x.view(), t as i64)?;
                check_shape(&eps, n, d)?;
                let coef = (tab.betas[t] / (1.0 - tab.alpha_bars[t]).sqrt()) as f32;
                let inv_sqrt_alpha = (1.0 / tab.alphas[t].sqrt()) as f32;
                x.zip_mut_with(&eps, |xv, &e| *xv = inv_sqrt_alpha * (*xv - coef * e));
                if t > 0 {
                    let sigma = tab.posterior_variance[t].sqrt() as f32;
                    let z = gaussian_rows(&mut rngs, d);
                    x.zip_mut_with(&z, |xv, &zv| *xv += sigma * zv);
                }
                if !on_step(done + 1, total) {
                    return Err(Error::Cancelled);
                }
            }
        }
        SamplerKind::Ddim { steps } => {
            let seq = ddim_timesteps(schedule.timesteps, steps);
            let total = seq.len();
            for (done, i) in (0..seq.len()).rev().enumerate() {
                let t = seq[i];
                let ab = tab.alpha_bars[t];
                let ab_prev = if i == 0 { 1.0 } else { tab.alpha_bars[seq[i - 1]] };
                let eps = condition.predict(denoiser, x.view(), t as i64)?;
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

/// How many generated standardized latents fall outside the training range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipCount {
    /// Latents (rows) with at least one dimension outside its bound.
    pub rows: usize,
    /// Values outside their bound, over all rows and dimensions.
    pub values: usize,
}

impl std::ops::AddAssign for ClipCount {
    fn add_assign(&mut self, other: ClipCount) {
        self.rows += other.rows;
        self.values += other.values;
    }
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
        let outside = row.iter().zip(clip).filter(|(v, c)| v.is_nan() || v.abs() > **c).count();
        count.values += outside;
        count.rows += usize::from(outside > 0);
    }
    Ok(count)
}
