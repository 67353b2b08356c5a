//! The one place where a Rust result becomes a C return value.
//!
//! Every export runs its body through [`call`] (by way of the `ffi_call!` macro, which
//! supplies the export's own name): the body returns `Result<T, Error>`; a panic is caught
//! and becomes an EFAULT error; an error is logged once as "{function}: {error}" and turned
//! into the C error value of the export's return type: `-errno` for `int` and `ssize_t`,
//! `false`, NULL, or 0 for the unsigned counters. Model: libpathrs' `IntoCReturn`.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::destination::placement::Placement;
use crate::error::Error;

/// The path of a function defined inside the function this macro is expanded in, e.g.
/// "postcopy_ram::ffi::placement::pcr_place_page::here": a constant, costing nothing per
/// call. [`export_name`] turns it into the export's name, when a failure is logged.
macro_rules! fn_name {
    () => {{
        fn here() {}
        ::std::any::type_name_of_val(&here)
    }};
}
pub(crate) use fn_name;

/// The enclosing function's name from a `fn_name!()` path: its second-to-last segment.
pub(crate) fn export_name(path: &str) -> &str {
    let path = path.strip_suffix("::here").unwrap_or(path);
    path.rsplit("::").next().unwrap_or(path)
}

/// Runs the body of an export (a closure returning `Result<T, Error>`) under the panic
/// guard and converts its result to the export's C return value, naming the export in the
/// log line of a failure.
macro_rules! ffi_call {
    ($body:expr) => {
        $crate::ffi::ret::call($crate::ffi::ret::fn_name!(), $body)
    };
}
pub(crate) use ffi_call;

/// The C value reporting a failure with (positive) `errno`.
pub(crate) trait CError {
    /// The error value.
    fn from_errno(errno: i32) -> Self;
}

/// `errno` as a negative C return value: never 0 (success) nor positive (a count), even
/// for an `errno` that [`Error::new`] did not build.
fn negative(errno: i32) -> c_int {
    match errno.checked_neg() {
        Some(rc) if rc < 0 => rc,
        _ => -libc::EIO,
    }
}

impl CError for c_int {
    fn from_errno(errno: i32) -> Self {
        negative(errno)
    }
}

impl CError for isize {
    fn from_errno(errno: i32) -> Self {
        negative(errno) as isize
    }
}

impl CError for bool {
    fn from_errno(_: i32) -> Self {
        false
    }
}

impl CError for () {
    fn from_errno(_: i32) -> Self {}
}

/// Counters and states: 0 (no count, PCR_STATE_NONE).
impl CError for u32 {
    fn from_errno(_: i32) -> Self {
        0
    }
}

impl CError for u64 {
    fn from_errno(_: i32) -> Self {
        0
    }
}

impl<T> CError for *mut T {
    fn from_errno(_: i32) -> Self {
        std::ptr::null_mut()
    }
}

impl<T> CError for *const T {
    fn from_errno(_: i32) -> Self {
        std::ptr::null()
    }
}

/// A success value as the C return type `C`.
pub(crate) trait IntoC<C> {
    /// The C value.
    fn into_c(self) -> C;
}

/// `int` functions returning 0 on success.
impl IntoC<c_int> for () {
    fn into_c(self) -> c_int {
        0
    }
}

impl IntoC<c_int> for c_int {
    fn into_c(self) -> c_int {
        self
    }
}

/// A count returned as `int` (saturating; counts of a discard command are small).
impl IntoC<c_int> for usize {
    fn into_c(self) -> c_int {
        c_int::try_from(self).unwrap_or(c_int::MAX)
    }
}

/// A byte or page count returned as `ssize_t`. Lengths come from slices and page counts
/// from them, which never exceed isize::MAX.
impl IntoC<isize> for usize {
    fn into_c(self) -> isize {
        isize::try_from(self).unwrap_or(isize::MAX)
    }
}

impl IntoC<isize> for u64 {
    fn into_c(self) -> isize {
        isize::try_from(self).unwrap_or(isize::MAX)
    }
}

/// A placement: 0, or -EEXIST when the page was already present (a racing placer won,
/// which is benign: no log line).
impl IntoC<c_int> for Placement {
    fn into_c(self) -> c_int {
        match self {
            Placement::Placed => 0,
            Placement::AlreadyPresent => -libc::EEXIST,
        }
    }
}

/// `bool` functions: true on success.
impl IntoC<bool> for () {
    fn into_c(self) -> bool {
        true
    }
}

impl IntoC<()> for () {
    fn into_c(self) {}
}

impl IntoC<u32> for u32 {
    fn into_c(self) -> u32 {
        self
    }
}

impl IntoC<u64> for u64 {
    fn into_c(self) -> u64 {
        self
    }
}

impl<T> IntoC<*mut T> for *mut T {
    fn into_c(self) -> *mut T {
        self
    }
}

impl<T> IntoC<*const T> for *const T {
    fn into_c(self) -> *const T {
        self
    }
}

/// An error whose C value is not the type's error value: `pcr_state_set` reports a refused
/// step by returning the current state.
#[derive(Debug)]
pub(crate) struct ErrorWith<C> {
    /// What went wrong (logged).
    pub error: Error,
    /// What the export returns.
    pub value: C,
}

