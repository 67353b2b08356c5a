//! The end-to-end postcopy demo (`postcopy-migrate`) and its KVM guest harness.

pub mod checksum;
pub mod dest;
pub mod kvm;
pub mod latency_split;
pub mod memory;
pub mod proto;
pub mod push;
pub mod recovery;
pub mod sched;
pub mod sigbus;
pub mod source;
pub mod workload;
