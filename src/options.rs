//! Options structs: `size_t struct_size` first, fields only ever appended, every published
//! layout accepted. A host compiled against an older pdiff.h passes the smaller `struct_size` of
//! its header; the fields it does not know take their defaults.
use crate::status::{pdiff_status, Failure, FfiResult};

/// An options struct of the C ABI. Implemented by [`options_struct!`].
pub(crate) trait OptionsStruct: Copy + Default {
    /// `sizeof` of every published layout of the struct, oldest first; the last is this
    /// library's. A layout's size is the offset of the first field added after it.
    const SIZES: &'static [usize];
}

/// Whether `sizes` can be a struct's [`OptionsStruct::SIZES`] for a struct of `size` bytes:
/// strictly increasing and ending with `size`. Two layouts of one size could not be told apart:
/// a field appended into the tail padding of the previous layout (a `uint32_t` after a last
/// `int32_t` field, in a struct aligned to 8) would then be read from an older host's padding.
pub(crate) const fn layouts_are_distinct(sizes: &[usize], size: usize) -> bool {
    if sizes.is_empty() || sizes[sizes.len() - 1] != size {
        return false;
    }
    let mut i = 1;
    while i < sizes.len() {
        if sizes[i] <= sizes[i - 1] {
            return false;
        }
        i += 1;
    }
    true
}

/// `options_struct!(T, [first field of layout 2, first field of layout 3, ...])`: implement
/// [`OptionsStruct`] for `T`, its layouts ending where each listed field begins and at
/// `sizeof(T)`; refuse (at compile time) layouts whose sizes are not distinct.
macro_rules! options_struct {
    ($t:ty, [$($first_new_field:ident),* $(,)?]) => {
        impl $crate::options::OptionsStruct for $t {
            const SIZES: &'static [usize] = &[$(std::mem::offset_of!($t, $first_new_field),)* std::mem::size_of::<$t>()];
        }
        const _: () = assert!(
            $crate::options::layouts_are_distinct(<$t as $crate::options::OptionsStruct>::SIZES, std::mem::size_of::<$t>()),
            concat!("two layouts of ", stringify!($t), " have the same size")
        );
    };
}
pub(crate) use options_struct;

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
            format!(
                "{what}.struct_size is {size}, this library accepts {:?} bytes (this header's struct and its earlier layouts; initialize it with the *_default() function of the same header)",
                T::SIZES
            ),
        ));
    }
    let mut out = T::default();
    // SAFETY: `size` is one of T's published sizes, so the caller's struct holds at least
    // `size` readable bytes laid out as T's first fields (repr(C), fields only appended).
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size) };
    Ok(out)
}
