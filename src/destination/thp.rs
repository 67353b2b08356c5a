//! Transparent huge pages around postcopy: off on the host-page blocks before the first
//! discard (a THP would keep discarded 4 KiB pages present, and khugepaged could collapse
//! over a hole before registration, leaving a present zero page that never faults), and
//! back on at cleanup, as QEMU's `postcopy_ram_prepare_discard` / `cleanup_range` do.

use parking_lot::Mutex;

use super::block::{host_page_size, BlockTable};

/// The blocks this library turned THP off for, to turn it back on at cleanup.
#[derive(Debug, Default)]
pub(crate) struct ThpOff(Mutex<Vec<(String, usize, usize)>>);

fn madvise(addr: usize, len: usize, advice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: MADV_(NO)HUGEPAGE only changes how the kernel backs the range (guest RAM the
    // hypervisor described as a block); contents and mappings stay, so no reference into
    // the range is invalidated.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl ThpOff {
    /// MADV_NOHUGEPAGE on every host-page block of `table` not yet done. A kernel without
    /// THP refuses it (EINVAL); there is then nothing to turn off, which is logged at debug.
    pub(crate) fn turn_off(&self, table: &BlockTable) {
        let mut done = self.0.lock();
        for entry in table.entries() {
            let b = &entry.block;
            if b.page_size != host_page_size() || done.iter().any(|(_, host, _)| *host == b.host) {
                continue;
            }
            match madvise(b.host, b.length as usize, libc::MADV_NOHUGEPAGE) {
                Ok(()) => done.push((b.name.clone(), b.host, b.length as usize)),
                Err(e) => log::debug!("MADV_NOHUGEPAGE on RAM block {}: {e}", b.name),
            }
        }
    }

    /// MADV_HUGEPAGE on every block [`ThpOff::turn_off`] turned THP off for (QEMU sets
    /// MADV_HUGEPAGE on its guest RAM; it does the same at cleanup). Failures are logged.
    pub(crate) fn restore(&self) {
        for (name, host, len) in self.0.lock().drain(..) {
            if let Err(e) = madvise(host, len, libc::MADV_HUGEPAGE) {
                log::error!("incoming_cleanup: MADV_HUGEPAGE on RAM block {name}: {e}");
            }
        }
    }
}
