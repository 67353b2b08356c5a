//! C exports of the destination side (QEMU's postcopy-ram.c incoming functions).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::guard;
use super::types::{PostcopyRamBlock, PostcopyRamBlockVisitor, PostcopyState, PostcopyStats};
use crate::block::{Backing, BlockName, RamBlock};
use crate::error::{Error, Result};
use crate::incoming::{check_host_support, Incoming, IncomingConfig, IncomingHooks, Placement};
use crate::return_path;
use crate::state::State;
use crate::WaitStrategy;

/// Callbacks and settings of a destination, given to `postcopy_incoming_state_new` (which
/// copies the table). Every callback receives the `opaque` pointer given there.
///
/// Threads: `foreach_ram_block`, `discard_range`, `state_changed`, `shut`,
/// `balloon_inhibit` and `mlock` run on the thread that called the library function that
/// needs them. `request_page` runs on the library's fault thread ("postcopy/fault"); it may
/// call `postcopy_place_page`, `postcopy_place_page_zero`, `postcopy_place_pages*`,
/// `postcopy_incoming_get_stats` and `postcopy_state_get*`, but never
/// `postcopy_ram_incoming_cleanup`, `postcopy_ram_enable_notify` or
/// `postcopy_incoming_state_free` (they wait for the fault thread). No callback may unwind.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyIncomingOps {
    /// Required. Calls `visit(block, ctx)` once per guest RAM block and returns 0, or the
    /// first non-zero value `visit` returned, or a negative errno of its own. Called by
    /// `postcopy_ram_supported_by_host*` and `postcopy_ram_incoming_init` (which keeps a
    /// copy of the table until cleanup).
    pub foreach_ram_block: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            visit: PostcopyRamBlockVisitor,
            ctx: *mut c_void,
        ) -> c_int,
    >,
    /// Asks the source for `length` bytes at `offset` of block `block_name`
    /// (NULL: the same block as the previous successful request; the source's REQ_PAGES
    /// without id). Returns 0, or a negative errno: the failure is counted and logged and
    /// the page is requested again on its next fault. Runs on the fault thread. Required
    /// unless `write_return_path` is given.
    pub request_page: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block_name: *const c_char,
            offset: u64,
            length: u64,
        ) -> c_int,
    >,
    /// Optional. Drops `[start, start + length)` (bytes) of `block`; returns 0 or a negative
    /// errno. NULL: the library drops the pages itself (MADV_DONTNEED for private anonymous
    /// memory, MADV_REMOVE for shared anonymous, fallocate(PUNCH_HOLE|KEEP_SIZE) on `fd`
    /// for fd-backed blocks, plus MADV_DONTNEED when mapped private).
    pub discard_range: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block: *const PostcopyRamBlock,
            start: u64,
            length: u64,
        ) -> c_int,
    >,
    /// Optional. The state changed from `old_state` to `new_state`.
    pub state_changed: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            old_state: PostcopyState,
            new_state: PostcopyState,
        ),
    >,
    /// Optional. Postcopy ended (`postcopy_ram_incoming_cleanup`); `failed` tells whether
    /// something went wrong. QEMU sends the return-path SHUT message here.
    pub shut: Option<unsafe extern "C" fn(opaque: *mut c_void, failed: bool)>,
    /// Optional. `true` at enable_notify: stop ballooning (it would drop pages and cause
    /// false faults); `false` at cleanup.
    pub balloon_inhibit: Option<unsafe extern "C" fn(opaque: *mut c_void, inhibit: bool)>,
    /// Optional. `lock = false` before memory is registered, `true` at cleanup; returns 0 or
    /// a negative errno. NULL: with `enable_mlock` the library calls munlockall() and
    /// mlockall(MCL_CURRENT|MCL_FUTURE); without, nothing.
    pub mlock: Option<unsafe extern "C" fn(opaque: *mut c_void, lock: bool) -> c_int>,
    /// Optional. Writes `length` bytes (one whole QEMU return-path message) to the return
    /// path; returns 0 or a negative errno. When given and `request_page` is NULL, the
    /// library sends each page request itself as REQ_PAGES_ID (block named) or REQ_PAGES;
    /// when given and `shut` is NULL, it sends SHUT at cleanup. Runs on the fault thread
    /// (requests) and on the cleanup caller's thread (SHUT).
    pub write_return_path:
        Option<unsafe extern "C" fn(opaque: *mut c_void, bytes: *const u8, length: usize) -> c_int>,
    /// The guest's target page size in bytes (discard ranges count in it); 0 means 4096.
    pub target_page_size: usize,
    /// Whether guest memory is kept mlocked outside postcopy (see `mlock`).
    pub enable_mlock: bool,
    /// 0: the fault thread sleeps in poll(2) when idle (default). N > 0: it busy-polls the
    /// userfaultfd for up to N microseconds after each fault before sleeping (lower fault
    /// latency, one core busy while faults keep coming).
    pub spin_wait_us: u32,
}

