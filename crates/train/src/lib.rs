//! pdiff-train: training a generator on libtorch (tch; CUDA when available) and exporting it as
//! a bundle that pdiff-core serves. The design is written down in docs/design.md.
//!
//! - [`nets`]: the generator's networks, one per file
//! - [`Generator`] ([`generator`]): a generator's networks and latent statistics; fitting
//!   ([`fit`]), the tch backends of the sampler loop ([`backends`]), bundles ([`export`])
//! - [`onnx`]: the ONNX graphs of a trained generator (decoder, denoiser, the whole DDIM loop)
//! - [`torch`]: the libtorch boundary (errors, RNG, devices, memory)
pub mod backends;
pub mod export;
pub mod fit;
pub mod generator;
pub mod nets;
pub mod onnx;
pub mod torch;

pub use generator::{Generator, LATENT_CLIP_MARGIN, LATENT_STD_FLOOR};
pub use torch::{available_cores, check_memory, device_name, resolve_device, torch_boundary, training_threads, TorchResult};
