//! Dropping pages on the destination, so that the next touch faults.

use std::io;

use crate::destination::block::{Backing, RamBlock};
use crate::error::{Error, Result};

/// Drops `[start, start+length)` (bytes into `block`) the way its backing requires, as
/// QEMU's `ram_block_discard_range` does:
///
/// | block kind | how | kernel |
/// |---|---|---|
/// | private anonymous (host pages) | `MADV_DONTNEED` | any |
/// | shared anonymous (shmem, or hugetlb with `MAP_HUGETLB`) | `MADV_REMOVE` | 4.3 for hugetlb |
/// | fd-backed, host pages (memfd, shmem file) | `fallocate(PUNCH_HOLE\|KEEP_SIZE)`, plus `MADV_DONTNEED` when mapped private | any |
/// | fd-backed hugetlbfs (hugetlbfs file, `MFD_HUGETLB` memfd), shared or private | `fallocate(PUNCH_HOLE\|KEEP_SIZE)` only: it unmaps the huge pages from every mapping, private copies included | 4.3 |
/// | private anonymous hugetlb (`MAP_PRIVATE\|MAP_ANONYMOUS\|MAP_HUGETLB`) | `MADV_DONTNEED` (no file to punch) | 5.18 |
///
/// The range must already have been checked against the block (see [`check_range`]).
pub fn drop_range(block: &RamBlock, start: u64, length: u64) -> Result<()> {
    let addr = block.host + start as usize;
    let len = length as usize;
    let madvise = |advice: libc::c_int, what: &str| -> Result<()> {
        // SAFETY: the range lies inside the block, which the hypervisor owns and described to
        // us as guest RAM to be managed; dropping its pages is exactly what it asked for.
        if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
            return Err(Error::os(
                &io::Error::last_os_error(),
                format_args!(
                    "discard {} [{start:#x}, +{length:#x}): madvise({what})",
                    block.name
                ),
            ));
        }
        Ok(())
    };
    match block.backing {
        Backing::Anonymous { shared: false } => madvise(libc::MADV_DONTNEED, "MADV_DONTNEED"),
        Backing::Anonymous { shared: true } => madvise(libc::MADV_REMOVE, "MADV_REMOVE"),
        Backing::File { fd, offset, shared } => {
            // SAFETY: fallocate on the hypervisor's descriptor for the block's file range;
            // it touches no memory of this process directly.
            let rc = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (offset + start) as libc::off_t,
                    length as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(Error::os(
                    &io::Error::last_os_error(),
                    format_args!(
                        "discard {} [{start:#x}, +{length:#x}): fallocate(PUNCH_HOLE) on fd {fd}",
                        block.name
                    ),
                ));
            }
            // Punching a hugetlbfs hole unmaps the huge pages from every mapping of the
            // file, private copies included; MADV_DONTNEED on hugetlb needs Linux 5.18.
            let huge = block.page_size != super::block::host_page_size();
            if shared || huge {
                Ok(())
            } else {
                madvise(libc::MADV_DONTNEED, "MADV_DONTNEED")
            }
        }
    }
}

/// Checks that `[start, start+length)` is aligned to the block's page size at both ends
/// and inside the block (checked arithmetic: `start + length` may not wrap). An empty range
/// passes when its start is aligned and at most the block length (QEMU 2.6-2.9 sources
/// send `(block_length, 0)`); callers skip it.
pub fn check_range(block: &RamBlock, start: u64, length: u64) -> Result<()> {
    let end = start.checked_add(length);
    if start % block.page_size != 0 || length % block.page_size != 0 {
        return Err(Error::invalid(format!(
            "discard {} [{start:#x}, +{length:#x}): not aligned to the block page size {:#x}",
            block.name, block.page_size
        )));
    }
    match end {
        Some(end) if end <= block.length => Ok(()),
        _ => Err(Error::invalid(format!(
            "discard {} [{start:#x}, +{length:#x}): past the block end {:#x}",
            block.name, block.length
        ))),
    }
}