/// The destination of a postcopy migration. Opaque; create with
/// `postcopy_incoming_state_new`, free with `postcopy_incoming_state_free`.
pub struct MigrationIncomingState {
    pub(crate) incoming: Arc<Incoming>,
}

struct COps {
    ops: PostcopyIncomingOps,
    opaque: *mut c_void,
}

// SAFETY: the header requires the callbacks and the opaque pointer to be usable from the
// library's threads (the fault thread and the caller's threads); the library only calls them.
unsafe impl Send for COps {}
// SAFETY: as above.
unsafe impl Sync for COps {}

fn errno_of(rc: c_int) -> i32 {
    if rc < 0 {
        -rc
    } else {
        libc::EIO
    }
}

fn c_block(block: &RamBlock, name: &CStr) -> PostcopyRamBlock {
    let (fd, fd_offset, shared) = match block.backing {
        Backing::Anonymous { shared } => (-1, 0, shared),
        Backing::File { fd, offset, shared } => (fd, offset, shared),
    };
    PostcopyRamBlock {
        name: name.as_ptr(),
        host: block.host as *mut c_void,
        offset: block.offset,
        length: block.length,
        page_size: block.page_size,
        fd,
        fd_offset,
        shared,
    }
}

struct Collector {
    blocks: Vec<RamBlock>,
    error: Option<Error>,
}

fn rust_block(b: &PostcopyRamBlock) -> Result<RamBlock> {
    if b.name.is_null() {
        return Err(Error::invalid("a RAM block has a NULL name"));
    }
    // SAFETY: the visitor contract says `name` is a NUL-terminated string valid during the call.
    let name = unsafe { CStr::from_ptr(b.name) }
        .to_str()
        .map_err(|_| Error::invalid("a RAM block name is not UTF-8"))?
        .to_owned();
    let backing = if b.fd >= 0 {
        Backing::File {
            fd: b.fd,
            offset: b.fd_offset,
            shared: b.shared,
        }
    } else {
        Backing::Anonymous { shared: b.shared }
    };
    Ok(RamBlock {
        name,
        host: b.host as usize,
        offset: b.offset,
        length: b.length,
        page_size: b.page_size,
        backing,
    })
}

unsafe extern "C" fn collect_block(block: *const PostcopyRamBlock, ctx: *mut c_void) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the Collector passed by `ram_blocks` below, alive for the call.
        let collector = unsafe { &mut *(ctx as *mut Collector) };
        if block.is_null() {
            collector
                .error
                .get_or_insert(Error::invalid("foreach_ram_block passed a NULL block"));
            return -libc::EINVAL;
        }
        // SAFETY: checked non-NULL; the contract makes it valid during the call.
        match rust_block(unsafe { &*block }) {
            Ok(b) => {
                collector.blocks.push(b);
                0
            }
            Err(e) => {
                let rc = -e.errno();
                collector.error.get_or_insert(e);
                rc
            }
        }
    }));
    outcome.unwrap_or(-libc::EFAULT)
}

