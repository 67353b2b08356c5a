//! What the host must offer for postcopy: the side-effect-free support check, the
//! userfaultfd features blocks need, and the `ram_pages` check (the default mlock policy is
//! in mlock.rs).

use super::block::{host_page_size, Backing, BlockTable, RamBlock};
use crate::error::{Error, Result};
use crate::sys::mapping::AnonMapping;
use crate::sys::uffd::{self, feature, ioctl_bit, Uffd};

/// Refuses `ram_pages` (non-zero) smaller than the end of some block in the guest's RAM
/// address space (`offset + length`, in target pages rounded up). Checked arithmetic: the
/// offsets and `ram_pages` come from the caller.
pub(super) fn check_ram_pages(
    table: &BlockTable,
    ram_pages: usize,
    target_page_size: u64,
) -> Result<()> {
    if ram_pages == 0 {
        return Ok(());
    }
    let limit = (ram_pages as u64).saturating_mul(target_page_size);
    for e in table.entries() {
        let b = &e.block;
        let end = b.offset.checked_add(b.length);
        if !end.is_some_and(|end| end <= limit) {
            return Err(Error::invalid(format!(
                "incoming_init: RAM block {} ends at RAM offset {:#x} + {:#x}, past ram_pages {ram_pages} ({:#x} bytes of target pages)",
                b.name, b.offset, b.length, limit
            )));
        }
    }
    Ok(())
}

/// The userfaultfd features blocks of these kinds need.
pub(super) fn features_needed(table: &BlockTable) -> u64 {
    let host = host_page_size();
    table.entries().iter().fold(0, |acc, e| {
        let b = &e.block;
        let huge = b.page_size != host;
        let shmem = !huge
            && matches!(
                b.backing,
                Backing::File { .. } | Backing::Anonymous { shared: true }
            );
        acc | if huge { feature::MISSING_HUGETLBFS } else { 0 }
            | if shmem { feature::MISSING_SHMEM } else { 0 }
    })
}

pub(super) fn feature_names(bits: u64) -> String {
    let mut names = Vec::new();
    if bits & feature::MISSING_HUGETLBFS != 0 {
        names.push("UFFD_FEATURE_MISSING_HUGETLBFS (huge-page blocks)");
    }
    if bits & feature::MISSING_SHMEM != 0 {
        names.push("UFFD_FEATURE_MISSING_SHMEM (shared-memory blocks)");
    }
    names.join(", ")
}

/// Checks that this host can do postcopy for `blocks` with `target_page_size`, without side
/// effects: the target page is not larger than the host page; userfaultfd opens and
/// handshakes; the features the blocks need (huge pages, shared memory) are there; an
/// anonymous test area registers with WAKE, COPY and ZEROPAGE offered; and a test page of
/// each block's kind (same file, offset, sharing and page size; never the guest's memory)
/// registers with WAKE and COPY offered, so that a block the kernel cannot register (a
/// regular-file mapping, say) is refused here rather than at enable_notify.
pub fn check_host_support(blocks: Vec<RamBlock>, target_page_size: u64) -> Result<()> {
    let host = host_page_size();
    if target_page_size == 0 || !target_page_size.is_power_of_two() || target_page_size > host {
        return Err(Error::invalid(format!(
            "target page size {target_page_size} is not a power of two no bigger than the host page size {host}"
        )));
    }
    let table = BlockTable::new(blocks)?;
    let caps = uffd::probe()?;
    let missing = features_needed(&table) & !caps.features;
    if missing != 0 {
        return Err(Error::new(
            libc::ENOTSUP,
            format!(
                "userfaultfd on this kernel lacks {}",
                feature_names(missing)
            ),
        ));
    }
    let uffd = Uffd::open(features_needed(&table))?;
    let area = AnonMapping::new(host as usize).map_err(|e| Error::os(&e, "mapping a test page"))?;
    let ioctls = uffd
        .register_missing(area.as_ptr() as usize, area.len())
        .map_err(|e| Error::os(&e, "UFFDIO_REGISTER of a test page"))?;
    uffd.unregister(area.as_ptr() as usize, area.len())
        .map_err(|e| Error::os(&e, "UFFDIO_UNREGISTER of a test page"))?;
    let wanted = ioctl_bit::WAKE | ioctl_bit::COPY | ioctl_bit::ZEROPAGE;
    if ioctls & wanted != wanted {
        return Err(Error::new(
            libc::ENOTSUP,
            format!(
                "userfaultfd registration lacks ioctls {:#x} (WAKE/COPY/ZEROPAGE)",
                wanted & !ioctls
            ),
        ));
    }
    for entry in table.entries() {
        super::block_probe::check_block_kind(&uffd, &entry.block)?;
    }
    Ok(())
}
