//! Helpers for the end-to-end postcopy demo: a tiny KVM guest harness.
pub mod kvm;