impl COps {
    fn write_return_path(&self, bytes: &[u8]) -> std::result::Result<(), i32> {
        let Some(write) = self.ops.write_return_path else {
            return Err(libc::ENOSYS);
        };
        // SAFETY: the host's callback with `bytes.len()` initialised bytes.
        match unsafe { write(self.opaque, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            rc => Err(errno_of(rc)),
        }
    }
}

impl IncomingHooks for COps {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        let Some(foreach) = self.ops.foreach_ram_block else {
            return Err(Error::invalid(
                "PostcopyIncomingOps.foreach_ram_block is NULL",
            ));
        };
        let mut collector = Collector {
            blocks: Vec::new(),
            error: None,
        };
        // SAFETY: calling the host's iterator with our visitor and a context that outlives it.
        let rc = unsafe {
            foreach(
                self.opaque,
                collect_block,
                (&mut collector as *mut Collector).cast(),
            )
        };
        if let Some(e) = collector.error {
            return Err(e);
        }
        if rc != 0 {
            return Err(Error::new(
                errno_of(rc),
                format!("foreach_ram_block returned {rc}"),
            ));
        }
        Ok(collector.blocks)
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        let Some(request) = self.ops.request_page else {
            let mut buf = [0u8; return_path::MAX_MESSAGE];
            let len = return_path::encode_page_request(&mut buf, block, offset, length)?;
            return self.write_return_path(&buf[..len]);
        };
        let name = block.map_or(std::ptr::null(), |b| b.as_c_str().as_ptr());
        // SAFETY: the host's callback, with a name string that lives as long as the table.
        match unsafe { request(self.opaque, name, offset, length) } {
            0 => Ok(()),
            rc => Err(errno_of(rc)),
        }
    }

    fn discard_range(&self, block: &RamBlock, start: u64, length: u64) -> Option<Result<()>> {
        let discard = self.ops.discard_range?;
        let name = match std::ffi::CString::new(block.name.as_str()) {
            Ok(name) => name,
            Err(_) => return Some(Err(Error::invalid("block name holds NUL"))),
        };
        let c = c_block(block, &name);
        // SAFETY: the host's callback, with a block description valid for the call.
        match unsafe { discard(self.opaque, &c, start, length) } {
            0 => Some(Ok(())),
            rc => Some(Err(Error::new(
                errno_of(rc),
                format!(
                    "discard_range callback for {} [{start:#x}, +{length:#x}) returned {rc}",
                    block.name
                ),
            ))),
        }
    }

    fn state_changed(&self, old: State, new: State) {
        if let Some(cb) = self.ops.state_changed {
            // SAFETY: the host's callback.
            unsafe { cb(self.opaque, old as u32, new as u32) };
        }
    }

