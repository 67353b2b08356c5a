//! The C ABI: thin `extern "C"` wrappers over the safe core. No logic of its own.
//!
//! Conventions: 0 or a negative errno, `false`, or NULL on failure, each failure logged as
//! one line naming the cause; panics never cross the boundary ([`guard`]).

mod guard;
pub mod incoming;
pub mod misc;
pub mod source;
pub mod state;
pub mod types;
mod wire;

pub(crate) use guard::panic_message as panic_text;
