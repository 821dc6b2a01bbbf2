//! libpdiff.so: the stable C ABI of libpdiff (`include/pdiff.h`, generated from this crate by
//! cbindgen) over pdiff-core (serving) and, with feature `train`, pdiff-train.
//!
//! A thin shell over the Rust API, in the style of rustls-ffi / llama.h / wasmtime:
//! - opaque handles ([`pdiff_dataset`], [`pdiff_generator`], [`pdiff_sampler`]) created by
//!   `*_load` / `*_train` / `*_open` calls and released by the matching `*_free` (NULL-safe);
//! - every fallible call returns a [`pdiff_status`]; the message of the last failing call on
//!   the calling thread is [`pdiff_last_error`];
//! - no Rust panic crosses the boundary: every exported function runs inside [`boundary`]
//!   (one `catch_unwind`), a panic becomes `PDIFF_ERR_PANIC`;
//! - options structs start with `size_t struct_size` and have a `*_default()` initializer;
//!   a struct whose `struct_size` is not `sizeof` of this header's struct is rejected with
//!   `PDIFF_ERR_STRUCT_SIZE`;
//! - enum-valued option fields are plain `int32_t` in the structs (an out-of-range value
//!   from C is then an `PDIFF_ERR_INVALID_ARGUMENT`, never undefined behaviour).
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

// Training (datasets and generators) needs libtorch: only with feature `train`, declared in
// pdiff.h under `#if defined(PDIFF_FEATURE_TRAIN)` (cbindgen.toml, [defines]).
#[cfg(feature = "train")]
mod dataset;
#[cfg(feature = "train")]
mod generator;
mod sampler;

#[cfg(feature = "train")]
pub use dataset::*;
#[cfg(feature = "train")]
pub use generator::*;
pub use sampler::*;

use pdiff_core::error::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString, OsStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Version of this C ABI. It changes whenever a function, struct or enum of pdiff.h changes
/// incompatibly; compare it with `pdiff_abi_version()` at run time.
pub const PDIFF_ABI_VERSION: u32 = 1;

/// Result of every fallible call. `PDIFF_OK` is 0; on any other value `pdiff_last_error()`
/// describes what went wrong and no output parameter was written.
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
    /// A progress callback returned nonzero.
    PDIFF_ERR_CANCELLED = 10,
    /// libtorch reported an error.
    PDIFF_ERR_TORCH = 11,
    /// A bug: a Rust panic was caught at the boundary (the message says where).
    PDIFF_ERR_PANIC = 12,
    /// An options struct's `struct_size` does not match this library's struct.
    PDIFF_ERR_STRUCT_SIZE = 13,
    /// An output path holds something the library did not write: a file, a link, an output of
    /// another kind, or a directory with other files (the last can be written beside with
    /// `PDIFF_OUTPUT_FORCE`). Nothing was written or removed.
    PDIFF_ERR_OUTPUT_EXISTS = 14,
}

/// Bit of the `flags` of `pdiff_generator_export_ex` and `pdiff_sampler_sample_to_dir_ex`:
/// when the output directory holds files libpdiff did not write, write the new files beside
/// them instead of refusing. Those files are never removed or overwritten: a new file whose
/// name one of them takes is still refused (`PDIFF_ERR_OUTPUT_EXISTS`), and so is a path that
/// is a regular file, a symbolic link or another kind of libpdiff output.
pub const PDIFF_OUTPUT_FORCE: u32 = 1;

/// The output policy of a `flags` argument; an unknown bit is an invalid argument (a newer
/// flag this library does not have must not be ignored silently).
pub fn output_flags(flags: u32) -> FfiResult<pdiff_core::output::IfForeign> {
    if flags & !PDIFF_OUTPUT_FORCE != 0 {
        return Err(Failure::invalid(format!("flags {flags:#x}: unknown bits (known: PDIFF_OUTPUT_FORCE = {PDIFF_OUTPUT_FORCE:#x})")));
    }
    Ok(if flags & PDIFF_OUTPUT_FORCE != 0 { pdiff_core::output::IfForeign::Force } else { pdiff_core::output::IfForeign::Refuse })
}

// The int32 option enums of the training API live here rather than in `generator`: cbindgen
// repeats a module's cfg on every enum variant, an item's cfg only once around the enum.

