//! Thin safe wrappers over the kernel: userfaultfd and anonymous mappings.

pub mod mapping;
pub mod uffd;
