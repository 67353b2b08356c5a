//! Panic containment at the C boundary.
//!
//! Every `extern "C"` function of this crate runs its body through [`guard`], so a panic
//! (a bug in this library) is caught, logged as one line, and turned into the function's
//! error value instead of unwinding into C, which would be undefined behaviour.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The value an export returns when its body panicked.
pub(crate) trait PanicValue {
    /// The error value of this return type.
    fn on_panic() -> Self;
}

impl PanicValue for i32 {
    fn on_panic() -> Self {
        -libc::EFAULT
    }
}

impl PanicValue for bool {
    fn on_panic() -> Self {
        false
    }
}

impl PanicValue for () {
    fn on_panic() -> Self {}
}

impl<T> PanicValue for *mut T {
    fn on_panic() -> Self {
        std::ptr::null_mut()
    }
}

impl<T> PanicValue for *const T {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

impl PanicValue for isize {
    fn on_panic() -> Self {
        -(libc::EFAULT as isize)
    }
}

impl PanicValue for u64 {
    fn on_panic() -> Self {
        0
    }
}

impl PanicValue for u32 {
    fn on_panic() -> Self {
        0
    }
}

/// Runs `body` for the export `name`, catching any panic.
///
/// A caught panic is logged with the export's name and yields [`PanicValue::on_panic`].
pub(crate) fn guard<R: PanicValue>(name: &'static str, body: impl FnOnce() -> R) -> R {
    crate::logging::ensure_installed();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            log::error!(
                "{name}: internal panic caught at the C boundary: {}",
                panic_message(&payload)
            );
            R::on_panic()
        }
    }
}

/// The text of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(non-string panic payload)"
    }
}
