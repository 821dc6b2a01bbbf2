//! pdiff-core: everything libpdiff needs to serve a trained generator, and nothing of libtorch.
//! The design is written down in docs/design.md.
//!
//! Pipeline, one module per stage (a module never imports one below it in this list):
//! - [`error`]: the one error type; every variant names what is wrong
//! - [`limits`]: every bound on what the library reads, in one place
//! - [`json`]: JSON from other tools read strictly (no key twice in an object)
//! - [`files`]: atomic writes, bounded reads of regular files
//! - [`output`]: output directories and files that never destroy what the library did not write
//! - [`params`]: checkpoints -> ParamSet (K x D matrix + Layout), normalization, conditions
//! - [`model`]: autoencoder and denoiser configurations and presets (the networks are in
//!   pdiff-train)
//! - [`diffusion`]: schedule, the one DDPM/DDIM sampler loop over a backend trait
//! - [`training`]: what describes a training run (configuration, progress, history), as a
//!   bundle records it
//! - [`external_data`]: which tensors of an ONNX graph keep their bytes in an external file
//! - [`adapter`]: ONNX Runtime's adapter format (`.onnx_adapter`), written and read back
//! - [`peft`]: Hugging Face PEFT adapter directories (`adapter_config.json` + weights)
//! - [`generate`]: one sampling request, the [`generate::ModelSource`] trait, the ways out
//!   (arrays, host buffers and tensors, safetensors files)
//! - [`bundle`]: the exported directory (manifest, hashes, verified reads, atomic write)
//! - [`runtime`]: serving a bundle with ONNX Runtime ([`runtime::Sampler`])
pub mod adapter;
pub mod bundle;
pub mod diffusion;
pub mod error;
pub mod external_data;
pub mod files;
pub mod generate;
pub mod json;
pub mod limits;
pub mod model;
pub mod output;
pub mod params;
pub mod peft;
pub mod runtime;
pub mod training;

pub use error::{Error, Result};
