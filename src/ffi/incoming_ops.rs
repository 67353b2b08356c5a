//! The destination's callback table (`PcrIncomingOps`) and its adapter to the core's
//! `IncomingHooks`: C callbacks in, Rust results out.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::types::{errno_of, PcrRamBlock, PcrRamBlockVisitor, PcrState};
use crate::destination::block::{Backing, BlockEntry, BlockName, RamBlock};
use crate::destination::fault_thread::FaultThreadFailure;
use crate::destination::incoming::IncomingHooks;
use crate::destination::return_path_sender::ReturnPathSender;
use crate::error::{Error, Result};
use crate::state::State;

/// Callbacks and settings of a destination, given to `pcr_incoming_new` (which
/// copies the table). Every callback receives the `opaque` pointer given there.
///
/// Threads: `foreach_ram_block`, `discard_range`, `state_changed`, `shut`,
/// `balloon_inhibit` and `mlock` run on the thread that called the library function that
/// needs them. `request_page`, `fault_thread_started` and `fault_thread_stopping` run on
/// the library's fault thread ("postcopy/fault"); from there a callback may call
/// `pcr_place_page`, `pcr_place_page_zero`, `pcr_place_pages*`, `pcr_incoming_get_stats`,
/// `pcr_state_get`, `pcr_incoming_pause_requests` and `pcr_incoming_abort`, but never
/// `pcr_incoming_cleanup`, `pcr_incoming_enable_notify`, `pcr_incoming_resend_pending` or
/// `pcr_incoming_free` (they wait for the fault thread: -EDEADLK). No callback may unwind.
///
/// A zero-initialised table keeps every optional behaviour off.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrIncomingOps {
    /// Required. Calls `visit(block, ctx)` once per guest RAM block and returns 0, or the
    /// first non-zero value `visit` returned, or a negative errno of its own. Called by
    /// `pcr_incoming_supported_by_host` and `pcr_incoming_init` (which keeps a
    /// copy of the table until cleanup).
    pub foreach_ram_block: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            visit: PcrRamBlockVisitor,
            ctx: *mut c_void,
        ) -> c_int,
    >,
    /// Asks the source for `length` bytes at `offset` of block `block_name`
    /// (NULL: the same block as the previous successful request; the source's REQ_PAGES
    /// without id). `block_opaque` is the block's `PcrRamBlock.opaque`, given whether the
    /// name is or not. Returns 0, or a negative errno: the failure is counted and logged,
    /// the page stays pending, and requests pause (faults are still read and recorded
    /// pending) until `pcr_incoming_resend_pending`. Returning -EAGAIN while the host's
    /// return path is down is the intended use. Runs on the fault thread. Required unless
    /// `write_return_path` is given.
    pub request_page: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block_opaque: *mut c_void,
            block_name: *const c_char,
            offset: u64,
            length: u64,
        ) -> c_int,
    >,
    /// Optional. Drops `[start, start + length)` (bytes) of `block`; returns 0 or a negative
    /// errno. NULL: the library drops the pages itself (MADV_DONTNEED for private anonymous
    /// memory, MADV_REMOVE for shared anonymous, fallocate(PUNCH_HOLE|KEEP_SIZE) on `fd`
    /// for fd-backed blocks, plus MADV_DONTNEED when a host-page block is mapped private;
    /// hugetlbfs files get the hole punch only). Never called for an empty range.
    pub discard_range: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block: *const PcrRamBlock,
            start: u64,
            length: u64,
        ) -> c_int,
    >,
    /// Optional. The state changed from `old_state` to `new_state`.
    pub state_changed:
        Option<unsafe extern "C" fn(opaque: *mut c_void, old_state: PcrState, new_state: PcrState)>,
    /// Optional. Postcopy ended (`pcr_incoming_cleanup`); `failed` is true when cleanup
    /// failed, postcopy was aborted, or pages were still pending (a failed request that a
    /// re-send recovered does not count). QEMU 2.x sends the return-path SHUT message here;
    /// see `never_send_shut`.
    pub shut: Option<unsafe extern "C" fn(opaque: *mut c_void, failed: bool)>,
    /// Optional. `true` at enable_notify: stop ballooning (it would drop pages and cause
    /// false faults); `false` at cleanup.
    pub balloon_inhibit: Option<unsafe extern "C" fn(opaque: *mut c_void, inhibit: bool)>,
    /// Optional. `lock = false` in `pcr_incoming_init` before the first discard (locked
    /// memory refuses MADV_DONTNEED: QEMU's `-overcommit mem-lock=on`), `true` at every
    /// cleanup after a successful init, before LISTEN too (and after an init that failed
    /// once unlocked); returns 0 or a negative errno. NULL: with `enable_mlock` the library
    /// munlocks the mlocked parts of this destination's blocks (read from
    /// /proc/self/smaps) and mlocks exactly those again at cleanup, as they were (on fault
    /// or populated); it never calls munlockall/mlockall, so the memory of other VMs in the
    /// process is left alone; without `enable_mlock`, nothing.
    pub mlock: Option<unsafe extern "C" fn(opaque: *mut c_void, lock: bool) -> c_int>,
    /// Optional. Writes `length` bytes (one whole QEMU return-path message) to the return
    /// path (at most PCR_RETURN_PATH_MAX_MESSAGE bytes); returns 0 or a negative errno. When given and `request_page` is NULL, the
    /// library sends each page request itself as REQ_PAGES_ID (block named) or REQ_PAGES;
    /// when given and `shut` is NULL, it sends SHUT at cleanup. Runs on the fault thread
    /// (requests) and on the cleanup caller's thread (SHUT).
    pub write_return_path:
        Option<unsafe extern "C" fn(opaque: *mut c_void, bytes: *const u8, length: usize) -> c_int>,
    /// Optional. Runs on the fault thread, first thing, before any other callback there
    /// (QEMU: `rcu_register_thread`).
    pub fault_thread_started: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Optional. Runs on the fault thread, last thing (QEMU: `rcu_unregister_thread`):
    /// when cleanup stops the thread, or when the thread stopped on its own on a failure
    /// (a fatal userfaultfd error, an internal panic). In that case the failure is
    /// recorded first, so `pcr_incoming_fault_thread_status` called from here says why,
    /// and the destination was already aborted (missing pages poisoned or zero-filled: no
    /// fault hangs).
    pub fault_thread_stopping: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// The guest's target page size in bytes (discard ranges and received bitmaps count in
    /// it): a power of two no larger than the host page size (`pcr_incoming_new` refuses
    /// others); 0 means 4096.
    pub target_page_size: usize,
    /// Whether guest memory is kept mlocked outside postcopy (see `mlock`).
    pub enable_mlock: bool,
    /// 0: the fault thread sleeps in poll(2) when idle (default). N > 0: it busy-polls the
    /// userfaultfd for up to N microseconds after each fault before sleeping (lower fault
    /// latency, one core busy while faults keep coming).
    pub spin_wait_us: u32,
    /// The library never calls `shut` and never sends SHUT itself: the host sends it after
    /// completion (QEMU 7.2 does, after COMPLETED; a SHUT marked failed makes its source
    /// fail).
    pub never_send_shut: bool,
    /// Registers for UFFD_FEATURE_EVENT_REMOVE (Linux 4.11): MADV_DONTNEED / MADV_REMOVE
    /// on received pages (a balloon, virtio-mem) clears their received bits, so that their
    /// next fault is requested again. Off by default: with it, the kernel holds every such
    /// madvise until the fault thread has read the event (QEMU 7.2 never asks for it).
    /// Without it, such a fault is "late" and its thread is not served.
    pub track_remove: bool,
    /// Accounts blocktime and fault latency (`pcr_incoming_get_blocktime`; QEMU's
    /// postcopy-blocktime capability). The kernel's UFFD_FEATURE_THREAD_ID (Linux 4.14) is
    /// requested whenever offered, to attribute faults to vCPUs.
    pub blocktime: bool,
}