    fn shut(&self, failed: bool) {
        if let Some(cb) = self.ops.shut {
            // SAFETY: the host's callback.
            unsafe { cb(self.opaque, failed) };
        } else if self.ops.write_return_path.is_some() {
            let mut buf = [0u8; return_path::MAX_MESSAGE];
            let sent = return_path::encode_shut(&mut buf, failed)
                .and_then(|len| self.write_return_path(&buf[..len]));
            if let Err(errno) = sent {
                log::error!(
                    "sending SHUT on the return path failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        }
    }

    fn balloon_inhibit(&self, inhibit: bool) {
        if let Some(cb) = self.ops.balloon_inhibit {
            // SAFETY: the host's callback.
            unsafe { cb(self.opaque, inhibit) };
        }
    }

    fn mlock(&self, lock: bool) -> Option<Result<()>> {
        let cb = self.ops.mlock?;
        // SAFETY: the host's callback.
        match unsafe { cb(self.opaque, lock) } {
            0 => Some(Ok(())),
            rc => Some(Err(Error::new(
                errno_of(rc),
                format!("mlock callback ({lock}) returned {rc}"),
            ))),
        }
    }
}

/// Live destinations, newest last: the handle-less `postcopy_state_get/set` and
/// `postcopy_ram_supported_by_host` act on the newest one.
static LIVE: Mutex<Vec<Arc<Incoming>>> = Mutex::new(Vec::new());

pub(crate) fn current() -> Option<Arc<Incoming>> {
    LIVE.lock().last().cloned()
}

/// Logs `e` for `what` and returns its negated errno.
pub(crate) fn fail(what: &str, e: Error) -> c_int {
    log::error!("{what}: {e}");
    -e.errno()
}

/// Resolves a handle, logging NULL.
pub(crate) fn handle<'a>(
    what: &str,
    mis: *const MigrationIncomingState,
) -> Option<&'a MigrationIncomingState> {
    if mis.is_null() {
        log::error!("{what}: MigrationIncomingState is NULL");
        return None;
    }
    // SAFETY: non-NULL handles come from postcopy_incoming_state_new and are valid until
    // postcopy_incoming_state_free, as the header requires.
    Some(unsafe { &*mis })
}

/// Creates a destination with the callbacks in `ops` (copied) and `opaque` (passed to each
/// callback). State starts at POSTCOPY_INCOMING_NONE. Returns NULL (and logs why) when
/// `ops` is NULL, lacks `foreach_ram_block`, has neither `request_page` nor
/// `write_return_path`, or the target page size is not a power of two.
/// The newest live destination is the one the handle-less functions
/// (`postcopy_state_get`, `postcopy_state_set`, `postcopy_ram_supported_by_host`) act on.
#[no_mangle]
pub extern "C" fn postcopy_incoming_state_new(
    ops: *const PostcopyIncomingOps,
    opaque: *mut c_void,
) -> *mut MigrationIncomingState {
    guard("postcopy_incoming_state_new", || {
        if ops.is_null() {
            log::error!("postcopy_incoming_state_new: ops is NULL");
            return std::ptr::null_mut();
        }
        // SAFETY: non-NULL, points to a PostcopyIncomingOps per the header; copied here.
        let ops = unsafe { *ops };
        if ops.foreach_ram_block.is_none()
            || (ops.request_page.is_none() && ops.write_return_path.is_none())
        {
            log::error!(
                "postcopy_incoming_state_new: foreach_ram_block, and request_page or write_return_path, are required"
            );
            return std::ptr::null_mut();
        }
        let target_page_size = if ops.target_page_size == 0 {
            4096
        } else {
            ops.target_page_size as u64
        };
        if !target_page_size.is_power_of_two() {
            log::error!("postcopy_incoming_state_new: target_page_size {target_page_size} is not a power of two");
            return std::ptr::null_mut();
        }
        let config = IncomingConfig {
            target_page_size,
            enable_mlock: ops.enable_mlock,
            wait: match ops.spin_wait_us {
                0 => WaitStrategy::Block,
                us => WaitStrategy::Spin(Duration::from_micros(us as u64)),
            },
        };
        let incoming = Arc::new(Incoming::new(Arc::new(COps { ops, opaque }), config));
        LIVE.lock().push(incoming.clone());
        Box::into_raw(Box::new(MigrationIncomingState { incoming }))
    })
}

/// Frees a destination. If postcopy was initialised and not cleaned up, cleans up first
/// (stops the fault thread, unregisters memory, closes descriptors). NULL is a no-op.
/// Must not be called from a callback.
#[no_mangle]
pub extern "C" fn postcopy_incoming_state_free(mis: *mut MigrationIncomingState) {
    guard("postcopy_incoming_state_free", || {
        if mis.is_null() {
            return;
        }
        // SAFETY: non-NULL handles come from postcopy_incoming_state_new and are freed once.
        let mis = unsafe { Box::from_raw(mis) };
        LIVE.lock().retain(|live| !Arc::ptr_eq(live, &mis.incoming));
        drop(mis);
    })
}

/// Whether this host can do postcopy for the newest live destination's RAM blocks (or,
/// with none alive, for private anonymous memory of the host page size): target page not
/// larger than the host page; userfaultfd available (through /dev/userfaultfd or the
/// syscall) with the features the blocks need (huge pages, shared memory); registration
/// offering WAKE, COPY and ZEROPAGE. Logs the exact missing piece. No side effects (unlike
/// QEMU 2.9, it does not munlockall).
#[no_mangle]
pub extern "C" fn postcopy_ram_supported_by_host() -> bool {
    guard("postcopy_ram_supported_by_host", || {
        let result = match current() {
            Some(incoming) => incoming.supported_by_host(),
            None => check_host_support(Vec::new(), 4096),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                log::error!("postcopy_ram_supported_by_host: {e}");
                false
            }
        }
    })
}

