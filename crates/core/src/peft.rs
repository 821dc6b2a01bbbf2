//! Hugging Face PEFT adapter directories: what `PeftModel.from_pretrained` loads (and vLLM,
//! LoRAX and TGI serve). A directory holds `adapter_config.json` and `adapter_model.safetensors`,
//! whose tensors PEFT names `base_model.model.<module>.lora_A.weight` (and `lora_B`, plus the
//! full weights of any `modules_to_save`). A generator trained on such checkpoints already has
//! these names in its layout; the configuration (rank, alpha, target modules, base model) is
//! not in the weights, so the host gives the one its source adapters were saved with.
use crate::error::{Error, Result};
use crate::params::Layout;
use std::path::Path;

/// The configuration file of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix of every tensor name in a PEFT adapter's weights file.
pub const TENSOR_PREFIX: &str = "base_model.model.";

/// An `adapter_config.json` to write into every generated adapter directory, as given: a JSON
/// object with a `peft_type` (PEFT refuses a configuration without one).
#[derive(Clone, Debug, PartialEq)]
pub struct PeftConfig {
    bytes: Vec<u8>,
}

impl PeftConfig {
    /// Read and check a configuration file (e.g. the `adapter_config.json` of one of the
    /// source adapters).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_regular(path, crate::limits::MAX_PEFT_CONFIG_BYTES).map_err(|e| Error::io(path, e))?;
        Self::from_json(&bytes).map_err(|e| match e {
            Error::InvalidArgument { message, .. } => Error::invalid(format!("peft config {}", path.display()), message),
            other => other,
        })
    }

    /// Check a configuration given as JSON text.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::invalid("peft config", m);
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        crate::json::check_unique_keys(bytes).map_err(bad)?;
        let object = value.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
        match object.get("peft_type") {
            Some(serde_json::Value::String(t)) if !t.is_empty() => {}
            Some(_) => return Err(bad("\"peft_type\" must be a non-empty string (e.g. \"LORA\")".into())),
            None => return Err(bad("no \"peft_type\" (e.g. \"LORA\"): PEFT cannot load an adapter without it".into())),
        }
        Ok(PeftConfig { bytes: bytes.to_vec() })
    }

    /// The configuration's bytes, as given.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Refuse a layout whose tensors PEFT would not find: every name must start with
/// `base_model.model.` (the names PEFT saves and loads).
pub fn check_layout(layout: &Layout) -> Result<()> {
    match layout.tensors.iter().find(|t| !t.name.starts_with(TENSOR_PREFIX)) {
        Some(t) => Err(Error::invalid(
            "format peft",
            format!(
                "tensor '{}' is not named as in a PEFT adapter ('{TENSOR_PREFIX}<module>.lora_A.weight', ...): train the generator on the adapters' own adapter_model.safetensors files",
                t.name
            ),
        )),
        None => Ok(()),
    }
}
