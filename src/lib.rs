//! libpdiff.so: the stable C ABI of libpdiff (`include/pdiff.h`, generated from this crate by
//! cbindgen) over pdiff-core (serving) and, with feature `train`, pdiff-train.
//!
//! A thin shell over the Rust API, in the style of rustls-ffi / llama.h / wasmtime:
//! - opaque handles ([`pdiff_dataset`], [`pdiff_generator`], [`pdiff_sampler`]) created by
//!   `*_load` / `*_train` / `*_open` calls and released by the matching `*_free` (NULL-safe);
//!   their ownership is in the types (`handles`);
//! - every fallible call returns a [`pdiff_status`] ([`pdiff_status_name`] names one); the
//!   message of the last failing call on the calling thread is [`pdiff_last_error`], prefixed
//!   once with the function's name;
//! - no Rust panic crosses the boundary: every exported function runs inside [`boundary`]
//!   (one `catch_unwind`, through a macro that takes the function itself), a panic becomes
//!   `PDIFF_ERR_PANIC`;
//! - options structs start with `size_t struct_size` and have a `*_default()` initializer;
//!   fields are only appended, and a `struct_size` of an earlier layout of the struct is read
//!   as far as it goes, the newer fields taking their defaults; any other `struct_size` is
//!   rejected with `PDIFF_ERR_STRUCT_SIZE` (`options`);
//! - enum-valued option fields are plain `int32_t` in the structs, converted with
//!   `TryFrom<i32>` (an out-of-range value from C is then an `PDIFF_ERR_INVALID_ARGUMENT`
//!   naming the field, never undefined behaviour; `enums`).
//!
//! One module per concern: `status` (the status, its names, failures), `boundary` (the panic
//! boundary, the last error), `args` (pointer, string, path and flag arguments), `handles`
//! (ownership of handles), `options` (options structs), `enums` (option enums), `version`
//! (version, ABI, capabilities), and the API itself: `dataset`, `generator` (training, feature
//! `train`) and `sampler`.
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

mod args;
mod boundary;
mod enums;
mod handles;
mod options;
mod status;
mod version;

// Training (datasets and generators) needs libtorch: only with feature `train`, declared in
// pdiff.h under `#if defined(PDIFF_FEATURE_TRAIN)` (cbindgen.toml, [defines]).
#[cfg(feature = "train")]
mod dataset;
#[cfg(feature = "train")]
mod generator;
mod sampler;

pub use args::{output_flags, PDIFF_OUTPUT_FORCE};
pub use boundary::{boundary, call, pdiff_last_error, FfiReturn};
pub use enums::*;
pub use status::{pdiff_status, pdiff_status_name, Failure, FfiResult, PDIFF_STATUS_UNKNOWN_NAME};
pub use version::*;

#[cfg(feature = "train")]
pub use dataset::*;
#[cfg(feature = "train")]
pub use generator::*;
pub use sampler::*;
