//! Every bound the library puts on what it reads, in one place (docs/reliability.md, "Limits").
//!
//! Files from other tools are untrusted. Each file is read through
//! [`crate::files::read_regular`] (regular files only, opened without blocking, never more than
//! its bound), and every size a file declares (a header's shapes, a manifest's dimensions, a
//! graph's external ranges) is checked against these bounds and against what the file really
//! holds before anything is allocated for it; the large allocations that remain are fallible
//! ([`crate::files::try_vec`]), so running out of memory is an error naming the file, never an
//! abort of the host process.

/// One checkpoint file (safetensors). A larger one is refused before it is read.
pub const MAX_CHECKPOINT_BYTES: u64 = 32 << 30;
/// A safetensors header (the JSON before the tensor data).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;
/// A conditions file (JSON or CSV).
pub const MAX_CONDITIONS_BYTES: u64 = 256 << 20;
/// A PEFT adapter configuration template (`adapter_config.json`).
pub const MAX_PEFT_CONFIG_BYTES: u64 = 1 << 20;
/// A bundle's manifest (`pdiff.json`).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// One ONNX graph: protobuf's own limit on one message is 2 GiB; larger weights live in
/// external data files.
pub const MAX_GRAPH_BYTES: u64 = 2 << 30;
/// An external data file of a graph (read whole into memory; ONNX Runtime copies it into each
/// session).
pub const MAX_EXTERNAL_DATA_BYTES: u64 = 64 << 30;
/// A data set file the tools read (the MNIST digits: 10,000 images as JSON or IDX).
pub const MAX_DATASET_FILE_BYTES: u64 = 1 << 30;
/// The output marker `.pdiff-output.json` (a list of file names).
pub const MAX_MARKER_BYTES: u64 = 16 << 20;

/// Parameters in one generated vector (D): a model of 2^31 floats is 8 GiB.
pub const MAX_PARAMS: usize = 1 << 31;
/// Tensors in a layout.
pub const MAX_TENSORS: usize = 1 << 20;
/// Dimensions of one tensor's shape.
pub const MAX_RANK: usize = 16;
/// Checkpoints in one training set.
pub const MAX_CHECKPOINTS: usize = 1 << 20;
/// The latent's width d.
pub const MAX_LATENT_DIM: usize = 1 << 20;
/// The width of a condition vector C.
pub const MAX_CONDITION_DIM: usize = 1 << 16;
/// Diffusion timesteps T (sampling builds tables of T values and DDPM runs T steps).
pub const MAX_TIMESTEPS: usize = 100_000;
/// The width of any layer of the networks (channels, hidden units, the time embedding).
pub const MAX_WIDTH: i64 = 1 << 16;
/// Layers of a network (convolutions, residual blocks).
pub const MAX_DEPTH: usize = 64;
/// A convolution's kernel or stride.
pub const MAX_KERNEL: i64 = 1 << 12;