/// The C callbacks of one destination, with the opaque pointer they all receive.
pub(crate) struct COps {
    pub(crate) ops: PcrIncomingOps,
    pub(crate) opaque: *mut c_void,
}

// SAFETY: the header requires the callbacks and the opaque pointer to be usable from the
// library's threads (the fault thread and the caller's threads); the library never
// dereferences `opaque`, it only passes it back to those callbacks.
unsafe impl Send for COps {}
// SAFETY: as above: shared access only ever reads the table and calls the callbacks, which
// the header requires to be callable concurrently.
unsafe impl Sync for COps {}

fn c_block(block: &RamBlock, name: &CStr) -> PcrRamBlock {
    let (fd, fd_offset, shared) = match block.backing {
        Backing::Anonymous { shared } => (-1, 0, shared),
        Backing::File { fd, offset, shared } => (fd, offset, shared),
    };
    PcrRamBlock {
        name: name.as_ptr(),
        host: block.host as *mut c_void,
        offset: block.offset,
        length: block.length,
        page_size: block.page_size,
        fd,
        fd_offset,
        shared,
        opaque: block.opaque as *mut c_void,
    }
}

struct Collector {
    blocks: Vec<RamBlock>,
    error: Option<Error>,
}

fn rust_block(b: &PcrRamBlock) -> Result<RamBlock> {
    if b.name.is_null() {
        return Err(Error::invalid("a RAM block has a NULL name"));
    }
    // SAFETY: non-NULL, and the visitor contract makes `name` a NUL-terminated string valid
    // during the visit, which is when this runs.
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
        opaque: b.opaque as usize,
    })
}

