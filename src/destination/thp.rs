//! Transparent huge pages around postcopy: off on the host-page blocks before the first
//! discard (a THP would keep discarded 4 KiB pages present, and khugepaged could collapse
//! over a hole before registration, leaving a present zero page that never faults), and
//! back on at cleanup, as QEMU's `postcopy_ram_prepare_discard` / `cleanup_range` do.
//!
//! Only what must change is changed, and only that is put back (issue 17 item 11): a range
//! already MADV_NOHUGEPAGE, or one THP cannot back anyway (no MADV_HUGEPAGE and the system
//! setting is `madvise` or `never`), is left alone; a range with MADV_HUGEPAGE gets it back
//! at cleanup. A range THP could back without a flag (setting `always`) is turned off too
//! and gets MADV_HUGEPAGE at cleanup: the kernel has no advice that clears both flags, and
//! MADV_HUGEPAGE keeps it eligible, as it was.

use parking_lot::Mutex;

use super::block::{host_page_size, BlockTable};
use super::vma::parts_of;

/// One part of a block: its name (for the log), first byte, length.
type Part = (String, usize, usize);

/// The parts of blocks whose THP must go off before the first discard (read at init), and
/// those prepare_discard turned off (back on at cleanup).
#[derive(Debug, Default)]
pub(crate) struct ThpOff(Mutex<Parts>);

#[derive(Debug, Default)]
struct Parts {
    planned: Vec<Part>,
    off: Vec<Part>,
}

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
    /// Reads (from /proc/self/smaps) which parts of the host-page blocks of `table` THP
    /// could back: those with MADV_HUGEPAGE, and those without MADV_NOHUGEPAGE that the
    /// kernel reports THP-eligible. Called by init after its discard, so that the page
    /// tables smaps walks are empty and prepare_discard (in the source's downtime) reads
    /// nothing. Where smaps cannot be read, every host-page block is planned (logged).
    pub(crate) fn plan(&self, table: &BlockTable) {
        let blocks: Vec<_> = table
            .entries()
            .iter()
            .map(|e| &e.block)
            .filter(|b| b.page_size == host_page_size())
            .collect();
        let ranges: Vec<(usize, usize)> =
            blocks.iter().map(|b| (b.host, b.length as usize)).collect();
        let name_of = |addr: usize| {
            blocks
                .iter()
                .find(|b| b.host <= addr && addr < b.host + b.length as usize)
                .map_or_else(String::new, |b| b.name.clone())
        };
        let planned = match parts_of(&ranges) {
            Ok(parts) => parts
                .into_iter()
                .filter(|p| p.hugepage || (p.thp_eligible && !p.nohugepage))
                .map(|p| (name_of(p.start), p.start, p.len()))
                .collect(),
            Err(e) => {
                log::warn!("reading /proc/self/smaps for the THP state of the RAM blocks: {e}; THP goes off on every block and MADV_HUGEPAGE is set on them at cleanup");
                blocks
                    .iter()
                    .map(|b| (b.name.clone(), b.host, b.length as usize))
                    .collect()
            }
        };
        self.0.lock().planned = planned;
    }

    /// MADV_NOHUGEPAGE on every part [`ThpOff::plan`] found, once. A kernel without THP
    /// refuses it (EINVAL); there is then nothing to turn off, which is logged at debug.
    pub(crate) fn turn_off(&self) {
        let mut parts = self.0.lock();
        let Parts { planned, off } = &mut *parts;
        for (name, host, len) in planned.drain(..) {
            match madvise(host, len, libc::MADV_NOHUGEPAGE) {
                Ok(()) => off.push((name, host, len)),
                Err(e) => log::debug!("MADV_NOHUGEPAGE on RAM block {name}: {e}"),
            }
        }
    }

    /// MADV_HUGEPAGE on every part [`ThpOff::turn_off`] turned THP off for (QEMU sets
    /// MADV_HUGEPAGE on its guest RAM; it does the same at cleanup), nothing elsewhere.
    /// Failures are logged.
    pub(crate) fn restore(&self) {
        let mut parts = self.0.lock();
        parts.planned.clear();
        for (name, host, len) in parts.off.drain(..) {
            if let Err(e) = madvise(host, len, libc::MADV_HUGEPAGE) {
                log::error!("incoming_cleanup: MADV_HUGEPAGE on RAM block {name}: {e}");
            }
        }
    }
}
