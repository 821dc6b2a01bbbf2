//! libpdiff: neural network parameter diffusion (p-diff, Wang et al. 2024) as an embeddable
//! native library. The design is written down in docs/design.md.
//!
//! Pipeline, one module per stage (a module never imports one above it):
//! - [`params`]: checkpoints -> ParamSet (K x D matrix + Layout), normalization
//! - [`model`]: autoencoder and denoiser configurations (the tch networks: feature `train`)
//! - [`diffusion`]: schedule, the one DDPM/DDIM sampler loop over a backend trait
//! - [`train`]: training configuration; the tch training of a generator (feature `train`)
//! - `onnx`: ONNX export of decoder and denoiser (feature `train`)
//! - [`external_data`]: which tensors of an ONNX graph keep their bytes in an external file
//! - [`bundle`]: the exported directory (manifest, hashes, atomic write)
//! - [`runtime`]: serving a bundle with ONNX Runtime ([`runtime::Sampler`]), no libtorch
//! - `ffi`: the C ABI (include/pdiff.h)
//!
//! Cargo features: `train` (default) brings libtorch (tch): training, ONNX export and the
//! generator part of the C ABI. Without it the library only serves bundles.
//! The command line, the reference tasks and the evaluation are in the `pdiff-tools` crate
//! (tools/).
pub mod error;
pub mod fsutil;
pub mod params;
pub mod model;
pub mod diffusion;
pub mod train;
#[cfg(feature = "train")]
pub mod onnx;
pub mod external_data;
pub mod bundle;
pub mod runtime;
pub mod ffi;

pub use error::{Error, Result};