/// A body's result, convertible to the export's C return type `C`.
pub(crate) trait IntoCReturn<C> {
    /// The C value; an error is logged as "{function}: {error}", the function's name taken
    /// from `name`, a `fn_name!()` path.
    fn into_c_return(self, name: &str) -> C;
    /// The result of a body that failed with `error` (a caught panic).
    fn from_error(error: Error) -> Self;
}

/// Logs a failed export's error, out of line: exports that succeed do not carry it.
#[cold]
#[inline(never)]
fn log_failure(name: &str, error: &Error) {
    log::error!("{}: {error}", export_name(name));
}

impl<T: IntoC<C>, C: CError> IntoCReturn<C> for Result<T, Error> {
    #[inline(always)]
    fn into_c_return(self, name: &str) -> C {
        match self {
            Ok(value) => value.into_c(),
            Err(error) => {
                log_failure(name, &error);
                C::from_errno(error.errno())
            }
        }
    }

    fn from_error(error: Error) -> Self {
        Err(error)
    }
}

impl<T: IntoC<C>, C: CError> IntoCReturn<C> for Result<T, ErrorWith<C>> {
    fn into_c_return(self, name: &str) -> C {
        match self {
            Ok(value) => value.into_c(),
            Err(ErrorWith { error, value }) => {
                log_failure(name, &error);
                value
            }
        }
    }

    fn from_error(error: Error) -> Self {
        let value = C::from_errno(error.errno());
        Err(ErrorWith { error, value })
    }
}

/// Runs `body` for the export whose `fn_name!()` path is `name`: panics are caught (a bug in this library; unwinding
/// into C would be undefined behaviour) and reported as EFAULT, and the result converted.
///
/// Inlined into each export, with the body: a placement's ioctl then runs with the export
/// as its only frame (see `sys::uffd::ioctl_errno`).
#[inline(always)]
pub(crate) fn call<C, R: IntoCReturn<C>>(name: &str, body: impl FnOnce() -> R) -> C {
    crate::logging::ensure_installed();
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        R::from_error(Error::new(
            libc::EFAULT,
            format!(
                "internal panic caught at the C boundary: {}",
                crate::panic::panic_text(payload.as_ref())
            ),
        ))
    });
    result.into_c_return(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> c_int {
        ffi_call!(|| -> Result<(), Error> { Err(Error::new(libc::ENOENT, "gone")) })
    }

    fn panicking() -> *mut u8 {
        ffi_call!(|| -> Result<*mut u8, Error> { panic!("boom") })
    }

    #[test]
    fn the_name_is_the_enclosing_function() {
        fn some_export() -> &'static str {
            fn_name!()
        }
        assert_eq!(export_name(some_export()), "some_export");
        assert_eq!(export_name("pcr_version"), "pcr_version");
    }

    #[test]
    fn errors_become_the_c_error_value() {
        assert_eq!(failing(), -libc::ENOENT);
        assert!(panicking().is_null());
        let r: Result<usize, Error> = Err(Error::new(libc::ENOSPC, "full"));
        assert_eq!(
            IntoCReturn::<isize>::into_c_return(r, "f"),
            -(libc::ENOSPC as isize)
        );
        let r: Result<(), Error> = Err(Error::invalid("no"));
        assert!(!IntoCReturn::<bool>::into_c_return(r, "f"));
        let r: Result<u32, ErrorWith<u32>> = Err(ErrorWith {
            error: Error::invalid("refused"),
            value: 3,
        });
        assert_eq!(r.into_c_return("f"), 3);
    }

    /// Issue 17 item 10: an error with errno 0 became 0 (success) in C, and a negative
    /// one a positive value (a count).
    #[test]
    fn an_error_never_reads_as_success_in_c() {
        for errno in [
            0,
            -1,
            -libc::EINVAL,
            i32::MIN,
            i32::MAX,
            Error::MAX_ERRNO + 1,
        ] {
            let r: Result<(), Error> = Err(Error::new(errno, "odd errno"));
            assert_eq!(
                IntoCReturn::<c_int>::into_c_return(r, "f"),
                -libc::EIO,
                "errno {errno}"
            );
            let r: Result<usize, Error> = Err(Error::new(errno, "odd errno"));
            assert_eq!(
                IntoCReturn::<isize>::into_c_return(r, "f"),
                -(libc::EIO as isize),
                "errno {errno}"
            );
            assert!(!IntoCReturn::<bool>::into_c_return(
                Err::<(), Error>(Error::new(errno, "odd")),
                "f"
            ));
            // Even a raw errno that did not go through Error::new.
            assert!(<c_int as CError>::from_errno(errno) < 0, "errno {errno}");
            assert!(<isize as CError>::from_errno(errno) < 0, "errno {errno}");
        }
        assert_eq!(<c_int as CError>::from_errno(libc::ENOENT), -libc::ENOENT);
    }

    #[test]
    fn successes_keep_their_value() {
        assert_eq!(
            IntoCReturn::<c_int>::into_c_return(Ok::<(), Error>(()), "f"),
            0
        );
        assert_eq!(
            IntoCReturn::<c_int>::into_c_return(Ok::<usize, Error>(7), "f"),
            7
        );
        assert_eq!(
            IntoCReturn::<c_int>::into_c_return(Ok::<usize, Error>(usize::MAX), "f"),
            c_int::MAX
        );
        assert_eq!(
            IntoCReturn::<isize>::into_c_return(Ok::<u64, Error>(9), "f"),
            9
        );
        assert!(IntoCReturn::<bool>::into_c_return(Ok::<(), Error>(()), "f"));
    }
}
