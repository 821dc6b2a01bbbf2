//! A generator: its two networks on tch and the statistics that map latents back to
//! parameters in host units. Fitting is in [`crate::fit`], sampling through libtorch in
//! [`crate::backends`], bundles in [`crate::export`].
use crate::nets::{Autoencoder, Denoiser};
use crate::torch::{tensor_to_array, torch_boundary};
use ndarray::Array2;
use pdiff_core::error::{Error, Result};
use pdiff_core::model::{AutoencoderConfig, DenoiserConfig, TokenMap};
use pdiff_core::params::{ConditionSpec, Layout};
use pdiff_core::training::{DiffusionTarget, TrainConfig, TrainHistory};
use tch::{nn, Device, Tensor};

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
    /// The sha256 of the bundle's pdiff.json when loaded from a bundle (the provenance of the
    /// models it writes); None for a generator trained in this process.
    pub bundle_sha256: Option<String>,
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
        ae_config.validate()?;
        denoiser_config.validate()?;
        // The target is recorded in the bundle's training config: a loaded generator converts
        // its network's output to the noise the same way. Principal coefficients (the chunked
        // preset) train on v as conditional generators do: with epsilon, a direction the
        // denoiser gets wrong grows at every DDIM step (measured on mnist-mlp-wide: coefficients
        // up to 1e30 at 64 components).
        config.target.get_or_insert(DiffusionTarget::default_for(condition.is_some() || ae_config.chunked.is_some()));
        if let Some(spec) = ae_config.chunked.as_mut() {
            // The latent follows from the layout: the principal coefficients of the token
            // latents, of which K centered checkpoints span at most min(K - 1, tokens x
            // token_dim) directions.
            let token_latent = TokenMap::new(&layout, spec.chunk as usize).tokens() as i64 * spec.token_dim;
            if let Some(k) = k {
                spec.components = spec.components.min(k as i64 - 1).min(token_latent).max(1);
            }
            ae_config.latent_dim = spec.components;
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
            bundle_sha256: None,
            device,
            ae_vs,
            ae,
            den_vs,
            den,
        })
    }

    pub fn latent_dim(&self) -> usize {
        self.ae_config.latent_dim as usize
    }

    /// Encode K parameter vectors (host units, row-major) to standardized latents.
    pub fn encode(&self, rows: &[f32]) -> Result<Array2<f32>> {
        let d = self.layout.param_count();
        if !rows.len().is_multiple_of(d) || rows.is_empty() {
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

    /// What the denoiser network predicts (its output is converted to the noise for sampling).
    pub fn target(&self) -> DiffusionTarget {
        self.config.target.unwrap_or(DiffusionTarget::default_for(self.condition.is_some()))
    }
}
