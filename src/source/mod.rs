//! The source side: discard batching into QEMU commands, and the discard walk over the
//! dirty bitmap.

pub mod discard_batch;
pub mod discard_sender;
pub mod discard_walk;

pub use discard_batch::{DiscardBatch, Source, SourceHooks};
pub use discard_sender::DiscardCommandWriter;
