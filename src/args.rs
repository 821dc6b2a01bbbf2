//! Arguments from C: pointers that must not be NULL, strings, paths, the output `flags`, and
//! the static strings handed back.
use crate::status::{Failure, FfiResult};
use pdiff_core::output::IfForeign;
use std::ffi::{c_char, CStr, OsStr};
use std::path::PathBuf;

/// Return `PDIFF_ERR_NULL_POINTER` ("`$what` is NULL") from the enclosing body when `$p` is
/// NULL.
macro_rules! nonnull {
    ($p:expr, $what:expr) => {
        if $p.is_null() {
            return Err($crate::status::Failure::null(concat!($what, " is NULL")));
        }
    };
}
pub(crate) use nonnull;

/// A NUL-terminated UTF-8 string argument.
#[cfg_attr(not(feature = "train"), allow(dead_code))]
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::null(format!("{what} is NULL")));
    }
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))
}

/// A NUL-terminated path argument (any bytes but NUL, as on POSIX).
pub(crate) unsafe fn path_arg(p: *const c_char, what: &str) -> FfiResult<PathBuf> {
    if p.is_null() {
        return Err(Failure::null(format!("{what} is NULL")));
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

/// Bit of the `flags` of `pdiff_generator_export_ex` and `pdiff_sampler_sample_to_dir_ex`:
/// when the output directory holds files libpdiff did not write, write the new files beside
/// them instead of refusing. Those files are never removed or overwritten: a new file whose
/// name one of them takes is still refused (`PDIFF_ERR_OUTPUT_EXISTS`), and so is a path that
/// is a regular file, a symbolic link or another kind of libpdiff output.
pub const PDIFF_OUTPUT_FORCE: u32 = 1;

/// The output policy of a `flags` argument; an unknown bit is an invalid argument (a newer
/// flag this library does not have must not be ignored silently).
pub fn output_flags(flags: u32) -> FfiResult<IfForeign> {
    if flags & !PDIFF_OUTPUT_FORCE != 0 {
        return Err(Failure::invalid(format!("flags {flags:#x}: unknown bits (known: PDIFF_OUTPUT_FORCE = {PDIFF_OUTPUT_FORCE:#x})")));
    }
    Ok(if flags & PDIFF_OUTPUT_FORCE != 0 { IfForeign::Force } else { IfForeign::Refuse })
}

/// A static NUL-terminated string for a backend / stage name.
pub(crate) fn static_cstr(s: &'static str) -> *const c_char {
    match s {
        "onnxruntime-cpu" => c"onnxruntime-cpu".as_ptr(),
        "onnxruntime-cuda" => c"onnxruntime-cuda".as_ptr(),
        "autoencoder" => c"autoencoder".as_ptr(),
        "diffusion" => c"diffusion".as_ptr(),
        _ => c"unknown".as_ptr(),
    }
}
