//! Ownership of the opaque handles (`pdiff_dataset`, `pdiff_generator`, `pdiff_sampler`): the
//! library boxes a handle and gives the pointer to the caller, who owns it; every call borrows
//! it for its duration; its `*_free` takes it back, once. Only the types that implement
//! [`Handle`] travel this way, and a new handle reaches the caller only through a checked
//! [`HandleOut`], written once.
use crate::status::{Failure, FfiResult};
use std::ptr::NonNull;

/// An opaque handle type of the C ABI, owned by the caller between its creation and its
/// `*_free`.
pub(crate) trait Handle: Sized {
    /// Borrow the handle `p` for the call: `PDIFF_ERR_NULL_POINTER` ("`what` is NULL") when
    /// NULL.
    ///
    /// # Safety
    /// `p` is NULL or a handle of this type that the caller owns and has not freed, alive for
    /// `'a`.
    unsafe fn borrow<'a>(p: *const Self, what: &str) -> FfiResult<&'a Self> {
        // SAFETY: the caller's promise.
        unsafe { p.as_ref() }.ok_or_else(|| Failure::null(format!("{what} is NULL")))
    }

    /// Take back and drop a handle the caller gives up (NULL is a no-op).
    ///
    /// # Safety
    /// `p` is NULL or a handle of this type given out by [`HandleOut::give`] and not freed yet;
    /// no other call uses it any more.
    unsafe fn free(p: *mut Self) {
        if !p.is_null() {
            // SAFETY: it came from Box::into_raw in HandleOut::give, and is freed once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The caller's `T **out`, checked not NULL: receives one new handle, on success only.
pub(crate) struct HandleOut<T: Handle>(NonNull<*mut T>);

impl<T: Handle> HandleOut<T> {
    /// `out`, or `PDIFF_ERR_NULL_POINTER` ("out is NULL"). Check it before any work, so that a
    /// NULL `out` fails at once.
    pub(crate) fn new(out: *mut *mut T) -> FfiResult<Self> {
        NonNull::new(out).map(HandleOut).ok_or_else(|| Failure::null("out is NULL"))
    }

    /// Give `value` to the caller: `*out` becomes its handle, which the caller owns.
    pub(crate) fn give(self, value: T) {
        // SAFETY: `out` is not NULL and points to the caller's writable `T *` (the caller's
        // promise for every `**out` argument).
        unsafe { self.0.as_ptr().write(Box::into_raw(Box::new(value))) };
    }
}
