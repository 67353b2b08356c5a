//! postcopy-ram: postcopy live migration of guest RAM on Linux userfaultfd.
//!
//! The safe Rust core is grouped by role: `destination` (the incoming migration, fault
//! thread, placement, discards), `source` (discard batching and the discard walk), `wire`
//! (QEMU's byte formats) and `sys` (userfaultfd and mappings). `ffi`, behind the default
//! `capi` feature, is a thin C ABI over it.

/// cbindgen:ignore
pub mod destination;
/// cbindgen:ignore
pub mod error;
/// cbindgen:ignore
pub mod panic;
/// cbindgen:ignore
pub mod source;
/// cbindgen:ignore
pub mod state;
pub mod stats;
/// cbindgen:ignore
pub mod sys;
/// cbindgen:ignore
pub mod wire;

#[cfg(feature = "capi")]
/// cbindgen:ignore
pub mod logging;

#[cfg(feature = "capi")]
pub mod ffi;

// Paths kept for existing users (the demo, the fuzz targets).
pub use source::discard_walk;

pub use destination::block::{Backing, BlockName, RamBlock};
pub use destination::blocktime::BlocktimeReport;
pub use destination::fault_thread::{FaultThreadFailure, WaitStrategy};
pub use destination::incoming::{
    check_host_support, Incoming, IncomingConfig, IncomingHooks, Placement, RunPlacement,
};
pub use destination::recovery::AbortOutcome;
pub use error::{Error, Result};
pub use state::State;
pub use stats::Stats;
