//! What the loaded library is: its version, the ABI it implements, what it can do.
use crate::boundary::ffi_boundary;
use std::ffi::c_char;

/// Version of this C ABI. It changes whenever a function, struct or enum of pdiff.h changes
/// incompatibly (additions, such as new functions and fields appended to an options struct,
/// keep it); compare it with `pdiff_abi_version()` at run time.
pub const PDIFF_ABI_VERSION: u32 = 1;

/// The ABI version this library implements (`PDIFF_ABI_VERSION` of the header it was built
/// with). A host compiled against a different `PDIFF_ABI_VERSION` must not use it.
///
/// Ownership: nothing to free.
#[no_mangle]
pub extern "C" fn pdiff_abi_version() -> u32 {
    ffi_boundary!(pdiff_abi_version, || Ok(PDIFF_ABI_VERSION))
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
    ffi_boundary!(pdiff_capabilities, || Ok(if cfg!(feature = "train") { PDIFF_CAPABILITY_TRAIN } else { 0 }))
}

/// The library version, e.g. "0.1.0".
///
/// Ownership: a static string owned by the library, valid for the life of the process. Do not
/// free it.
#[no_mangle]
pub extern "C" fn pdiff_version() -> *const c_char {
    ffi_boundary!(pdiff_version, || Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char))
}
