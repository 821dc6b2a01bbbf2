//! The panic boundary every exported function runs in, and the thread's last error.
//!
//! An exported function's body is a closure returning [`FfiResult`], run by [`ffi_boundary!`]
//! (or [`ffi_call!`] for a status): one `catch_unwind` per call, nothing else catches. A failure
//! becomes the return type's failure value and the thread's last error, prefixed once with the
//! function's name; the body's own messages never repeat it. The macros take the function
//! itself, not a string: the name in messages is the exported symbol's (a name that is no
//! function does not compile; tests/abi.rs checks that every function reports under its own).
use crate::status::{pdiff_status, Failure, FfiResult};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

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

/// The panic boundary, under the name `name` (exported functions call it through
/// [`ffi_boundary!`], which passes their own). A failure is recorded as the thread's last error
/// ("name: message") and turned into the return type's failure value (its status, NULL or 0);
/// a panic is caught and becomes `PDIFF_ERR_PANIC` (NULL, 0) with the panic message as last
/// error.
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

/// `ffi_boundary!(pdiff_x, || body)`: run `body` (an `FnOnce() -> FfiResult<T>`) as the
/// exported function `pdiff_x`, whose name prefixes its failures ([`boundary`]).
macro_rules! ffi_boundary {
    ($function:ident, $body:expr) => {{
        // The function itself, so that the name cannot name nothing.
        let _ = $function;
        $crate::boundary::boundary(stringify!($function), $body)
    }};
}

/// `ffi_call!(pdiff_x, || body)`: [`ffi_boundary!`] for a body returning `FfiResult<()>`: the
/// call returns `PDIFF_OK` or the failure's status.
macro_rules! ffi_call {
    ($function:ident, $body:expr) => {{
        let _ = $function;
        $crate::boundary::call(stringify!($function), $body)
    }};
}
pub(crate) use {ffi_boundary, ffi_call};

/// The message of the most recent failed call on the calling thread, or "" if none has
/// failed yet. Successful calls do not clear it. It starts with the failed function's name
/// ("pdiff_sampler_open: bundle /x: not a directory").
///
/// Ownership: the returned string is owned by the library (thread-local storage). It stays
/// valid until the next failing pdiff call on the same thread; copy it to keep it. Never NULL;
/// do not free it.
#[no_mangle]
pub extern "C" fn pdiff_last_error() -> *const c_char {
    let p: *const c_char = ffi_boundary!(pdiff_last_error, || Ok(LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())));
    if p.is_null() {
        c"".as_ptr()
    } else {
        p
    }
}