/// `postcopy_ram_supported_by_host` for the RAM blocks of `mis`. False for NULL.
#[no_mangle]
pub extern "C" fn postcopy_ram_supported_by_host_for(mis: *const MigrationIncomingState) -> bool {
    guard("postcopy_ram_supported_by_host_for", || {
        let Some(mis) = handle("postcopy_ram_supported_by_host_for", mis) else {
            return false;
        };
        match mis.incoming.supported_by_host() {
            Ok(()) => true,
            Err(e) => {
                log::error!("postcopy_ram_supported_by_host_for: {e}");
                false
            }
        }
    })
}

/// Reads the RAM blocks (through `foreach_ram_block`), validates them (page-aligned, length
/// a multiple of the page size, no overlap, unique names) and discards all their memory so
/// that every page faults later. State NONE (or END) -> ADVISE. `ram_pages`, the guest's
/// RAM in target pages, is cross-checked when non-zero. Returns 0 or a negative errno:
/// -EBUSY when already initialised, -EINVAL for bad blocks or state.
#[no_mangle]
pub extern "C" fn postcopy_ram_incoming_init(
    mis: *mut MigrationIncomingState,
    ram_pages: usize,
) -> c_int {
    guard("postcopy_ram_incoming_init", || {
        let Some(mis) = handle("postcopy_ram_incoming_init", mis) else {
            return -libc::EINVAL;
        };
        mis.incoming
            .init(ram_pages)
            .map_or_else(|e| fail("postcopy_ram_incoming_init", e), |()| 0)
    })
}

/// Ends postcopy: stops and joins the fault thread, then unregisters memory (threads still
/// blocked on missing pages are woken and find the page as the kernel leaves it: zero for
/// anonymous memory), closes the userfaultfd, ends ballooning inhibition, re-locks memory
/// per the mlock policy, frees the temporary pages, sets END and calls `shut`. Returns 0 or
/// a negative errno; -EINVAL without a prior init or when called twice. Not from a callback.
#[no_mangle]
pub extern "C" fn postcopy_ram_incoming_cleanup(mis: *mut MigrationIncomingState) -> c_int {
    guard("postcopy_ram_incoming_cleanup", || {
        let Some(mis) = handle("postcopy_ram_incoming_cleanup", mis) else {
            return -libc::EINVAL;
        };
        mis.incoming
            .cleanup()
            .map_or_else(|e| fail("postcopy_ram_incoming_cleanup", e), |()| 0)
    })
}

/// Before the first discard: turns transparent huge pages off on host-page blocks so that
/// discards really drop pages. State ADVISE -> DISCARD. Returns 0 or a negative errno.
#[no_mangle]
pub extern "C" fn postcopy_ram_prepare_discard(mis: *mut MigrationIncomingState) -> c_int {
    guard("postcopy_ram_prepare_discard", || {
        let Some(mis) = handle("postcopy_ram_prepare_discard", mis) else {
            return -libc::EINVAL;
        };
        mis.incoming
            .prepare_discard()
            .map_or_else(|e| fail("postcopy_ram_prepare_discard", e), |()| 0)
    })
}

/// Drops `[start, start + length)` (bytes) of block `block_name` (QEMU's
/// `ram_discard_range`), through the `discard_range` callback or the library default.
/// Allowed in ADVISE and DISCARD; the range must be non-empty, aligned to the block's page
/// size and inside the block. Returns 0 or a negative errno.
#[no_mangle]
pub extern "C" fn postcopy_ram_discard_range(
    mis: *mut MigrationIncomingState,
    block_name: *const c_char,
    start: u64,
    length: u64,
) -> c_int {
    guard("postcopy_ram_discard_range", || {
        let Some(mis) = handle("postcopy_ram_discard_range", mis) else {
            return -libc::EINVAL;
        };
        if block_name.is_null() {
            return fail(
                "postcopy_ram_discard_range",
                Error::invalid("block name is NULL"),
            );
        }
        // SAFETY: non-NULL NUL-terminated string per the header.
        let Ok(name) = unsafe { CStr::from_ptr(block_name) }.to_str() else {
            return fail(
                "postcopy_ram_discard_range",
                Error::invalid("block name is not UTF-8"),
            );
        };
        mis.incoming
            .discard_range(name, start, length)
            .map_or_else(|e| fail("postcopy_ram_discard_range", e), |()| 0)
    })
}

