//! Checked conversions of the arguments C hands the exports, in the style of rustls-ffi's
//! `try_*` helpers: each refuses NULL (and absurd lengths) with an EINVAL error naming the
//! argument, which the export's `ffi_call!` logs once.

use std::ffi::{c_char, CStr};

use crate::error::{Error, Result};

/// An opaque object C receives from a `pcr_*_new` and passes back: a Box leaked to C.
pub(crate) trait CHandle {
    /// The C type name, for the log line.
    const NAME: &'static str;
}

/// The object behind handle `ptr`, or EINVAL when it is NULL. Inlined into every export
/// (placement among them): the checks are a mask and a compare, and an error is built out
/// of line.
///
/// # Safety
/// Unless NULL, `ptr` must come from the matching `pcr_*_new` (a leaked Box) and not have
/// been freed, and no `&mut` to it may be live for `'a`.
#[inline(always)]
pub(crate) unsafe fn try_handle<'a, T: CHandle>(ptr: *const T) -> Result<&'a T> {
    check_align(T::NAME, ptr)?;
    if ptr.is_null() {
        return Err(null_arg(T::NAME));
    }
    // SAFETY: non-NULL and aligned; the caller guarantees it points to a live `T` (above).
    Ok(unsafe { &*ptr })
}

/// The object behind handle `ptr`, for mutation, or EINVAL when it is NULL.
///
/// # Safety
/// As [`try_handle`], and no other reference to the object may be live for `'a`.
pub(crate) unsafe fn try_handle_mut<'a, T: CHandle>(ptr: *mut T) -> Result<&'a mut T> {
    check_align(T::NAME, ptr)?;
    // SAFETY: the caller guarantees a non-NULL `ptr` points to a live `T`, not aliased.
    unsafe { ptr.as_mut() }.ok_or_else(|| null_arg(T::NAME))
}

/// Takes back the ownership of handle `ptr` (to free it), or EINVAL when it is NULL.
///
/// # Safety
/// Unless NULL, `ptr` must come from the matching `pcr_*_new` and be given back only once.
pub(crate) unsafe fn try_take<T: CHandle>(ptr: *mut T) -> Result<Box<T>> {
    if ptr.is_null() {
        return Err(null_arg(T::NAME));
    }
    check_align(T::NAME, ptr)?;
    // SAFETY: non-NULL, and the caller guarantees it is a Box leaked by `pcr_*_new` that
    // nobody else frees.
    Ok(unsafe { Box::from_raw(ptr) })
}

/// A copy of the struct `*ptr` (the `ops` tables, messages to encode), or EINVAL when NULL.
///
/// # Safety
/// Unless NULL, `ptr` must point to a readable, initialised `T`.
pub(crate) unsafe fn try_read<T: Copy>(arg: &str, ptr: *const T) -> Result<T> {
    check_align(arg, ptr)?;
    // SAFETY: the caller guarantees a non-NULL `ptr` points to a readable `T`.
    unsafe { ptr.as_ref() }
        .copied()
        .ok_or_else(|| null_arg(arg))
}

/// `ptr` itself when it is not NULL (an output the export writes once it succeeded).
pub(crate) fn try_out<T>(arg: &str, ptr: *mut T) -> Result<*mut T> {
    if ptr.is_null() {
        return Err(null_arg(arg));
    }
    check_align(arg, ptr)?;
    Ok(ptr)
}

/// The NUL-terminated string at `ptr`, as bytes.
///
/// # Safety
/// Unless NULL, `ptr` must point to a NUL-terminated string valid and unmodified for `'a`.
pub(crate) unsafe fn try_c_bytes<'a>(arg: &str, ptr: *const c_char) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return Err(null_arg(arg));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string living for 'a.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// The NUL-terminated UTF-8 string at `ptr`.
///
/// # Safety
/// As [`try_c_bytes`].
pub(crate) unsafe fn try_str<'a>(arg: &str, ptr: *const c_char) -> Result<&'a str> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { try_c_bytes(arg, ptr) }?;
    std::str::from_utf8(bytes).map_err(|_| Error::invalid(format!("{arg} is not UTF-8")))
}

/// Refuses a pointer that is not aligned for `T`: making a reference or slice from it
/// would be undefined behaviour (C may hand a `uint64_t *` into a byte buffer).
#[inline(always)]
fn check_align<T>(arg: &str, ptr: *const T) -> Result<()> {
    // Alignments are powers of two: a mask, not a division.
    let align = std::mem::align_of::<T>();
    if (ptr as usize) & (align - 1) != 0 {
        return Err(misaligned(arg, ptr.cast(), align));
    }
    Ok(())
}

