//! postcopy-ram: postcopy live migration of guest RAM on Linux userfaultfd.
//!
//! The safe Rust core lives in the modules below; [`ffi`] is a thin C ABI over it that is
//! call-compatible with QEMU's `migration/postcopy-ram.c`.

pub mod block;
pub mod discard;
pub mod discard_walk;
pub mod error;
pub mod fault;
pub mod incoming;
pub mod logging;
pub mod mapping;
pub mod return_path;
pub mod source;
pub mod state;
pub mod stats;
pub mod uffd;
pub mod wire;

pub mod ffi;

pub use block::{Backing, BlockName, RamBlock};
pub use error::{Error, Result};
pub use fault::WaitStrategy;
pub use incoming::{
    check_host_support, Incoming, IncomingConfig, IncomingHooks, Placement, RunPlacement,
};
pub use state::State;
pub use stats::Stats;
