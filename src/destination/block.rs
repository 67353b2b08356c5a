//! RAM blocks and the sorted block table the fault thread looks faults up in.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::Error;

/// What backs a RAM block's memory; decides how its pages are discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory (`MAP_ANONYMOUS`, including `MAP_HUGETLB`). `shared` for
    /// `MAP_SHARED|MAP_ANONYMOUS` (shmem).
    Anonymous {
        /// Mapped `MAP_SHARED`.
        shared: bool,
    },
    /// Memory mapped from a file descriptor (memfd, hugetlbfs file, shmem file).
    File {
        /// The descriptor, owned by the hypervisor and kept open while the block is in use.
        fd: RawFd,
        /// File offset of the block's first byte.
        offset: u64,
        /// Mapped `MAP_SHARED`.
        shared: bool,
    },
}

/// A guest RAM block, as the hypervisor describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    /// The block's id string (QEMU's `idstr`): 1 to 255 bytes, no NUL.
    pub name: String,
    /// Host virtual address of the block's first byte.
    pub host: usize,
    /// Offset of the block in the guest's RAM address space (`ram_addr_t`).
    pub offset: u64,
    /// Length in bytes: a non-zero multiple of `page_size`.
    pub length: u64,
    /// Host page size backing the block: the system page size, or a huge page size.
    pub page_size: u64,
    /// What backs it.
    pub backing: Backing,
    /// The hypervisor's own value for this block (QEMU: its `RAMBlock *`), handed back by
    /// [`crate::IncomingHooks::request_page_in`] (and to C callbacks). 0 if unused.
    pub opaque: usize,
}

/// A block's name in both forms, so that the fault thread never allocates.
#[derive(Debug)]
pub struct BlockName {
    text: String,
    c_text: CString,
}

impl BlockName {
    /// `text` in both forms; `None` when it holds a NUL.
    pub(crate) fn new(text: &str) -> Option<BlockName> {
        Some(BlockName {
            c_text: CString::new(text).ok()?,
            text: text.to_owned(),
        })
    }

    /// As a Rust string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// As a NUL-terminated C string.
    pub fn as_c_str(&self) -> &CStr {
        &self.c_text
    }
}

/// One bit a host page, set and tested atomically from any thread.
#[derive(Debug)]
pub(crate) struct PageBitmap(Box<[AtomicU64]>);

