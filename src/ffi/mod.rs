//! The C ABI: thin `extern "C"` wrappers over the safe core. No logic of its own.
//!
//! Conventions: 0 or a negative errno, `false`, or NULL on failure, each failure logged as
//! one line naming the cause; panics never cross the boundary ([`guard`]).
//!
//! The exports are safe `extern "C"` functions that dereference the pointers C hands them:
//! their validity is the contract the header documents, checked for NULL here, so
//! clippy's `not_unsafe_ptr_arg_deref` does not apply to this module.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod guard;
pub mod incoming;
pub mod misc;
pub mod source;
pub mod state;
pub mod types;
mod wire;

pub(crate) use guard::panic_message as panic_text;
