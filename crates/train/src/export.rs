//! A generator as a bundle (docs/bundle-format.md): its manifest, the export (the ONNX graphs
//! and the tch weights, written as one output), and loading a bundle's tch generator back.
use crate::generator::Generator;
use crate::torch::{libtorch_rng, resolve_device, tensor_to_vec, torch_boundary};
use pdiff_core::bundle::{self, Bundle, LatentStats, Manifest, Normalization, MANIFEST};
use pdiff_core::error::{Error, Result};
use pdiff_core::output::IfForeign;
use pdiff_core::params::STD_FLOOR;
use pdiff_core::training::DeviceChoice;
use std::path::Path;
use tch::{nn, Tensor};

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
        type Export = fn(&Generator) -> Result<crate::onnx::proto::ModelProto>;
        let graphs: [(&str, &str, Export); 3] = [
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
        check_networks_fit_weights(&b)?;
        let mut config = m.training.clone();
        config.autoencoder = Some(m.autoencoder.clone());
        config.denoiser = Some(m.denoiser.clone());
        let mut g = Generator::build(m.layout(), config, m.condition.clone(), resolve_device(device)?, None)?;
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
        g.bundle_sha256 = Some(b.manifest_sha256.clone());
        Ok(g)
    }
}

/// The networks the manifest describes must not hold more values than the bundle's weight files
/// do: checked before anything is built, so that a manifest whose fields would make libtorch
/// allocate without bound is refused, naming the field that sizes most of it.
fn check_networks_fit_weights(b: &Bundle) -> Result<()> {
    let m = &b.manifest;
    let mut stored = 0u128;
    for role in ["autoencoder_weights", "denoiser_weights"] {
        let st = safetensors::SafeTensors::deserialize(b.file(role)?)
            .map_err(|e| Error::bundle(&b.dir, format!("{}: not a readable safetensors file ({e})", m.files[role])))?;
        stored += st.tensors().iter().map(|(_, v)| v.shape().iter().map(|&s| s as u128).product::<u128>()).sum::<u128>();
    }
    let terms = crate::nets::weight_values(&m.autoencoder, &m.denoiser, &m.layout(), m.padded_len, m.condition.as_ref().map(|c| c.dim));
    let needed: u128 = terms.iter().map(|t| t.1).sum();
    if needed > stored {
        let (field, largest) = terms.iter().max_by_key(|t| t.1).expect("terms");
        return Err(Error::bundle(
            &b.dir,
            format!("{MANIFEST}: {field}: the networks it describes hold at least {needed} values ({largest} of them sized by {field}), its weight files hold {stored}"),
        ));
    }
    Ok(())
}

/// A VarStore's variables as safetensors bytes (f32, sorted by name).
fn varstore_to_safetensors(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut values = Vec::with_capacity(vars.len());
    for (name, t) in &vars {
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let v = tensor_to_vec(t)?;
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
