//! What a call returns: [`pdiff_status`], its name ([`pdiff_status_name`]), the status of each
//! error of the engine, and [`Failure`], what a failing body hands to the boundary.
use crate::boundary::ffi_boundary;
use crate::enums::c_enum;
use pdiff_core::error::Error;
use std::ffi::{c_char, CStr};

/// Result of every fallible call. `PDIFF_OK` is 0; on any other value `pdiff_last_error()`
/// describes what went wrong and no output parameter was written. `pdiff_status_name()` names
/// a value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_status {
    /// Success.
    PDIFF_OK = 0,
    /// An argument or option field has an invalid value (including K < 2 checkpoints).
    PDIFF_ERR_INVALID_ARGUMENT = 1,
    /// A required pointer argument was NULL.
    PDIFF_ERR_NULL_POINTER = 2,
    /// The caller's output buffer is smaller than the result.
    PDIFF_ERR_BUFFER_TOO_SMALL = 3,
    /// A file could not be read or written.
    PDIFF_ERR_IO = 4,
    /// A checkpoint (or a tensor in it) is unreadable, inconsistent or non-finite.
    PDIFF_ERR_CHECKPOINT = 5,
    /// A bundle directory is missing, corrupt, tampered with or of an unknown format version.
    PDIFF_ERR_BUNDLE = 6,
    /// ONNX Runtime is missing or one of its sessions failed.
    PDIFF_ERR_RUNTIME = 7,
    /// A device was explicitly required (CUDA) but is not available.
    PDIFF_ERR_DEVICE_UNAVAILABLE = 8,
    /// Training produced a non-finite loss.
    PDIFF_ERR_DIVERGED = 9,
    /// A progress callback (of training or of sampling) returned nonzero.
    PDIFF_ERR_CANCELLED = 10,
    /// libtorch reported an error.
    PDIFF_ERR_TORCH = 11,
    /// A bug: a Rust panic was caught at the boundary (the message says where).
    PDIFF_ERR_PANIC = 12,
    /// An options struct's `struct_size` is none of the sizes this library accepts for it
    /// (the struct's current size and the smaller sizes of its earlier layouts).
    PDIFF_ERR_STRUCT_SIZE = 13,
    /// An output path holds something the library did not write: a file, a link, an output of
    /// another kind, or a directory with other files (the last can be written beside with
    /// `PDIFF_OUTPUT_FORCE`). Nothing was written or removed.
    PDIFF_ERR_OUTPUT_EXISTS = 14,
    /// The memory for what the call reads or generates could not be allocated (the message
    /// names it and its size): the call stopped, nothing else failed, the host keeps running.
    PDIFF_ERR_OUT_OF_MEMORY = 15,
}

c_enum!(
    pdiff_status,
    "status",
    [
        PDIFF_OK,
        PDIFF_ERR_INVALID_ARGUMENT,
        PDIFF_ERR_NULL_POINTER,
        PDIFF_ERR_BUFFER_TOO_SMALL,
        PDIFF_ERR_IO,
        PDIFF_ERR_CHECKPOINT,
        PDIFF_ERR_BUNDLE,
        PDIFF_ERR_RUNTIME,
        PDIFF_ERR_DEVICE_UNAVAILABLE,
        PDIFF_ERR_DIVERGED,
        PDIFF_ERR_CANCELLED,
        PDIFF_ERR_TORCH,
        PDIFF_ERR_PANIC,
        PDIFF_ERR_STRUCT_SIZE,
        PDIFF_ERR_OUTPUT_EXISTS,
        PDIFF_ERR_OUT_OF_MEMORY,
    ]
);

/// What `pdiff_status_name()` returns for a value that is no `pdiff_status` of this library.
pub const PDIFF_STATUS_UNKNOWN_NAME: &CStr = c"PDIFF_STATUS_UNKNOWN";

/// The name of `status` as the header spells it ("PDIFF_ERR_BUNDLE"), or
/// "PDIFF_STATUS_UNKNOWN" for a value that is not a `pdiff_status` of this library (e.g. one
/// added by a newer version). `status` is an `int32_t` so that any value may be passed; a
/// `pdiff_status` converts to it implicitly.
///
/// Ownership: a static string owned by the library, valid for the life of the process; never
/// NULL. Do not free it.
#[no_mangle]
pub extern "C" fn pdiff_status_name(status: i32) -> *const c_char {
    let p: *const c_char = ffi_boundary!(pdiff_status_name, || Ok(pdiff_status::try_from(status).map_or(PDIFF_STATUS_UNKNOWN_NAME, |s| s.c_name()).as_ptr()));
    if p.is_null() {
        PDIFF_STATUS_UNKNOWN_NAME.as_ptr()
    } else {
        p
    }
}

/// A failed call: the status returned to C and the message kept for `pdiff_last_error`.
#[derive(Debug)]
pub struct Failure {
    pub status: pdiff_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: pdiff_status, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(pdiff_status::PDIFF_ERR_INVALID_ARGUMENT, message)
    }
    pub fn null(message: impl Into<String>) -> Self {
        Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, message)
    }
}

/// The status for each error of the Rust API.
pub(crate) fn status_of(e: &Error) -> pdiff_status {
    use pdiff_status::*;
    match e {
        Error::Io { .. } => PDIFF_ERR_IO,
        Error::Checkpoint { .. } | Error::Tensor { .. } => PDIFF_ERR_CHECKPOINT,
        Error::InvalidArgument { .. } => PDIFF_ERR_INVALID_ARGUMENT,
        Error::Bundle { .. } => PDIFF_ERR_BUNDLE,
        Error::Runtime(_) => PDIFF_ERR_RUNTIME,
        Error::DeviceUnavailable(_) => PDIFF_ERR_DEVICE_UNAVAILABLE,
        Error::Diverged { .. } => PDIFF_ERR_DIVERGED,
        Error::Cancelled => PDIFF_ERR_CANCELLED,
        Error::Torch(_) => PDIFF_ERR_TORCH,
        Error::OutputExists { .. } => PDIFF_ERR_OUTPUT_EXISTS,
        Error::OutOfMemory { .. } => PDIFF_ERR_OUT_OF_MEMORY,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { status: status_of(&e), message: e.to_string() }
    }
}

/// What an exported function's body returns.
pub type FfiResult<T = ()> = std::result::Result<T, Failure>;
