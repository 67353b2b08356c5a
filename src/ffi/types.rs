//! C-visible types shared by the exports.

use std::ffi::{c_char, c_int, c_void};

/// Postcopy state of the destination, as QEMU's `PostcopyState`: one of the
/// `POSTCOPY_INCOMING_*` values.
pub type PostcopyState = u32;

/// The values of [`PostcopyState`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PostcopyStateValue {
    /// No postcopy migration in progress.
    POSTCOPY_INCOMING_NONE = 0,
    /// Postcopy advised: RAM discarded by `postcopy_ram_incoming_init`; precopy pages may arrive.
    POSTCOPY_INCOMING_ADVISE = 1,
    /// Discard commands are being applied (`postcopy_ram_prepare_discard` was called).
    POSTCOPY_INCOMING_DISCARD = 2,
    /// RAM registered with userfaultfd, fault thread running (`postcopy_ram_enable_notify`).
    POSTCOPY_INCOMING_LISTENING = 3,
    /// The guest runs on the destination (only reachable from LISTENING).
    POSTCOPY_INCOMING_RUNNING = 4,
    /// Postcopy ended (`postcopy_ram_incoming_cleanup`).
    POSTCOPY_INCOMING_END = 5,
}

/// One guest RAM block, as the hypervisor describes it to the library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRamBlock {
    /// The block's id (QEMU's idstr): NUL-terminated, 1 to 255 bytes. Copied by the library.
    pub name: *const c_char,
    /// Host address of the block's first byte, aligned to `page_size`.
    pub host: *mut c_void,
    /// Offset of the block in the guest RAM address space (QEMU's ram_addr_t offset).
    pub offset: u64,
    /// Length in bytes: a non-zero multiple of `page_size` (other lengths are refused).
    pub length: u64,
    /// Page size backing the block: the host page size, or the huge page size (2 MiB...).
    pub page_size: u64,
    /// File descriptor the block is mapped from (memfd, hugetlbfs file), or -1 for
    /// anonymous memory (including MAP_HUGETLB). It must stay open while the block is used.
    pub fd: c_int,
    /// File offset of the block's first byte (ignored when `fd` is -1).
    pub fd_offset: u64,
    /// Whether the block is mapped MAP_SHARED.
    pub shared: bool,
}

/// Visitor the library passes to `PostcopyIncomingOps::foreach_ram_block`: call it once per
/// block with the block's description (valid during the call) and the `ctx` received. It
/// returns 0, or a negative errno when the block is refused: then stop and return that value.
pub type PostcopyRamBlockVisitor =
    unsafe extern "C" fn(block: *const PostcopyRamBlock, ctx: *mut c_void) -> c_int;

/// Counters of a destination (`postcopy_incoming_get_stats`). Each counter is updated
/// right after the event it counts, so while postcopy runs a woken thread may read them a
/// step behind (a page it saw placed not yet in `pages_placed`); after
/// `postcopy_ram_incoming_cleanup`, which joins the fault thread, they are final.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PostcopyStats {
    /// Page-fault messages read from the userfaultfd.
    pub faults: u64,
    /// Page requests passed to `request_page` (failed ones included, see `request_errors`).
    pub requests: u64,
    /// Faults on a page already requested and not yet placed (no new request).
    pub duplicate_faults: u64,
    /// Faults on a page placed after the fault was queued (no request).
    pub late_faults: u64,
    /// Faults outside every block (logged; the fault thread keeps serving).
    pub faults_outside: u64,
    /// Requests whose callback returned an error.
    pub request_errors: u64,
    /// Pages placed with data.
    pub pages_placed: u64,
    /// Pages placed as zero.
    pub zero_pages_placed: u64,
    /// Placements that found the page already present (-EEXIST; waiters woken).
    pub already_present: u64,
    /// userfaultfd messages other than page faults.
    pub unexpected_events: u64,
    /// errno (positive) of the last failed page request, 0 if none.
    pub last_request_errno: i32,
}