impl PageBitmap {
    fn new(pages: u64) -> PageBitmap {
        PageBitmap((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    // The fault thread sets "requested" then tests "received"; a placer sets "received"
    // then tests "requested": sequentially consistent on both sides, so at least one of
    // them sees the other's bit and a requested bit is never left behind on a placed page.

    // Indexes are bounds-checked: a page past the bitmap reads as clear and is never set,
    // whatever the caller's offset (no panic, no wrap).

    fn word(&self, page: u64) -> Option<&AtomicU64> {
        self.0.get(usize::try_from(page / 64).ok()?)
    }

    /// Sets the bit; returns whether it was already set (false past the end: nothing set).
    pub(crate) fn test_and_set(&self, page: u64) -> bool {
        let bit = 1 << (page % 64);
        self.word(page)
            .is_some_and(|w| w.fetch_or(bit, Ordering::SeqCst) & bit != 0)
    }

    /// Clears the bit if it is set; returns whether it was (one load when clear).
    #[inline]
    pub(crate) fn take(&self, page: u64) -> bool {
        let Some(word) = self.word(page) else {
            return false;
        };
        let bit = 1 << (page % 64);
        word.load(Ordering::SeqCst) & bit != 0 && word.fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// Sets the bits of pages `[first, first+count)` (past the end: ignored).
    pub(crate) fn set_range(&self, first: u64, count: u64) {
        for page in first..first.saturating_add(count) {
            self.test_and_set(page);
        }
    }

    /// Clears the bit, with an atomic read-modify-write only when it is set (placements
    /// of pages nobody requested, the common case, then cost one load).
    pub(crate) fn clear(&self, page: u64) {
        let Some(word) = self.word(page) else {
            return;
        };
        let bit = 1 << (page % 64);
        if word.load(Ordering::SeqCst) & bit != 0 {
            word.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Clears the bits of pages `[first, first+count)`: per word, one load, and an atomic
    /// read-modify-write only where one of them is set. Words past the end are skipped.
    #[inline(always)]
    pub(crate) fn clear_range(&self, first: u64, count: u64) {
        let end = first.saturating_add(count);
        let mut p = first;
        while p < end {
            let lo = p % 64;
            let n = (64 - lo).min(end - p);
            let mask = (u64::MAX >> (64 - n)) << lo;
            let Some(word) = self.word(p) else {
                return;
            };
            if word.load(Ordering::SeqCst) & mask != 0 {
                word.fetch_and(!mask, Ordering::SeqCst);
            }
            p += n;
        }
    }

    /// The bits of word `index` (pages `64 * index ..`); 0 past the end.
    pub(crate) fn word_bits(&self, index: usize) -> u64 {
        self.0.get(index).map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// Number of words.
    pub(crate) fn words(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn clear_all(&self) {
        for word in self.0.iter() {
            word.store(0, Ordering::Release);
        }
    }
}

/// A block in the table, with its per-page tracking.
#[derive(Debug)]
pub struct BlockEntry {
    /// The block as described.
    pub block: RamBlock,
    /// Its name, ready for the page-request callback.
    pub name: BlockName,
    /// log2 of the page size.
    pub page_shift: u32,
    /// Whether UFFDIO_REGISTER advertised UFFDIO_ZEROPAGE for this block.
    pub(crate) zeropage_ok: AtomicBool,
    /// Whether UFFDIO_REGISTER advertised UFFDIO_POISON for this block.
    pub(crate) poison_ok: AtomicBool,
    /// Target pages received (placed, or marked by the host) since init.
    pub(crate) received: crate::destination::received::ReceivedMap,
    /// log2 of the target page size.
    pub target_shift: u32,
    /// Pages requested from the source and not yet placed.
    pub(crate) requested: PageBitmap,
    /// Requested pages whose placement failed (not EEXIST): the next fault on each is
    /// requested again instead of counted a duplicate, and takes the bit. A bit left on a
    /// page placed meanwhile costs at most one extra request later.
    pub(crate) retry: PageBitmap,
}

impl BlockEntry {
    /// First host address past the block.
    pub fn end(&self) -> usize {
        self.block.host + self.block.length as usize
    }

    /// Whether the host page at `offset` (bytes into the block) has been received (placed,
    /// or every target page of it marked).
    pub fn is_received(&self, offset: u64) -> bool {
        self.received.host_page_received(offset >> self.page_shift)
    }
}

/// The blocks of one migration, sorted by host address, immutable once built.
#[derive(Debug)]
pub struct BlockTable {
    entries: Vec<BlockEntry>,
    largest_page: u64,
    page_size_summary: u64,
}

fn system_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// The host's base page size.
pub fn host_page_size() -> u64 {
    use std::sync::OnceLock;
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(system_page_size)
}

impl BlockTable {
    /// Validates `blocks` and builds the table. Refused: an empty or over-long or NUL-holding
    /// name, a duplicate name, a page size that is not a power of two at least the host page
    /// size, a host address not aligned to the page size, a length that is zero or not a
    /// multiple of the page size, overlapping blocks.
    pub fn new(blocks: Vec<RamBlock>) -> Result<BlockTable, Error> {
        Self::with_target_page(blocks, 4096.min(host_page_size()))
    }

    /// As [`BlockTable::new`], with received maps in target pages of `target_page_size`:
    /// a power of two no bigger than any block's page size (EINVAL otherwise).
    pub fn with_target_page(
        mut blocks: Vec<RamBlock>,
        target_page_size: u64,
    ) -> Result<BlockTable, Error> {
        if !target_page_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "target page size {target_page_size} is not a power of two"
            )));
        }
        let target_shift = target_page_size.trailing_zeros();
        let host_page = host_page_size();
        for b in &blocks {
            if b.name.is_empty() || b.name.len() > 255 || b.name.contains('\0') {
                return Err(Error::invalid(format!(
                    "RAM block name {:?} must be 1 to 255 bytes without NUL",
                    b.name
                )));
            }
            if !b.page_size.is_power_of_two() || b.page_size < host_page {
                return Err(Error::invalid(format!(
                    "RAM block {}: page size {} is not a power of two >= the host page size {}",
                    b.name, b.page_size, host_page
                )));
            }
            if target_page_size > b.page_size {
                return Err(Error::invalid(format!(
                    "RAM block {}: target page size {target_page_size} is larger than its page size {}",
                    b.name, b.page_size
                )));
            }
            if b.host as u64 % b.page_size != 0 {
                return Err(Error::invalid(format!(
                    "RAM block {}: host address {:#x} is not aligned to its page size {}",
                    b.name, b.host, b.page_size
                )));
            }
            if b.length == 0 || b.length % b.page_size != 0 {
                return Err(Error::invalid(format!(
                    "RAM block {}: length {} is not a non-zero multiple of its page size {}",
                    b.name, b.length, b.page_size
                )));
            }
            if (b.host as u64).checked_add(b.length).is_none() {
                return Err(Error::invalid(format!(
                    "RAM block {}: address range overflows",
                    b.name
                )));
            }
            if let Backing::File { offset, .. } = b.backing {
                // Discards compute `offset + start` as an off_t: checked once here.
                if offset
                    .checked_add(b.length)
                    .map_or(true, |end| end > i64::MAX as u64)
                {
                    return Err(Error::invalid(format!(
                        "RAM block {}: file offset {offset:#x} + length {:#x} overflows off_t",
                        b.name, b.length
                    )));
                }
            }
        }
        blocks.sort_by_key(|b| b.host);
        for pair in blocks.windows(2) {
            if pair[0].host + pair[0].length as usize > pair[1].host {
                return Err(Error::invalid(format!(
                    "RAM blocks {} and {} overlap",
                    pair[0].name, pair[1].name
                )));
            }
        }
        let mut names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            return Err(Error::invalid(format!(
                "two RAM blocks are named {}",
                pair[0]
            )));
        }
        let largest_page = blocks
            .iter()
            .map(|b| b.page_size)
            .max()
            .unwrap_or(host_page);
        let page_size_summary = blocks.iter().fold(0, |acc, b| acc | b.page_size);
        let entries = blocks
            .into_iter()
            .map(|block| {
                let pages = block.length / block.page_size;
                let page_shift = block.page_size.trailing_zeros();
                BlockEntry {
                    name: BlockName::new(&block.name).expect("checked: no NUL"),
                    page_shift,
                    target_shift,
                    zeropage_ok: AtomicBool::new(false),
                    poison_ok: AtomicBool::new(false),
                    received: crate::destination::received::ReceivedMap::new(
                        block.length >> target_shift,
                        page_shift - target_shift,
                    ),
                    requested: PageBitmap::new(pages),
                    retry: PageBitmap::new(pages),
                    block,
                }
            })
            .collect();
        Ok(BlockTable {
            entries,
            largest_page,
            page_size_summary,
        })
    }

    /// The blocks, sorted by host address.
    pub fn entries(&self) -> &[BlockEntry] {
        &self.entries
    }

    /// Index of the block containing host address `addr`, by binary search.
    #[inline]
    pub fn index_of(&self, addr: usize) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.end() <= addr);
        match self.entries.get(i) {
            Some(e) if e.block.host <= addr => Some(i),
            _ => None,
        }
    }

    /// The block containing `addr`.
    #[inline]
    pub fn find(&self, addr: usize) -> Option<&BlockEntry> {
        self.index_of(addr).map(|i| &self.entries[i])
    }

    /// The block named `name`.
    pub fn by_name(&self, name: &str) -> Option<&BlockEntry> {
        self.entries.iter().find(|e| e.block.name == name)
    }

    /// The largest page size of all blocks (the host page size when there are none).
    pub fn largest_page(&self) -> u64 {
        self.largest_page
    }

    /// The OR of all block page sizes (QEMU's `ram_pagesize_summary`).
    pub fn page_size_summary(&self) -> u64 {
        self.page_size_summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(name: &str, host: usize, length: u64) -> RamBlock {
        RamBlock {
            name: name.into(),
            host,
            offset: 0,
            length,
            page_size: 4096,
            backing: Backing::Anonymous { shared: false },
            opaque: 0,
        }
    }

    #[test]
    fn lookup_finds_containing_block_only() {
        let t =
            BlockTable::new(vec![anon("b", 0x20000, 0x2000), anon("a", 0x10000, 0x1000)]).unwrap();
        assert_eq!(t.find(0x10000).unwrap().block.name, "a");
        assert_eq!(t.find(0x10fff).unwrap().block.name, "a");
        assert!(t.find(0x11000).is_none());
        assert!(t.find(0xffff).is_none());
        assert_eq!(t.find(0x21fff).unwrap().block.name, "b");
        assert!(t.find(0x22000).is_none());
    }

    #[test]
    fn refuses_bad_blocks() {
        assert!(BlockTable::new(vec![anon("a", 0x10000, 0x1800)]).is_err());
        assert!(BlockTable::new(vec![anon("a", 0x10800, 0x1000)]).is_err());
        assert!(BlockTable::new(vec![anon("", 0x10000, 0x1000)]).is_err());
        assert!(
            BlockTable::new(vec![anon("a", 0x10000, 0x2000), anon("b", 0x11000, 0x1000)]).is_err()
        );
        assert!(
            BlockTable::new(vec![anon("a", 0x10000, 0x1000), anon("a", 0x20000, 0x1000)]).is_err()
        );
        assert!(BlockTable::new(vec![anon(&"x".repeat(256), 0x10000, 0x1000)]).is_err());
    }
}
