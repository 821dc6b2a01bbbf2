//! One error type for the whole crate. Every variant names what is wrong (file, tensor, shape,
//! field) so a user can act on the message alone; `ffi` maps variants to C status codes.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file is unreadable, corrupt, or not what the selection needs.
    #[error("checkpoint {file}: {message}")]
    Checkpoint { file: PathBuf, message: String },

    /// A named tensor is missing, of the wrong shape or dtype, or holds non-finite values.
    #[error("checkpoint {file}, tensor '{tensor}': {message}")]
    Tensor { file: PathBuf, tensor: String, message: String },

    /// An argument, option or configuration field has an invalid value.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },

    /// A bundle (exported generator directory) is missing, corrupt, tampered with or of an
    /// unknown format version.
    #[error("bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },

    /// The ONNX Runtime library is missing, unusable, or a session failed.
    #[error("onnx runtime: {0}")]
    Runtime(String),

    /// A device was required but is not available (e.g. CUDA asked for on a CPU-only machine).
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),

    /// Training produced a non-finite loss.
    #[error("training diverged at {stage} step {step}: loss is {loss}")]
    Diverged { stage: String, step: usize, loss: f64 },

    /// An output's destination holds something the library did not write (or cannot replace):
    /// nothing was written. `force_would` says what forcing the write would do, when it may.
    #[error("output {} {reason}: choose another output{}", path.display(), force_would.map(|f| format!(", or force the write to {f}")).unwrap_or_default())]
    OutputExists { path: PathBuf, reason: String, force_would: Option<&'static str> },

    /// The progress callback asked to stop.
    #[error("cancelled by the caller")]
    Cancelled,

    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(String),

    /// The memory for `what` could not be allocated: the operation stopped, nothing else failed.
    #[error("out of memory: cannot allocate {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: u64 },
}

/// The payload of the `OutOfMemory` I/O error a bounded read returns when the buffer for a file
/// cannot be allocated: the size it needed. [`Error::io`] and [`Error::read_out_of_memory`] turn
/// it into [`Error::OutOfMemory`], so a host tells "too little memory" from "bad file".
#[derive(Debug)]
pub struct ReadOutOfMemory(pub u64);

impl std::fmt::Display for ReadOutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot allocate {} bytes to read it", self.0)
    }
}

impl std::error::Error for ReadOutOfMemory {}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match Error::read_out_of_memory(&source, path.display()) {
            Some(e) => e,
            None => Error::Io { path, source },
        }
    }
    /// [`Error::OutOfMemory`] for reading `what`, when `e` is a bounded read's failed allocation.
    pub fn read_out_of_memory(e: &std::io::Error, what: impl std::fmt::Display) -> Option<Self> {
        let bytes = e.get_ref()?.downcast_ref::<ReadOutOfMemory>()?.0;
        Some(Error::OutOfMemory { what: what.to_string(), bytes })
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), message: message.into() }
    }
    pub fn bundle(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Bundle { path: path.into(), message: message.into() }
    }
}