/// Applies one QEMU POSTCOPY_RAM_DISCARD command: `bytes` is the whole command (with its
/// 0x08 envelope) or just its payload, `length` bytes long. Checks the state (the first
/// discard in ADVISE does `postcopy_ram_prepare_discard`), the block name, and every range
/// (aligned to the block page size and inside the block) before dropping any page: a bad
/// command is rejected whole. Returns the number of ranges dropped, or a negative errno.
#[no_mangle]
pub extern "C" fn postcopy_ram_handle_discard_command(
    mis: *mut MigrationIncomingState,
    bytes: *const u8,
    length: usize,
) -> c_int {
    guard("postcopy_ram_handle_discard_command", || {
        let Some(mis) = handle("postcopy_ram_handle_discard_command", mis) else {
            return -libc::EINVAL;
        };
        if bytes.is_null() {
            return fail(
                "postcopy_ram_handle_discard_command",
                Error::invalid("bytes is NULL"),
            );
        }
        // SAFETY: non-NULL, `length` readable bytes per the header.
        let bytes = unsafe { std::slice::from_raw_parts(bytes, length) };
        match mis.incoming.handle_discard_command(bytes) {
            Ok(n) => n.min(c_int::MAX as usize) as c_int,
            Err(e) => fail("postcopy_ram_handle_discard_command", e),
        }
    })
}

/// Opens a userfaultfd, registers every block for missing-page faults, starts the fault
/// thread ("postcopy/fault"), calls `balloon_inhibit(true)`; state -> LISTENING. Needs
/// init; allowed in ADVISE, DISCARD or LISTENING. Returns 0 or a negative errno: -EBUSY
/// when already enabled; on any failure nothing stays registered or open.
#[no_mangle]
pub extern "C" fn postcopy_ram_enable_notify(mis: *mut MigrationIncomingState) -> c_int {
    guard("postcopy_ram_enable_notify", || {
        let Some(mis) = handle("postcopy_ram_enable_notify", mis) else {
            return -libc::EINVAL;
        };
        mis.incoming
            .enable_notify()
            .map_or_else(|e| fail("postcopy_ram_enable_notify", e), |()| 0)
    })
}

fn placement_code(what: &str, result: Result<Placement>) -> c_int {
    match result {
        Ok(Placement::Placed) => 0,
        Ok(Placement::AlreadyPresent) => -libc::EEXIST,
        Err(e) => fail(what, e),
    }
}

/// Atomically places the host page at `host` (inside a block, aligned to its page size)
/// from `pagesize` bytes at `from` (`pagesize` must be the block's page size), and wakes the
/// threads faulting on it. Callable from any thread, including `request_page`, after
/// `postcopy_ram_enable_notify`. Returns 0; -EEXIST when the page was already present (a
/// racing placer won; the waiters were woken: benign); or a negative errno (-EINVAL for a
/// bad address or size or a call before enable_notify).
#[no_mangle]
pub extern "C" fn postcopy_place_page(
    mis: *mut MigrationIncomingState,
    host: *mut c_void,
    from: *mut c_void,
    pagesize: usize,
) -> c_int {
    guard("postcopy_place_page", || {
        let Some(mis) = handle("postcopy_place_page", mis) else {
            return -libc::EINVAL;
        };
        // SAFETY: the header requires `from` to hold `pagesize` readable bytes.
        let result = unsafe {
            mis.incoming
                .place_page(host as usize, from as *const u8, pagesize as u64)
        };
        placement_code("postcopy_place_page", result)
    })
}

/// Atomically places a zero page at `host`, as `postcopy_place_page`: with UFFDIO_ZEROPAGE
/// where the block's registration offers it, else by copying a zero page (hugetlbfs).
#[no_mangle]
pub extern "C" fn postcopy_place_page_zero(
    mis: *mut MigrationIncomingState,
    host: *mut c_void,
    pagesize: usize,
) -> c_int {
    guard("postcopy_place_page_zero", || {
        let Some(mis) = handle("postcopy_place_page_zero", mis) else {
            return -libc::EINVAL;
        };
        placement_code(
            "postcopy_place_page_zero",
            mis.incoming.place_page_zero(host as usize, pagesize as u64),
        )
    })
}

