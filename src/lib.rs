//! libpdiff: neural network parameter diffusion (p-diff, Wang et al. 2024) as an embeddable
//! native library.
//!
//! Pipeline, one module per stage (a module never imports one above it):
//! - [`params`]: checkpoints -> ParamSet (K x D matrix + Layout), normalization
//! - [`model`]: autoencoder and denoiser networks (tch), presets
//! - [`diffusion`]: schedule, DDPM/DDIM sampler loop over a backend trait
//! - [`train`]: training of a [`train::Generator`] (tch, CUDA when available)
//! - [`onnx`]: ONNX export of decoder and denoiser; [`bundle`]: the exported directory
//! - [`runtime`]: serving a bundle with ONNX Runtime ([`runtime::Sampler`])
//! - [`zoo`], [`eval`], [`demo`]: reference tasks, evaluation, the end-to-end job
//! - `ffi`: the C ABI (include/pdiff.h)
pub mod error;
pub mod fsutil;
pub mod params;
pub mod model;
pub mod diffusion;
pub mod train;
pub mod onnx;
pub mod bundle;
pub mod zoo;
pub mod eval;
pub mod runtime;
pub mod report;
pub mod demo;
pub mod bench;
pub mod ablation;
pub mod ffi;

pub use error::{Error, Result};
