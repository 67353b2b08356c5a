//! The destination side: the incoming migration, its RAM blocks, page placement, the
//! fault thread, discards, and the default return-path sender.

mod active;
pub mod block;
mod block_probe;
pub mod blocktime;
pub mod discard;
pub mod fault_thread;
mod fault_thread_failure;
pub mod host_support;
pub mod incoming;
mod listen;
mod mlock;
mod pending;
pub mod placement;
pub mod received;
pub mod recovery;
mod registration;
pub mod return_path_sender;
pub(crate) mod thp;
mod vma;