/// Architecture and default hyper-parameters of a generator (`pdiff_train_options.preset`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_preset {
    /// Small networks tuned for CPUs; dense layers over the whole vector, so for D below about
    /// 50,000.
    PDIFF_PRESET_COMPACT = 0,
    /// The reference widths of the paper's code: for GPUs.
    PDIFF_PRESET_PAPER = 1,
    /// Large D: the vector cut into tokens (tensor rows) encoded by one shared network, the
    /// diffusion over principal coefficients of the token latents; grows about as sqrt(D).
    PDIFF_PRESET_CHUNKED = 2,
    /// Chosen by the dataset's D: compact below 50,000 parameters, chunked from there (the
    /// default; the bundle's manifest records the choice).
    PDIFF_PRESET_AUTO = 3,
}

/// How the autoencoder's reconstruction loss weighs the parameters
/// (`pdiff_train_options.reconstruction_weighting`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_reconstruction_weighting {
    /// Every scalar the same (the paper's MSE; the default): a tensor counts by its size.
    PDIFF_RECONSTRUCTION_UNIFORM = 0,
    /// Every tensor the same whatever its size, so that a small head next to a large first
    /// layer is not lost in the loss (the mnist-tasks recipe).
    PDIFF_RECONSTRUCTION_PER_TENSOR = 1,
}

/// Where training runs (`pdiff_train_options.device`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_device {
    /// CUDA when libtorch sees a GPU, else CPU (the default).
    PDIFF_DEVICE_AUTO = 0,
    /// CPU.
    PDIFF_DEVICE_CPU = 1,
    /// CUDA device `device_index`; `PDIFF_ERR_DEVICE_UNAVAILABLE` when there is none (never a
    /// silent fallback).
    PDIFF_DEVICE_CUDA = 2,
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
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { status: status_of(&e), message: e.to_string() }
    }
}

pub type FfiResult<T = ()> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs cannot appear in a C string: replace them.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; never panic here.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// What an exported function returns when its body failed or panicked.
pub trait FfiReturn {
    fn on_failure(failure: &Failure) -> Self;
    fn on_panic() -> Self;
}

impl FfiReturn for pdiff_status {
    fn on_failure(failure: &Failure) -> Self {
        failure.status
    }
    fn on_panic() -> Self {
        pdiff_status::PDIFF_ERR_PANIC
    }
}

impl FfiReturn for usize {
    fn on_failure(_: &Failure) -> Self {
        0
    }
    fn on_panic() -> Self {
        0
    }
}

impl FfiReturn for u32 {
    fn on_failure(_: &Failure) -> Self {
        0
    }
    fn on_panic() -> Self {
        0
    }
}

impl FfiReturn for *const c_char {
    fn on_failure(_: &Failure) -> Self {
        std::ptr::null()
    }
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

impl FfiReturn for () {
    fn on_failure(_: &Failure) -> Self {}
    fn on_panic() -> Self {}
}

/// The panic boundary: every exported function body runs in here, and nothing else catches.
/// A failure is recorded as the thread's last error (prefixed with the function name) and
/// turned into the return type's failure value (its status, NULL or 0); a panic is caught and
/// becomes `PDIFF_ERR_PANIC` (NULL, 0) with the panic message as last error.
pub fn boundary<T: FfiReturn>(name: &str, f: impl FnOnce() -> FfiResult<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(failure)) => {
            set_last_error(&format!("{name}: {}", failure.message));
            T::on_failure(&failure)
        }
        Err(payload) => {
            set_last_error(&format!("{name}: internal error (Rust panic): {}", panic_message(&*payload)));
            T::on_panic()
        }
    }
}

/// [`boundary`] for the common status-returning call.
pub fn call(name: &str, f: impl FnOnce() -> FfiResult) -> pdiff_status {
    boundary(name, || f().map(|()| pdiff_status::PDIFF_OK))
}

/// Return `PDIFF_ERR_NULL_POINTER` from the enclosing call when `$p` is NULL.
macro_rules! nonnull {
    ($p:expr, $what:expr) => {
        if $p.is_null() {
            return Err($crate::Failure::new($crate::pdiff_status::PDIFF_ERR_NULL_POINTER, concat!($what, " is NULL")));
        }
    };
}
/// Borrow `*$p` as a Rust reference, or return `PDIFF_ERR_NULL_POINTER`.
macro_rules! try_ref {
    ($p:expr, $what:expr) => {{
        $crate::nonnull!($p, $what);
        unsafe { &*$p }
    }};
}
pub(crate) use {nonnull, try_ref};

/// A NUL-terminated UTF-8 string argument.
#[cfg_attr(not(feature = "train"), allow(dead_code))]
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, format!("{what} is NULL")));
    }
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))
}

/// A NUL-terminated path argument (any bytes but NUL, as on POSIX).
pub(crate) unsafe fn path_arg(p: *const c_char, what: &str) -> FfiResult<PathBuf> {
    if p.is_null() {
        return Err(Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, format!("{what} is NULL")));
    }
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    if bytes.is_empty() {
        return Err(Failure::invalid(format!("{what} is empty")));
    }
    #[cfg(unix)]
    let path = PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path = PathBuf::from(OsStr::new(std::str::from_utf8(bytes).map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))?));
    Ok(path)
}

