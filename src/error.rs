//! The library's error: a positive errno plus a message naming the cause. The C layer
//! negates the errno in one place (`ffi::ret`). Each error type of the core converts into
//! it with one `From`.

use std::fmt;

/// An error with a positive errno (a C caller receives it negated) and a human-readable
/// cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

impl Error {
    /// An error with positive `errno` and `message`. An `errno` that is not a positive
    /// errno (0, negative, above [`Error::MAX_ERRNO`]) becomes `EIO`: C reads 0 as success
    /// and a positive return value as a count, so such an error must never reach it.
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error {
            errno: if (1..=Self::MAX_ERRNO).contains(&errno) {
                errno
            } else {
                libc::EIO
            },
            message: message.into(),
        }
    }

    /// The largest errno value (Linux's `MAX_ERRNO`).
    pub const MAX_ERRNO: i32 = 4095;

    /// `EINVAL`: bad argument.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(libc::EINVAL, message)
    }

    /// An OS error, with `context` saying what was attempted.
    pub fn os(err: &std::io::Error, context: impl fmt::Display) -> Error {
        Error::new(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("{context}: {err}"),
        )
    }

    /// The positive errno (1 to [`Error::MAX_ERRNO`]).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The cause, as text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::wire::WireError> for Error {
    fn from(e: crate::wire::WireError) -> Error {
        Error::new(e.errno(), e.to_string())
    }
}

impl From<crate::source::discard_walk::DiscardWalkError> for Error {
    fn from(e: crate::source::discard_walk::DiscardWalkError) -> Error {
        Error::new(e.errno(), e.to_string())
    }
}

impl From<crate::sys::uffd::UffdError> for Error {
    fn from(e: crate::sys::uffd::UffdError) -> Error {
        Error::new(e.errno(), e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
