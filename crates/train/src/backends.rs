//! A trained generator as the backends of pdiff-core's sampler loop: its denoiser and decoder run
//! by libtorch, converting and de-normalizing exactly as the exported graphs do, and so a
//! [`ModelSource`] like ONNX Runtime's sampler.
use crate::generator::Generator;
use crate::nets::ConditionBatch;
use crate::torch::{array_to_tensor, tensor_to_array, torch_boundary};
use ndarray::{Array2, ArrayView2};
use pdiff_core::diffusion::{check_condition_input, CondInput, DecoderBackend, DenoiserBackend};
use pdiff_core::error::{Error, Result};
use pdiff_core::generate::{ModelSource, OnStep, SampleRequest, Samples, StepLoop};
use pdiff_core::params::Layout;
use pdiff_core::training::DiffusionTarget;
use tch::Tensor;

/// The denoiser run by libtorch.
impl DenoiserBackend for Generator {
    fn latent_dim(&self) -> usize {
        Generator::latent_dim(self)
    }
    fn condition_dim(&self) -> Option<usize> {
        self.condition.as_ref().map(|c| c.dim)
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64], cond: Option<CondInput<'_>>) -> Result<Array2<f32>> {
        if x.ncols() != self.latent_dim() || t.len() != x.nrows() {
            return Err(Error::invalid("denoiser input", format!("x {:?}, t [{}]; expected [B, {}] and [B]", x.dim(), t.len(), self.latent_dim())));
        }
        check_condition_input(DenoiserBackend::condition_dim(self), x.nrows(), cond.as_ref())?;
        torch_boundary("denoiser", || {
            let device = self.device;
            let xt = array_to_tensor(x, device);
            let tt = Tensor::from_slice(t).to_device(device);
            let values = cond.map(|c| array_to_tensor(c.values, device));
            let mask = cond.map(|c| Tensor::from_slice(c.mask).to_device(device));
            let batch = values.as_ref().zip(mask.as_ref()).map(|(values, mask)| ConditionBatch { values, mask });
            let out = tch::no_grad(|| self.den.forward(&xt, &tt, batch));
            let eps = match self.target() {
                DiffusionTarget::Epsilon => out,
                // eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t, with the f32 coefficients the
                // exported graph uses.
                DiffusionTarget::V => {
                    let tab = self.config.schedule.tables();
                    let (a, b): (Vec<f32>, Vec<f32>) =
                        t.iter().map(|&ti| (tab.alpha_bars[ti as usize].sqrt() as f32, (1.0 - tab.alpha_bars[ti as usize]).sqrt() as f32)).unzip();
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
impl DecoderBackend for Generator {
    fn param_count(&self) -> usize {
        self.layout.param_count()
    }
    fn latent_clip(&self) -> &[f32] {
        &self.latent_clip
    }
    fn decode(&self, z: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let g = self;
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

/// Sampling through libtorch: the step-by-step loop over this generator's networks (the same
/// models as its bundle served by ONNX Runtime, to within float rounding).
impl ModelSource for Generator {
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn condition_dim(&self) -> Option<usize> {
        self.condition.as_ref().map(|c| c.dim)
    }
    fn bundle_sha256(&self) -> Option<&str> {
        self.bundle_sha256.as_deref()
    }
    fn sample(&self, request: &SampleRequest<'_>, on_step: OnStep<'_>) -> Result<Samples> {
        StepLoop { denoiser: self, decoder: self, schedule: &self.config.schedule, layout: &self.layout }.sample(request, on_step)
    }
}
