//! The host check's per-block part: every kind of block that enable_notify will register
//! is tried on a test mapping of the same kind (same file, offset and sharing; same huge
//! page size), so that a block the kernel cannot register for missing-page faults (a
//! regular-file mapping, say) is found before postcopy starts, not at LISTEN after the
//! source has stopped the guest. The guest's own memory is not touched or registered.

use super::block::{host_page_size, Backing, RamBlock};
use crate::error::{Error, Result};
use crate::sys::uffd::{ioctl_bit, Uffd};

/// `MAP_HUGE_SHIFT`: where mmap takes log2 of the huge page size.
const MAP_HUGE_SHIFT: u32 = 26;

/// One page of the same kind as `block`, mapped without reserving memory.
struct TestPage {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for TestPage {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns, unused after drop.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn map_like(block: &RamBlock) -> std::io::Result<TestPage> {
    let len = block.page_size as usize;
    let huge = block.page_size != host_page_size();
    let (share, fd, offset) = match block.backing {
        Backing::Anonymous { shared } => (shared, -1, 0),
        Backing::File { fd, offset, shared } => (shared, fd, offset),
    };
    let mut flags = libc::MAP_NORESERVE
        | if share {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    if fd < 0 {
        flags |= libc::MAP_ANONYMOUS;
        if huge {
            flags |= libc::MAP_HUGETLB
                | ((block.page_size.trailing_zeros() as libc::c_int) << MAP_HUGE_SHIFT);
        }
    }
    // SAFETY: a new mapping at a kernel-chosen address (of the hypervisor's descriptor when
    // the block is fd-backed, read-only, never touched): no existing memory changes.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            flags,
            fd,
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TestPage { addr, len })
}

/// Registers a test page of `block`'s kind on `uffd` for missing-page faults and
/// unregisters it; fails, naming the block, when that is refused or UFFDIO_COPY is not
/// offered there.
pub(crate) fn check_block_kind(uffd: &Uffd, block: &RamBlock) -> Result<()> {
    let page = map_like(block).map_err(|e| {
        Error::os(
            &e,
            format_args!(
                "host check: mapping a test page like RAM block {}",
                block.name
            ),
        )
    })?;
    let ioctls = uffd
        .register_missing(page.addr as usize, page.len)
        .map_err(|e| {
            Error::os(
                &e,
                format_args!(
                    "host check: RAM block {} ({:?}) cannot be registered with userfaultfd \
                     (UFFDIO_REGISTER of a test page of the same kind)",
                    block.name, block.backing
                ),
            )
        })?;
    let _ = uffd.unregister(page.addr as usize, page.len);
    let wanted = ioctl_bit::WAKE | ioctl_bit::COPY;
    if ioctls & wanted != wanted {
        return Err(Error::new(
            libc::ENOTSUP,
            format!(
                "host check: RAM block {}: userfaultfd offers no UFFDIO_COPY/WAKE there (ioctls {ioctls:#x})",
                block.name
            ),
        ));
    }
    Ok(())
}
