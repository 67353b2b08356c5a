//! The C ABI: thin `extern "C"` conversions over the safe core, behind the `capi` feature.
//!
//! Every export is written the same way: `ffi_call!` (in `ret`) runs a body returning
//! `Result<T, Error>` under the panic guard, and converts the result to the C value in one
//! place (0 or a negative errno, `false`, or NULL), logging a failure once as
//! "{function}: {error}". Arguments go through the checked helpers of `args`.
//!
//! The exports are safe `extern "C"` functions that dereference the pointers C hands them:
//! their validity is the contract the header documents, checked for NULL here, so
//! clippy's `not_unsafe_ptr_arg_deref` does not apply to this module.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod args;
pub mod incoming;
pub mod incoming_ops;
pub mod misc;
pub mod placement;
pub mod recovery;
pub(crate) mod ret;
pub mod source;
pub mod state;
pub mod types;
pub mod wire;
pub mod wire_types;

/// cbindgen:ignore
#[cfg(feature = "seed-abi")]
pub mod seed;