/// The visitor given to `foreach_ram_block`: collects each block into the `Collector` at
/// `ctx`. Panics are caught (it is called from C).
unsafe extern "C" fn collect_block(block: *const PcrRamBlock, ctx: *mut c_void) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `&mut Collector` that `ram_blocks` passed to
        // foreach_ram_block, which hands it back unchanged while `ram_blocks` waits.
        let collector = unsafe { &mut *(ctx as *mut Collector) };
        // SAFETY: the visitor contract: NULL or a block description valid during the call.
        let Some(block) = (unsafe { block.as_ref() }) else {
            collector
                .error
                .get_or_insert(Error::invalid("foreach_ram_block passed a NULL block"));
            return -libc::EINVAL;
        };
        match rust_block(block) {
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
        // SAFETY: a callback of the table with its opaque pointer (see the Send impl) and
        // `bytes.len()` initialised bytes that stay alive during the call.
        match unsafe { write(self.opaque, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            rc => Err(errno_of(rc)),
        }
    }

    fn return_path(&self) -> ReturnPathSender<impl Fn(&[u8]) -> std::result::Result<(), i32> + '_> {
        ReturnPathSender::new(|bytes: &[u8]| self.write_return_path(bytes))
    }
}

impl IncomingHooks for COps {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        let Some(foreach) = self.ops.foreach_ram_block else {
            return Err(Error::invalid("PcrIncomingOps.foreach_ram_block is NULL"));
        };
        let mut collector = Collector {
            blocks: Vec::new(),
            error: None,
        };
        // SAFETY: a callback of the table with its opaque pointer, our visitor (callable
        // from C, never unwinds) and a context pointer that lives until it returns.
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
        // Only reached without a C request_page (request_page_in below handles it).
        self.return_path().request_page(block, offset, length)
    }

    fn request_page_in(
        &self,
        entry: &BlockEntry,
        named: bool,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        let block = named.then_some(&entry.name);
        let Some(request) = self.ops.request_page else {
            return self.return_path().request_page(block, offset, length);
        };
        let name: *const c_char = block.map_or(std::ptr::null(), |b| b.as_c_str().as_ptr());
        let block_opaque = entry.block.opaque as *mut c_void;
        // SAFETY: a callback of the table with its opaque pointer, the block's opaque
        // pointer (the host's, passed back untouched) and a name that is NULL or a
        // NUL-terminated string owned by the block table, alive during the call.
        match unsafe { request(self.opaque, block_opaque, name, offset, length) } {
            0 => Ok(()),
            rc => Err(errno_of(rc)),
        }
    }

    fn fault_thread_started(&self) {
        if let Some(cb) = self.ops.fault_thread_started {
            // SAFETY: a callback of the table with its opaque pointer.
            unsafe { cb(self.opaque) };
        }
    }

    fn fault_thread_stopping(&self, _failure: Option<FaultThreadFailure>) {
        // The C callback reads the reason with pcr_incoming_fault_thread_status (the
        // table's signature stays as it was: no ABI change).
        if let Some(cb) = self.ops.fault_thread_stopping {
            // SAFETY: a callback of the table with its opaque pointer.
            unsafe { cb(self.opaque) };
        }
    }

    fn discard_range(&self, block: &RamBlock, start: u64, length: u64) -> Option<Result<()>> {
        let discard = self.ops.discard_range?;
        let name = match CString::new(block.name.as_str()) {
            Ok(name) => name,
            Err(_) => return Some(Err(Error::invalid("block name holds NUL"))),
        };
        let c = c_block(block, &name);
        // SAFETY: a callback of the table with its opaque pointer and a block description
        // (and name) that live on this stack frame during the call.
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
            // SAFETY: a callback of the table with its opaque pointer and two integers.
            unsafe { cb(self.opaque, old as u32, new as u32) };
        }
    }

    fn shut(&self, failed: bool) {
        if let Some(cb) = self.ops.shut {
            // SAFETY: a callback of the table with its opaque pointer and a bool.
            unsafe { cb(self.opaque, failed) };
        } else if self.ops.write_return_path.is_some() {
            if let Err(errno) = self.return_path().shut(failed) {
                log::error!(
                    "sending SHUT on the return path failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        }
    }

    fn balloon_inhibit(&self, inhibit: bool) {
        if let Some(cb) = self.ops.balloon_inhibit {
            // SAFETY: a callback of the table with its opaque pointer and a bool.
            unsafe { cb(self.opaque, inhibit) };
        }
    }

    fn mlock(&self, lock: bool) -> Option<Result<()>> {
        let cb = self.ops.mlock?;
        // SAFETY: a callback of the table with its opaque pointer and a bool.
        match unsafe { cb(self.opaque, lock) } {
            0 => Some(Ok(())),
            rc => Some(Err(Error::new(
                errno_of(rc),
                format!("mlock callback ({lock}) returned {rc}"),
            ))),
        }
    }
}