/// The error of a NULL argument (built out of line: the checks inline into every export).
#[cold]
#[inline(never)]
fn null_arg(arg: &str) -> Error {
    Error::invalid(format!("{arg} is NULL"))
}

/// The error of a pointer not aligned to `align`.
#[cold]
#[inline(never)]
fn misaligned(arg: &str, ptr: *const (), align: usize) -> Error {
    Error::invalid(format!("{arg} ({ptr:p}) is not aligned to {align} bytes"))
}

/// Refuses a NULL or misaligned pointer, or a length whose byte size overflows isize.
fn check_ptr_len<T>(arg: &str, ptr: *const T, len: usize) -> Result<()> {
    if ptr.is_null() {
        return Err(null_arg(arg));
    }
    check_align(arg, ptr)?;
    if len
        .checked_mul(std::mem::size_of::<T>())
        .map_or(true, |b| b > isize::MAX as usize)
    {
        return Err(Error::invalid(format!("{arg} length {len} is too large")));
    }
    Ok(())
}

/// `len` elements at `ptr` as a slice; EINVAL when `ptr` is NULL or `len` too large.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` readable, initialised elements that stay valid
/// and unmodified for `'a`.
pub(crate) unsafe fn try_slice<'a, T>(arg: &str, ptr: *const T, len: usize) -> Result<&'a [T]> {
    check_ptr_len::<T>(arg, ptr, len)?;
    // SAFETY: non-NULL and of a valid size (checked above); the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` elements at `ptr` as a mutable slice; EINVAL when NULL or too large.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` writable, initialised elements not otherwise
/// accessed during `'a`.
pub(crate) unsafe fn try_slice_mut<'a, T>(
    arg: &str,
    ptr: *mut T,
    len: usize,
) -> Result<&'a mut [T]> {
    check_ptr_len::<T>(arg, ptr.cast_const(), len)?;
    // SAFETY: non-NULL and of a valid size (checked above); the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// `len` elements at `ptr`, or an empty slice when `len` is 0 (then `ptr` may be NULL).
///
/// # Safety
/// As [`try_slice`].
pub(crate) unsafe fn try_slice_or_empty<'a, T>(
    arg: &str,
    ptr: *const T,
    len: usize,
) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: forwarded from the caller.
    unsafe { try_slice(arg, ptr, len) }
}

/// As [`try_slice_or_empty`], mutable.
///
/// # Safety
/// As [`try_slice_mut`].
pub(crate) unsafe fn try_slice_mut_or_empty<'a, T>(
    arg: &str,
    ptr: *mut T,
    len: usize,
) -> Result<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: forwarded from the caller.
    unsafe { try_slice_mut(arg, ptr, len) }
}

/// One argument's memory for [`try_disjoint`]: its name, address, size in bytes, and
/// whether the export writes it.
pub(crate) struct Span {
    arg: &'static str,
    start: usize,
    len: usize,
    written: bool,
}

impl Span {
    /// `len` elements of `T` at `ptr`, read only.
    pub(crate) fn input<T>(arg: &'static str, ptr: *const T, len: usize) -> Span {
        Span {
            arg,
            start: ptr as usize,
            len: len.saturating_mul(std::mem::size_of::<T>()),
            written: false,
        }
    }

    /// `len` elements of `T` at `ptr`, written by the export.
    pub(crate) fn output<T>(arg: &'static str, ptr: *const T, len: usize) -> Span {
        Span {
            written: true,
            ..Span::input(arg, ptr, len)
        }
    }
}

/// Refuses (EINVAL) arguments whose memory overlaps where at least one of the two is
/// written: the export would hold a `&mut` slice aliasing another slice, which is undefined
/// behaviour whatever it then does. Empty spans overlap nothing; two inputs may overlap.
pub(crate) fn try_disjoint(spans: &[Span]) -> Result<()> {
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if !(a.written || b.written) || a.len == 0 || b.len == 0 {
                continue;
            }
            let a_end = a.start.saturating_add(a.len);
            let b_end = b.start.saturating_add(b.len);
            if a.start < b_end && b.start < a_end {
                return Err(Error::invalid(format!(
                    "{} and {} overlap (the library writes {})",
                    a.arg,
                    b.arg,
                    if a.written { a.arg } else { b.arg }
                )));
            }
        }
    }
    Ok(())
}
