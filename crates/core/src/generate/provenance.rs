//! Where a generated model comes from, recorded in the files it is written to: the bundle (the
//! sha256 of its pdiff.json), the seed, the model's index, the sampler and its steps, and the
//! condition. With the same bundle, these reproduce the model bit for bit.
use crate::diffusion::{Conditioning, SamplerKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// The provenance of the models of one request ([`super::ModelSource::sample_to_dir_with`]).
#[derive(Clone, Copy, Debug)]
pub struct Provenance<'a> {
    /// None where the generator was not loaded from a bundle (trained in this process).
    pub bundle_sha256: Option<&'a str>,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// C values for every model, or n x C (model i's row is its condition).
    pub condition: Option<Conditioning<'a>>,
}

/// The keys of a safetensors file's `__metadata__` (all strings, as the format wants).
pub const KEY_BUNDLE: &str = "pdiff.bundle_sha256";
pub const KEY_SEED: &str = "pdiff.seed";
pub const KEY_MODEL_INDEX: &str = "pdiff.model_index";
pub const KEY_SAMPLER: &str = "pdiff.sampler";
pub const KEY_STEPS: &str = "pdiff.steps";
pub const KEY_CONDITION: &str = "pdiff.condition";
pub const KEY_GUIDANCE: &str = "pdiff.guidance";

impl Provenance<'_> {
    /// The condition of model `index` (the request's first model is `first`; `width` is the
    /// generator's C: a condition of C values is every model's, one of n x C gives each its row).
    fn condition_of(&self, index: usize, first: usize, width: Option<usize>) -> Option<(&[f32], f32)> {
        let cond = self.condition?;
        let c = width.unwrap_or(cond.values.len()).max(1);
        let i = index.checked_sub(first)?;
        let values = if c == cond.values.len() { cond.values } else { cond.values.get(i * c..(i + 1) * c)? };
        Some((values, cond.guidance))
    }

    /// Model `index`'s provenance as string pairs (a safetensors `__metadata__`). `first` is
    /// the request's first model, `width` the generator's condition width C.
    pub fn metadata(&self, index: usize, first: usize, width: Option<usize>) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(sha) = self.bundle_sha256 {
            m.insert(KEY_BUNDLE.into(), sha.to_string());
        }
        m.insert(KEY_SEED.into(), self.seed.to_string());
        m.insert(KEY_MODEL_INDEX.into(), index.to_string());
        let (name, steps) = sampler_fields(self.sampler);
        m.insert(KEY_SAMPLER.into(), name.into());
        if let Some(steps) = steps {
            m.insert(KEY_STEPS.into(), steps.to_string());
        }
        if let Some((values, guidance)) = self.condition_of(index, first, width) {
            m.insert(KEY_CONDITION.into(), join(values));
            m.insert(KEY_GUIDANCE.into(), guidance.to_string());
        }
        m
    }

    /// The request's provenance as one JSON document (`provenance.json` beside adapters, whose
    /// format has no room for text): the fields shared by all models, then each file's model
    /// index and condition.
    pub fn document(&self, files: &[(String, usize)], first: usize, width: Option<usize>) -> serde_json::Value {
        let (name, steps) = sampler_fields(self.sampler);
        let models: BTreeMap<&str, serde_json::Value> = files
            .iter()
            .map(|(file, index)| {
                let mut v = serde_json::json!({ "model_index": index });
                if let Some((values, guidance)) = self.condition_of(*index, first, width) {
                    v["condition"] = serde_json::json!(values);
                    v["guidance"] = serde_json::json!(guidance);
                }
                (file.as_str(), v)
            })
            .collect();
        serde_json::to_value(Document { pdiff_provenance: 1, bundle_sha256: self.bundle_sha256, seed: self.seed, sampler: name, steps, models })
            .expect("serializable")
    }
}

#[derive(Serialize)]
struct Document<'a> {
    pdiff_provenance: u32,
    bundle_sha256: Option<&'a str>,
    seed: u64,
    sampler: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<usize>,
    models: BTreeMap<&'a str, serde_json::Value>,
}

/// "ddim" and its steps, or "ddpm" (which runs every step of the bundle's schedule).
fn sampler_fields(kind: SamplerKind) -> (&'static str, Option<usize>) {
    match kind {
        SamplerKind::Ddpm => ("ddpm", None),
        SamplerKind::Ddim { steps } => ("ddim", Some(steps)),
    }
}

fn join(values: &[f32]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}