/// Places `length` bytes of whole pages (one block) from `from` with one UFFDIO_COPY: the
/// batched form of `postcopy_place_page` for a contiguous run of the background stream.
/// Pages already present are skipped; every waiter is woken. Returns the number of pages
/// placed (>= 0), or a negative errno.
#[no_mangle]
pub extern "C" fn postcopy_place_pages(
    mis: *mut MigrationIncomingState,
    host: *mut c_void,
    from: *const c_void,
    length: usize,
) -> isize {
    guard("postcopy_place_pages", || {
        let Some(mis) = handle("postcopy_place_pages", mis) else {
            return -(libc::EINVAL as isize);
        };
        // SAFETY: the header requires `from` to hold `length` readable bytes.
        match unsafe {
            mis.incoming
                .place_pages(host as usize, from as *const u8, length as u64)
        } {
            Ok(run) => run.placed as isize,
            Err(e) => fail("postcopy_place_pages", e) as isize,
        }
    })
}

/// Places `length` bytes of zero pages (one block) in one call: the batched form of
/// `postcopy_place_page_zero`. Returns the number of pages placed (>= 0), or a negative errno.
#[no_mangle]
pub extern "C" fn postcopy_place_pages_zero(
    mis: *mut MigrationIncomingState,
    host: *mut c_void,
    length: usize,
) -> isize {
    guard("postcopy_place_pages_zero", || {
        let Some(mis) = handle("postcopy_place_pages_zero", mis) else {
            return -(libc::EINVAL as isize);
        };
        match mis.incoming.place_pages_zero(host as usize, length as u64) {
            Ok(run) => run.placed as isize,
            Err(e) => fail("postcopy_place_pages_zero", e) as isize,
        }
    })
}

/// A scratch buffer as large as the largest block page, to assemble a page before
/// `postcopy_place_page`. The same buffer every call; valid until cleanup or free. NULL
/// (logged) before init or if it cannot be mapped.
#[no_mangle]
pub extern "C" fn postcopy_get_tmp_page(mis: *mut MigrationIncomingState) -> *mut c_void {
    guard("postcopy_get_tmp_page", || {
        let Some(mis) = handle("postcopy_get_tmp_page", mis) else {
            return std::ptr::null_mut();
        };
        match mis.incoming.tmp_page() {
            Ok(p) => p.cast(),
            Err(e) => {
                log::error!("postcopy_get_tmp_page: {e}");
                std::ptr::null_mut()
            }
        }
    })
}

/// Makes the next page request name its block (call after the return path reconnected).
#[no_mangle]
pub extern "C" fn postcopy_incoming_reset_request_block(mis: *mut MigrationIncomingState) {
    guard("postcopy_incoming_reset_request_block", || {
        if let Some(mis) = handle("postcopy_incoming_reset_request_block", mis) {
            mis.incoming.reset_request_block();
        }
    })
}

/// Copies the counters of `mis` into `*out`. Returns 0 or -EINVAL for NULL arguments.
#[no_mangle]
pub extern "C" fn postcopy_incoming_get_stats(
    mis: *const MigrationIncomingState,
    out: *mut PostcopyStats,
) -> c_int {
    guard("postcopy_incoming_get_stats", || {
        let Some(mis) = handle("postcopy_incoming_get_stats", mis) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return fail("postcopy_incoming_get_stats", Error::invalid("out is NULL"));
        }
        let s = mis.incoming.stats();
        let stats = PostcopyStats {
            faults: s.faults,
            requests: s.requests,
            duplicate_faults: s.duplicate_faults,
            late_faults: s.late_faults,
            faults_outside: s.faults_outside,
            request_errors: s.request_errors,
            pages_placed: s.pages_placed,
            zero_pages_placed: s.zero_pages_placed,
            already_present: s.already_present,
            unexpected_events: s.unexpected_events,
            last_request_errno: s.last_request_errno,
        };
        // SAFETY: non-NULL, points to a writable PostcopyStats per the header.
        unsafe { out.write(stats) };
        0
    })
}
