//! Thin safe wrappers over the kernel: userfaultfd and anonymous mappings.

pub mod mapping;
mod raw_ioctl;
pub mod uffd;
