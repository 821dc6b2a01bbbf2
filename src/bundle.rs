//! Generator bundle: a directory with `pdiff.json` (the manifest, a documented public format:
//! docs/bundle-format.md), `decoder.onnx`, `denoiser.onnx` and the tch weights. Written to a
//! temporary directory and renamed; loading verifies the format version and every file's
//! sha256 and names what is wrong.
use crate::diffusion::Schedule;
use crate::error::{Error, Result};
use crate::model::{AutoencoderConfig, DenoiserConfig, Preset};
use crate::params::{Layout, TensorSpec, STD_FLOOR};
use crate::train::{Generator, TrainConfig, TrainHistory};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "pdiff.json";
pub const DECODER_ONNX: &str = "decoder.onnx";
pub const DENOISER_ONNX: &str = "denoiser.onnx";
pub const AE_WEIGHTS: &str = "autoencoder.safetensors";
pub const DENOISER_WEIGHTS: &str = "denoiser.safetensors";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Normalization {
    /// "per_tensor_standardize": normalized = (x - mean) / std, one scalar pair per tensor.
    pub kind: String,
    pub std_floor: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatentStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Bound on |standardized latent| per dimension, applied (inside decoder.onnx) before decoding.
    pub clip: Vec<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub library_version: String,
    /// D: scalars in one generated parameter vector.
    pub param_count: usize,
    /// D padded to the autoencoder's stride multiple (internal to the graphs).
    pub padded_len: usize,
    /// d: latent size (input of decoder.onnx and denoiser.onnx).
    pub latent_dim: usize,
    pub layout: Vec<TensorSpec>,
    pub normalization: Normalization,
    pub latent: LatentStats,
    pub schedule: Schedule,
    /// What the denoiser predicts: "epsilon".
    pub prediction: String,
    pub preset: Preset,
    pub autoencoder: AutoencoderConfig,
    pub denoiser: DenoiserConfig,
    pub training: TrainConfig,
    pub history: TrainHistory,
    pub sources: Vec<String>,
    /// Role -> file name: decoder, denoiser, autoencoder_weights, denoiser_weights.
    pub files: BTreeMap<String, String>,
    /// File name -> lowercase hex sha256.
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    pub fn layout(&self) -> Layout {
        Layout { tensors: self.layout.clone() }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Export a trained generator as a bundle directory (atomic).
pub fn save(g: &Generator, dir: &Path) -> Result<Manifest> {
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        library_version: env!("CARGO_PKG_VERSION").into(),
        param_count: g.layout.param_count(),
        padded_len: g.padded_len,
        latent_dim: g.latent_dim(),
        layout: g.layout.tensors.clone(),
        normalization: Normalization { kind: "per_tensor_standardize".into(), std_floor: STD_FLOOR },
        latent: LatentStats { mean: g.latent_mean.clone(), std: g.latent_std.clone(), clip: g.latent_clip.clone() },
        schedule: g.config.schedule.clone(),
        prediction: "epsilon".into(),
        preset: g.config.preset,
        autoencoder: g.ae_config.clone(),
        denoiser: g.denoiser_config.clone(),
        training: g.config.clone(),
        history: g.history.clone(),
        sources: g.sources.clone(),
        files: BTreeMap::new(),
        sha256: BTreeMap::new(),
    };
    crate::fsutil::write_dir_atomic(dir, |tmp| {
        let mut put = |role: &str, name: &str, bytes: Vec<u8>| -> Result<()> {
            let path = tmp.join(name);
            std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
            manifest.files.insert(role.into(), name.into());
            manifest.sha256.insert(name.into(), sha256_hex(&bytes));
            Ok(())
        };
        put("autoencoder_weights", AE_WEIGHTS, vs_bytes(&g.ae_vs, tmp)?)?;
        put("denoiser_weights", DENOISER_WEIGHTS, vs_bytes(&g.den_vs, tmp)?)?;
        put("decoder", DECODER_ONNX, crate::onnx::export_decoder(g)?)?;
        put("denoiser", DENOISER_ONNX, crate::onnx::export_denoiser(g)?)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("serializable");
        let path = tmp.join(MANIFEST);
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
    })?;
    Ok(manifest)
}

/// Serialize a VarStore as safetensors bytes (tch writes files only: go through a temp file).
fn vs_bytes(vs: &tch::nn::VarStore, tmp_dir: &Path) -> Result<Vec<u8>> {
    let path = tmp_dir.join(".vs.safetensors");
    vs.save(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let _ = std::fs::remove_file(&path);
    Ok(bytes)
}

/// Read and verify a bundle's manifest and the hashes of the files it lists.
pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    if !dir.is_dir() {
        return Err(Error::bundle(dir, "not a directory"));
    }
    let text = std::fs::read(&path).map_err(|e| Error::bundle(dir, format!("cannot read {MANIFEST}: {e}")))?;
    let m = parse_manifest(dir, &text)?;
    for (role, name) in &m.files {
        let expected = m.sha256.get(name).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: no sha256 for {name}")))?;
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(Error::bundle(dir, format!("{MANIFEST}: file name {name:?} of {role} must be a plain name inside the bundle")));
        }
        let p = dir.join(name);
        let bytes = std::fs::read(&p).map_err(|e| Error::bundle(dir, format!("{role} file {name}: {e}")))?;
        let got = sha256_hex(&bytes);
        if &got != expected {
            return Err(Error::bundle(dir, format!("{name}: sha256 mismatch (manifest {expected}, file {got}): the file was changed or corrupted")));
        }
    }
    Ok(m)
}