/// An options struct of the C ABI: `size_t struct_size` first, then fields that only ever get
/// added at the end. Each published layout stays accepted: a host compiled against an older
/// pdiff.h passes the smaller `struct_size` of its header, and the fields it does not know take
/// their defaults.
pub(crate) trait OptionsStruct: Copy + Default {
    /// `sizeof` of every published version of the struct, oldest first; the last is this
    /// library's. A version's size is the offset of the first field added after it.
    const SIZES: &'static [usize];
}

/// Read an options struct: NULL gives the defaults; a `struct_size` that is not one of the
/// struct's published sizes is `PDIFF_ERR_STRUCT_SIZE`; a published older size is read as far
/// as it goes, over the defaults.
pub(crate) unsafe fn options_arg<T: OptionsStruct>(p: *const T, what: &str) -> FfiResult<T> {
    if p.is_null() {
        return Ok(T::default());
    }
    let size = unsafe { std::ptr::read_unaligned(p as *const usize) };
    if !T::SIZES.contains(&size) {
        return Err(Failure::new(
            pdiff_status::PDIFF_ERR_STRUCT_SIZE,
            format!("{what}.struct_size is {size}, this library accepts {:?} bytes (initialize it with the *_default() function of the same header)", T::SIZES),
        ));
    }
    let mut out = T::default();
    // SAFETY: `size` is one of T's published sizes, so the caller's struct holds at least
    // `size` readable bytes laid out as T's first fields (repr(C), fields only appended).
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size) };
    Ok(out)
}

/// Store a new handle into `*out` (which was checked non-NULL).
pub(crate) fn put_handle<T>(out: *mut *mut T, value: T) {
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Drop a handle created by [`put_handle`] (NULL is a no-op).
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        drop(unsafe { Box::from_raw(p) });
    }
}

/// The message of the most recent failed call on the calling thread, or "" if none has
/// failed yet. Successful calls do not clear it.
///
/// Ownership: the returned string is owned by the library (thread-local storage). It stays
/// valid until the next failing pdiff call on the same thread; copy it to keep it. Never NULL;
/// do not free it.
#[no_mangle]
pub extern "C" fn pdiff_last_error() -> *const c_char {
    let p: *const c_char = boundary("pdiff_last_error", || Ok(LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())));
    if p.is_null() {
        c"".as_ptr()
    } else {
        p
    }
}

/// The ABI version this library implements (`PDIFF_ABI_VERSION` of the header it was built
/// with). A host compiled against a different `PDIFF_ABI_VERSION` must not use it.
///
/// Ownership: nothing to free.
#[no_mangle]
pub extern "C" fn pdiff_abi_version() -> u32 {
    boundary("pdiff_abi_version", || Ok(PDIFF_ABI_VERSION))
}

/// Bit of `pdiff_capabilities()`: training is compiled in (`pdiff_dataset_*`,
/// `pdiff_generator_*`: a full build, linked with libtorch). Without it the library only
/// serves bundles (`pdiff_sampler_*`).
pub const PDIFF_CAPABILITY_TRAIN: u32 = 1;

/// What this build of the library can do, as a bitmask of `PDIFF_CAPABILITY_*` bits. A host
/// that loads libpdiff at run time checks it before looking up optional functions (a
/// serve-only build does not export the training functions at all).
///
/// Ownership: nothing to free.
#[no_mangle]
pub extern "C" fn pdiff_capabilities() -> u32 {
    boundary("pdiff_capabilities", || Ok(if cfg!(feature = "train") { PDIFF_CAPABILITY_TRAIN } else { 0 }))
}

/// The library version, e.g. "0.1.0".
///
/// Ownership: a static string owned by the library, valid for the life of the process. Do not
/// free it.
#[no_mangle]
pub extern "C" fn pdiff_version() -> *const c_char {
    boundary("pdiff_version", || Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char))
}

/// A static NUL-terminated string for a backend / stage name.
pub(crate) fn static_cstr(s: &'static str) -> *const c_char {
    match s {
        "onnxruntime-cpu" => c"onnxruntime-cpu".as_ptr(),
        "onnxruntime-cuda" => c"onnxruntime-cuda".as_ptr(),
        "autoencoder" => c"autoencoder".as_ptr(),
        "diffusion" => c"diffusion".as_ptr(),
        "sampling" => c"sampling".as_ptr(),
        _ => c"unknown".as_ptr(),
    }
}