/// Parse and validate manifest JSON (no file access): version, fields, internal consistency.
/// `dir` only names the bundle in errors.
pub fn parse_manifest(dir: &Path, text: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Error::bundle(dir, format!("{MANIFEST} is not valid JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(Error::bundle(
                dir,
                format!("{MANIFEST}: format_version {v} is not supported (this library reads version {FORMAT_VERSION})"),
            ))
        }
        None => return Err(Error::bundle(dir, format!("{MANIFEST}: field format_version is missing or not an integer"))),
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| Error::bundle(dir, format!("{MANIFEST}: {e}")))?;
    // Validate the layout as a host would use it: offsets contiguous, shapes non-empty, no
    // overflow (a crafted manifest must not make a host index out of bounds).
    let mut next = 0usize;
    for t in &m.layout {
        let numel = t.shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).filter(|&n| n > 0);
        let numel = numel.ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has an invalid shape {:?}", t.name, t.shape)))?;
        if t.offset != next {
            return Err(Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has offset {}, expected {next}", t.name, t.offset)));
        }
        if !(t.std.is_finite() && t.std > 0.0 && t.mean.is_finite()) {
            return Err(Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has invalid normalization (mean {}, std {})", t.name, t.mean, t.std)));
        }
        next = next.checked_add(numel).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: layout size overflows")))?;
    }
    let layout = m.layout();
    if m.layout.is_empty() {
        return Err(Error::bundle(dir, format!("{MANIFEST}: layout is empty")));
    }
    for role in ["decoder", "denoiser"] {
        if !m.files.contains_key(role) {
            return Err(Error::bundle(dir, format!("{MANIFEST}: files.{role} is missing")));
        }
    }
    if m.schedule.validate().is_err() || m.prediction != "epsilon" {
        return Err(Error::bundle(dir, format!("{MANIFEST}: unsupported schedule or prediction")));
    }
    if layout.param_count() != m.param_count {
        return Err(Error::bundle(dir, format!("{MANIFEST}: layout covers {} values but param_count is {}", layout.param_count(), m.param_count)));
    }
    if m.latent.mean.len() != m.latent_dim || m.latent.std.len() != m.latent_dim || m.latent.clip.len() != m.latent_dim {
        return Err(Error::bundle(dir, format!("{MANIFEST}: latent stats do not have latent_dim = {} entries", m.latent_dim)));
    }
    Ok(m)
}

/// Load a bundle's tch generator (for further training or tch sampling).
pub fn load_generator(dir: &Path, device: crate::train::DeviceChoice) -> Result<Generator> {
    let m = load_manifest(dir)?;
    let mut config = m.training.clone();
    config.autoencoder = Some(m.autoencoder.clone());
    config.denoiser = Some(m.denoiser.clone());
    let mut g = Generator::build(m.layout(), config, device.resolve()?)?;
    let load = |vs: &mut tch::nn::VarStore, name: &str| -> Result<()> {
        vs.load(dir.join(name)).map_err(|e| Error::bundle(dir, format!("{name}: {e}")))
    };
    load(&mut g.ae_vs, AE_WEIGHTS)?;
    load(&mut g.den_vs, DENOISER_WEIGHTS)?;
    g.latent_mean = m.latent.mean;
    g.latent_std = m.latent.std;
    g.latent_clip = m.latent.clip;
    g.history = m.history;
    g.sources = m.sources;
    g.padded_len = m.padded_len;
    Ok(g)
}
