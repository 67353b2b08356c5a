//! The destination side of postcopy: QEMU's `MigrationIncomingState` functions.
//!
//! Lifecycle, as driven by a hypervisor (see the README's sequence):
//! [`Incoming::new`] -> [`Incoming::supported_by_host`] -> [`Incoming::init`] (precopy may run)
//! -> [`Incoming::prepare_discard`] + [`Incoming::discard_range`]... ->
//! [`Incoming::enable_notify`] -> [`Incoming::place_page`] / [`Incoming::place_page_zero`]
//! from any thread, while the fault thread requests missing pages -> [`Incoming::cleanup`].

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::block::{host_page_size, Backing, BlockEntry, BlockName, BlockTable, RamBlock};
use crate::discard;
use crate::error::{Error, Result};
use crate::fault::{FaultShared, FaultThread, WaitStrategy};
use crate::mapping::AnonMapping;
use crate::state::State;
use crate::stats::{Counters, Stats};
use crate::uffd::{self, feature, ioctl_bit, PlaceError, Uffd};

/// What the library needs from the hypervisor on the destination. Every method but
/// [`IncomingHooks::ram_blocks`] and [`IncomingHooks::request_page`] has a default.
pub trait IncomingHooks: Send + Sync {
    /// The guest's RAM blocks. Called by [`Incoming::supported_by_host`] and
    /// [`Incoming::init`] (which keeps the table until [`Incoming::cleanup`]).
    fn ram_blocks(&self) -> Result<Vec<RamBlock>>;

    /// Asks the source for `length` bytes at `offset` in `block` (`None`: the same block as
    /// the previous successful request). Runs on the fault thread; it may call
    /// [`Incoming::place_page`]. An `Err(errno)` is counted, logged, and the page is
    /// requested again when it next faults.
    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32>;

    /// Drops `[start, start+length)` of `block`. `None` (the default) lets the library do
    /// it (see [`crate::discard::drop_range`]).
    fn discard_range(&self, _block: &RamBlock, _start: u64, _length: u64) -> Option<Result<()>> {
        None
    }

    /// The state moved from `old` to `new`.
    fn state_changed(&self, _old: State, _new: State) {}

    /// Postcopy ended (cleanup); `failed` says whether anything went wrong. QEMU sends the
    /// return-path SHUT message here.
    fn shut(&self, _failed: bool) {}

    /// Ballooning must stop (`true`, at enable_notify) or may resume (`false`, at cleanup):
    /// a balloon would drop pages and cause false faults.
    fn balloon_inhibit(&self, _inhibit: bool) {}

    /// Unlock (`false`, before registering) or re-lock (`true`, at cleanup) guest memory.
    /// `None` (the default) lets the library do it: with
    /// [`IncomingConfig::enable_mlock`], `munlockall()` and `mlockall(MCL_CURRENT|MCL_FUTURE)`;
    /// without, nothing.
    fn mlock(&self, _lock: bool) -> Option<Result<()>> {
        None
    }
}

/// Tunables of an [`Incoming`].
#[derive(Debug, Clone)]
pub struct IncomingConfig {
    /// The guest's target page size (discards and bitmaps count in it). Default 4096.
    pub target_page_size: u64,
    /// Whether guest memory is mlocked outside postcopy (QEMU's `-realtime mlock=on`).
    pub enable_mlock: bool,
    /// How the fault thread waits.
    pub wait: WaitStrategy,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        IncomingConfig {
            target_page_size: 4096,
            enable_mlock: false,
            wait: WaitStrategy::Block,
        }
    }
}

/// What a successful placement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The page was placed and its waiters woken.
    Placed,
    /// The page was already present (another placer won the race); its waiters were woken.
    AlreadyPresent,
}

/// Result of placing a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunPlacement {
    /// Pages this call placed.
    pub placed: u64,
    /// Pages that were already present.
    pub already_present: u64,
}

/// State that exists between enable_notify and cleanup.
struct Active {
    uffd: Arc<Uffd>,
    table: Arc<BlockTable>,
    zero_page: AnonMapping,
    fault_thread: Mutex<Option<FaultThread>>,
}

/// The destination of a postcopy migration (QEMU's `MigrationIncomingState`, RAM part).
pub struct Incoming {
    hooks: Arc<dyn IncomingHooks>,
    config: IncomingConfig,
    state: crate::state::StateCell,
    /// Serialises init / prepare_discard / enable_notify / cleanup.
    control: Mutex<()>,
    table: RwLock<Option<Arc<BlockTable>>>,
    active: RwLock<Option<Arc<Active>>>,
    tmp_page: Mutex<Option<AnonMapping>>,
    counters: Arc<Counters>,
}

fn munlockall_checked() -> Result<()> {
    // SAFETY: munlockall has no memory-safety preconditions.
    if unsafe { libc::munlockall() } != 0 {
        return Err(Error::os(&std::io::Error::last_os_error(), "munlockall"));
    }
    Ok(())
}

fn mlockall_checked() -> Result<()> {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(Error::os(&std::io::Error::last_os_error(), "mlockall"));
    }
    Ok(())
}

/// The userfaultfd features blocks of these kinds need.
fn features_needed(table: &BlockTable) -> u64 {
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

fn feature_names(bits: u64) -> String {
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
/// handshakes; the features the blocks need (huge pages, shared memory) are there; and an
/// anonymous test area registers with WAKE, COPY and ZEROPAGE offered.
pub fn check_host_support(blocks: Vec<RamBlock>, target_page_size: u64) -> Result<()> {
    let host = host_page_size();
    if target_page_size == 0 || !target_page_size.is_power_of_two() || target_page_size > host {
        return Err(Error::invalid(format!(
            "target page size {target_page_size} is not a power of two no bigger than the host page size {host}"
        )));
    }
    let table = BlockTable::new(blocks)?;
    let caps = uffd::probe().map_err(|m| Error::new(libc::ENOSYS, m))?;
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
    let uffd = Uffd::open(0).map_err(|m| Error::new(libc::ENOSYS, m))?;
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
    Ok(())
}

impl Incoming {
    /// A destination with no migration in progress (state NONE).
    pub fn new(hooks: Arc<dyn IncomingHooks>, config: IncomingConfig) -> Incoming {
        Incoming {
            hooks,
            config,
            state: Default::default(),
            control: Mutex::new(()),
            table: RwLock::new(None),
            active: RwLock::new(None),
            tmp_page: Mutex::new(None),
            counters: Default::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IncomingConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.get()
    }

    /// Moves to `new` if legal (see [`State::can_go_to`]); returns the old state. A refused
    /// step leaves the state as it is and is logged.
    pub fn set_state(&self, new: State) -> Result<State> {
        match self.state.transition(new) {
            Ok(old) => {
                if old != new {
                    log::debug!("postcopy state {old:?} -> {new:?}");
                    self.hooks.state_changed(old, new);
                }
                Ok(old)
            }
            Err(current) => Err(Error::invalid(format!(
                "postcopy state change {current:?} -> {new:?} is not allowed"
            ))),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// The block table built by [`Incoming::init`], if any.
    pub fn blocks(&self) -> Option<Arc<BlockTable>> {
        self.table.read().clone()
    }

    /// Whether this host can do postcopy for this guest's blocks (from
    /// [`IncomingHooks::ram_blocks`]); see [`check_host_support`]. No side effects.
    pub fn supported_by_host(&self) -> Result<()> {
        check_host_support(self.hooks.ram_blocks()?, self.config.target_page_size)
    }

    fn discard_with_hook(&self, block: &RamBlock, start: u64, length: u64) -> Result<()> {
        match self.hooks.discard_range(block, start, length) {
            Some(result) => result,
            None => discard::drop_range(block, start, length),
        }
    }

    /// Reads the RAM blocks, validates them, and discards all of their memory so that every
    /// page will fault later; state NONE -> ADVISE. `ram_pages` (the guest's RAM in target
    /// pages, as QEMU passes it) is checked against the blocks when non-zero.
    pub fn init(&self, ram_pages: usize) -> Result<()> {
        let _control = self.control.lock();
        if self.table.read().is_some() {
            return Err(Error::new(
                libc::EBUSY,
                "incoming_init called again before cleanup",
            ));
        }
        let state = self.state();
        if !matches!(state, State::None | State::Advise | State::End) {
            return Err(Error::invalid(format!("incoming_init in state {state:?}")));
        }
        let table = BlockTable::new(self.hooks.ram_blocks()?)?;
        let total: u64 = table.entries().iter().map(|e| e.block.length).sum();
        if ram_pages != 0 && ram_pages as u64 != total / self.config.target_page_size {
            log::warn!(
                "incoming_init: ram_pages {ram_pages} differs from the blocks' {} target pages",
                total / self.config.target_page_size
            );
        }
        for entry in table.entries() {
            self.discard_with_hook(&entry.block, 0, entry.block.length)?;
        }
        if state == State::End {
            self.set_state(State::None)?;
        }
        self.set_state(State::Advise)?;
        *self.table.write() = Some(Arc::new(table));
        Ok(())
    }

    fn require_table(&self, what: &str) -> Result<Arc<BlockTable>> {
        self.table.read().clone().ok_or_else(|| {
            Error::invalid(format!("{what} before incoming_init (or after cleanup)"))
        })
    }

    /// Turns transparent huge pages off on the blocks so that discards really drop pages;
    /// state -> DISCARD.
    pub fn prepare_discard(&self) -> Result<()> {
        let _control = self.control.lock();
        let table = self.require_table("prepare_discard")?;
        let state = self.state();
        if !matches!(state, State::Advise | State::Discard) {
            return Err(Error::invalid(format!(
                "prepare_discard in state {state:?}"
            )));
        }
        for entry in table.entries() {
            if entry.block.page_size == host_page_size() {
                // SAFETY: only changes the THP advice of the hypervisor's own guest RAM.
                let rc = unsafe {
                    libc::madvise(
                        entry.block.host as *mut libc::c_void,
                        entry.block.length as usize,
                        libc::MADV_NOHUGEPAGE,
                    )
                };
                if rc != 0 {
                    log::debug!(
                        "prepare_discard: MADV_NOHUGEPAGE on {}: {}",
                        entry.block.name,
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
        self.set_state(State::Discard)?;
        Ok(())
    }

    /// Drops `[start, start+length)` (bytes) of block `name`: allowed in ADVISE and DISCARD;
    /// the range must be non-empty, aligned to the block's page size and inside it.
    pub fn discard_range(&self, name: &str, start: u64, length: u64) -> Result<()> {
        let table = self.require_table("discard_range")?;
        let state = self.state();
        if !matches!(state, State::Advise | State::Discard) {
            return Err(Error::invalid(format!("discard_range in state {state:?}")));
        }
        let entry = table
            .by_name(name)
            .ok_or_else(|| Error::invalid(format!("discard_range: no RAM block named {name:?}")))?;
        discard::check_range(&entry.block, start, length)?;
        self.discard_with_hook(&entry.block, start, length)
    }

    /// Applies one QEMU `POSTCOPY_RAM_DISCARD` command (`bytes`: the whole command with its
    /// `0x08` envelope, or just its payload): decodes it, checks the state (the first
    /// discard in ADVISE calls [`Incoming::prepare_discard`]), the block name and every
    /// range (aligned to the block's page size, inside the block), then drops the ranges.
    /// A bad command is rejected whole, before any page is touched. Returns the number of
    /// ranges dropped.
    pub fn handle_discard_command(&self, bytes: &[u8]) -> Result<usize> {
        let discard = if bytes.first() == Some(&crate::wire::QEMU_VM_COMMAND) {
            match crate::wire::decode_command(bytes) {
                Ok((crate::wire::CommandMsg::PostcopyRamDiscard(d), used))
                    if used == bytes.len() =>
                {
                    d
                }
                Ok((other, _)) => {
                    return Err(Error::invalid(format!(
                        "discard command: got {:?} (or trailing bytes), not POSTCOPY_RAM_DISCARD",
                        other.command()
                    )))
                }
                Err(e) => return Err(Error::new(-e.to_errno(), format!("discard command: {e}"))),
            }
        } else {
            crate::wire::decode_discard_payload(bytes)
                .map_err(|e| Error::new(-e.to_errno(), format!("discard command: {e}")))?
        };
        let name = std::str::from_utf8(discard.name())
            .map_err(|_| Error::invalid("discard command: block name is not UTF-8"))?;
        let table = self.require_table("discard command")?;
        let entry = table.by_name(name).ok_or_else(|| {
            Error::invalid(format!("discard command: no RAM block named {name:?}"))
        })?;
        for range in discard.ranges() {
            discard::check_range(&entry.block, range.start, range.length).map_err(|e| {
                Error::new(e.errno(), format!("discard command rejected whole: {e}"))
            })?;
        }
        match self.state() {
            State::Advise => self.prepare_discard()?,
            State::Discard => {}
            other => {
                return Err(Error::invalid(format!(
                    "discard command in state {other:?}"
                )))
            }
        }
        for range in discard.ranges() {
            self.discard_with_hook(&entry.block, range.start, range.length)?;
        }
        Ok(discard.range_count())
    }

    fn set_mlock(&self, lock: bool) -> Result<()> {
        match self.hooks.mlock(lock) {
            Some(result) => result,
            None if !self.config.enable_mlock => Ok(()),
            None if lock => mlockall_checked(),
            None => munlockall_checked(),
        }
    }

    /// Opens a userfaultfd, registers every block for missing-page faults, starts the fault
    /// thread, inhibits ballooning; state -> LISTENING.
    pub fn enable_notify(&self) -> Result<()> {
        self.refuse_on_fault_thread("enable_notify")?;
        let _control = self.control.lock();
        let table = self.require_table("enable_notify")?;
        if self.active.read().is_some() {
            return Err(Error::new(libc::EBUSY, "enable_notify called twice"));
        }
        let state = self.state();
        if !matches!(state, State::Advise | State::Discard | State::Listening) {
            return Err(Error::invalid(format!("enable_notify in state {state:?}")));
        }
        self.set_mlock(false)?;
        let caps = uffd::probe().map_err(|m| Error::new(libc::ENOSYS, m))?;
        let needed = features_needed(&table);
        if needed & !caps.features != 0 {
            return Err(Error::new(
                libc::ENOTSUP,
                format!(
                    "userfaultfd on this kernel lacks {}",
                    feature_names(needed & !caps.features)
                ),
            ));
        }
        let uffd = Arc::new(
            Uffd::open(needed | (caps.features & feature::THREAD_ID))
                .map_err(|m| Error::new(libc::ENOSYS, m))?,
        );
        let zero_page = AnonMapping::new(table.largest_page() as usize)
            .map_err(|e| Error::os(&e, "mapping the zero page"))?;
        let mut registered: Vec<&BlockEntry> = Vec::new();
        let unregister_all = |registered: &[&BlockEntry]| {
            for e in registered {
                let _ = uffd.unregister(e.block.host, e.block.length as usize);
            }
        };
        for entry in table.entries() {
            let b = &entry.block;
            let ioctls = match uffd.register_missing(b.host, b.length as usize) {
                Ok(ioctls) => ioctls,
                Err(e) => {
                    unregister_all(&registered);
                    return Err(Error::os(
                        &e,
                        format_args!("UFFDIO_REGISTER of RAM block {}", b.name),
                    ));
                }
            };
            registered.push(entry);
            if ioctls & ioctl_bit::COPY == 0 {
                unregister_all(&registered);
                return Err(Error::new(
                    libc::ENOTSUP,
                    format!(
                        "RAM block {}: userfaultfd offers no UFFDIO_COPY there",
                        b.name
                    ),
                ));
            }
            entry
                .zeropage_ok
                .store(ioctls & ioctl_bit::ZEROPAGE != 0, Ordering::Release);
            entry.received.clear_all();
            entry.requested.clear_all();
        }
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            let err = std::io::Error::last_os_error();
            unregister_all(&registered);
            return Err(Error::os(&err, "eventfd for the fault thread"));
        }
        // SAFETY: eventfd just returned this descriptor; nothing else owns it.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let shared = Arc::new(FaultShared {
            uffd: uffd.clone(),
            table: table.clone(),
            hooks: self.hooks.clone(),
            counters: self.counters.clone(),
            name_next_request: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            wake,
            wait: self.config.wait,
        });
        let thread = match FaultThread::spawn(shared) {
            Ok(thread) => thread,
            Err(e) => {
                unregister_all(&registered);
                return Err(Error::os(&e, "starting the fault thread"));
            }
        };
        *self.active.write() = Some(Arc::new(Active {
            uffd,
            table,
            zero_page,
            fault_thread: Mutex::new(Some(thread)),
        }));
        self.hooks.balloon_inhibit(true);
        self.set_state(State::Listening)?;
        Ok(())
    }

    /// Makes the next page request name its block again (call after the return path to the
    /// source was re-established).
    pub fn reset_request_block(&self) {
        if let Some(active) = self.active.read().as_ref() {
            if let Some(thread) = active.fault_thread.lock().as_ref() {
                thread
                    .shared()
                    .name_next_request
                    .store(true, Ordering::Release);
            }
        }
    }

    /// Refuses calls that would wait for the fault thread when made from it (a callback).
    fn refuse_on_fault_thread(&self, what: &str) -> Result<()> {
        let on_it = self.active.read().as_ref().is_some_and(|a| {
            a.fault_thread
                .lock()
                .as_ref()
                .is_some_and(|t| t.is_current())
        });
        if on_it {
            return Err(Error::new(
                libc::EDEADLK,
                format!("{what} called from the fault thread (a request_page callback); it would wait for itself"),
            ));
        }
        Ok(())
    }

    fn active(&self, what: &str) -> Result<Arc<Active>> {
        self.active.read().clone().ok_or_else(|| {
            Error::invalid(format!("{what} before enable_notify (or after cleanup)"))
        })
    }

    /// Checks a placement of `len` bytes at `host` against the blocks: inside one block,
    /// aligned to its page size, a non-zero multiple of it; and exactly one page when
    /// `single` is set.
    fn check_place<'a>(
        table: &'a BlockTable,
        what: &str,
        host: usize,
        len: u64,
        single: bool,
    ) -> Result<&'a BlockEntry> {
        let entry = table.find(host).ok_or_else(|| {
            Error::invalid(format!(
                "{what}: host address {host:#x} is outside every RAM block"
            ))
        })?;
        let b = &entry.block;
        // Page sizes are powers of two (BlockTable::new): masks, not divisions.
        let mask = b.page_size - 1;
        if host as u64 & mask != 0 {
            return Err(Error::invalid(format!(
                "{what}: host address {host:#x} is not aligned to block {}'s page size {:#x}",
                b.name, b.page_size
            )));
        }
        if (single && len != b.page_size) || len == 0 || len & mask != 0 {
            return Err(Error::invalid(format!(
                "{what}: size {len:#x} does not match block {}'s page size {:#x}",
                b.name, b.page_size
            )));
        }
        if host + len as usize > entry.end() {
            return Err(Error::invalid(format!(
                "{what}: {len:#x} bytes at {host:#x} run past block {}",
                b.name
            )));
        }
        Ok(entry)
    }

    fn mark_received(&self, entry: &BlockEntry, host: usize, len: usize) {
        let first = ((host - entry.block.host) as u64) >> entry.page_shift;
        for page in first..first + (len as u64 >> entry.page_shift) {
            entry.received.test_and_set(page);
            entry.requested.clear(page);
        }
    }

    /// Places the whole pages of `[host, host+len)` in `entry` with `fill(offset, bytes)`,
    /// which places `bytes` from `offset` into the run on and returns how many bytes it
    /// placed (the whole rest, or one page). A page found present (EEXIST) is counted,
    /// skipped, and the fill resumes after it; every waiter in the run has been woken.
    /// An OS error stops the run and is returned (the pages placed before it stay placed,
    /// marked and counted).
    fn place_run(
        &self,
        what: &str,
        entry: &BlockEntry,
        host: usize,
        len: usize,
        zero: bool,
        mut fill: impl FnMut(usize, usize) -> std::result::Result<usize, PlaceError>,
    ) -> Result<RunPlacement> {
        let page = entry.block.page_size as usize;
        let mut run = RunPlacement::default();
        let mut off = 0;
        let mut failure = None;
        while off < len {
            let (placed, present) = match fill(off, len - off) {
                Ok(n) => (n, false),
                Err(PlaceError::AlreadyPresent { placed }) => (placed - placed % page, true),
                Err(PlaceError::Os(errno)) => {
                    failure = Some(errno);
                    break;
                }
            };
            self.mark_received(entry, host + off, placed);
            run.placed += (placed / page) as u64;
            off += placed;
            if present {
                log::debug!(
                    "{what}: page at {:#x} in {} was already present",
                    host + off,
                    entry.block.name
                );
                self.mark_received(entry, host + off, page);
                run.already_present += 1;
                off += page;
            }
        }
        let counter = if zero {
            &self.counters.zero_pages_placed
        } else {
            &self.counters.pages_placed
        };
        counter.fetch_add(run.placed, Ordering::Relaxed);
        if run.already_present != 0 {
            self.counters
                .already_present
                .fetch_add(run.already_present, Ordering::Relaxed);
        }
        match failure {
            None => Ok(run),
            Some(errno) => Err(Error::new(
                errno,
                format!(
                    "{what}: {} bytes at {:#x} in {}: {}",
                    len - off,
                    host + off,
                    entry.block.name,
                    std::io::Error::from_raw_os_error(errno)
                ),
            )),
        }
    }

    /// Zero-fills with UFFDIO_ZEROPAGE where the block's registration offered it (the whole
    /// rest of the run in one call), else by copying the zero page (one page a call:
    /// hugetlbfs has no UFFDIO_ZEROPAGE).
    fn zero_fill(
        active: &Active,
        entry: &BlockEntry,
        dst: usize,
        len: usize,
    ) -> std::result::Result<usize, PlaceError> {
        if entry.zeropage_ok.load(Ordering::Acquire) {
            return active.uffd.zeropage(dst, len).map(|()| len);
        }
        let page = entry.block.page_size as usize;
        // SAFETY: the zero page mapping is at least the largest block page size long and
        // stays mapped while `active` is alive.
        unsafe {
            active
                .uffd
                .copy(dst, active.zero_page.as_ptr() as usize, page)
        }
        .map(|()| page)
    }

    fn single(run: RunPlacement) -> Placement {
        if run.placed == 1 {
            Placement::Placed
        } else {
            Placement::AlreadyPresent
        }
    }

    /// Atomically places one host page at `host` from `from` (`pagesize` bytes, the block's
    /// page size), waking the threads that faulted on it.
    ///
    /// # Safety
    /// `from` must point to `pagesize` readable bytes.
    pub unsafe fn place_page(
        &self,
        host: usize,
        from: *const u8,
        pagesize: u64,
    ) -> Result<Placement> {
        let active = self.active("place_page")?;
        let entry = Self::check_place(&active.table, "place_page", host, pagesize, true)?;
        if from.is_null() {
            return Err(Error::invalid("place_page: source pointer is NULL"));
        }
        let run = self.place_run(
            "place_page",
            entry,
            host,
            pagesize as usize,
            false,
            |off, len| {
                // SAFETY: the caller guarantees `from` readable for `pagesize` bytes; the
                // destination was checked to be one page inside a registered block.
                unsafe { active.uffd.copy(host + off, from as usize + off, len) }.map(|()| len)
            },
        )?;
        Ok(Self::single(run))
    }

    /// Atomically places a zero page at `host`: UFFDIO_ZEROPAGE where the block's
    /// registration offered it, otherwise a copy of a zero page (hugetlbfs).
    pub fn place_page_zero(&self, host: usize, pagesize: u64) -> Result<Placement> {
        let active = self.active("place_page_zero")?;
        let entry = Self::check_place(&active.table, "place_page_zero", host, pagesize, true)?;
        let run = self.place_run(
            "place_page_zero",
            entry,
            host,
            pagesize as usize,
            true,
            |off, len| Self::zero_fill(&active, entry, host + off, len),
        )?;
        Ok(Self::single(run))
    }

    /// Places a run of whole pages (`len` bytes, one block) from `from`, in one UFFDIO_COPY
    /// when none is present. Pages already present are skipped and counted; every waiter
    /// in the run is woken.
    ///
    /// # Safety
    /// `from` must point to `len` readable bytes.
    pub unsafe fn place_pages(
        &self,
        host: usize,
        from: *const u8,
        len: u64,
    ) -> Result<RunPlacement> {
        let active = self.active("place_pages")?;
        let entry = Self::check_place(&active.table, "place_pages", host, len, false)?;
        if from.is_null() {
            return Err(Error::invalid("place_pages: source pointer is NULL"));
        }
        self.place_run(
            "place_pages",
            entry,
            host,
            len as usize,
            false,
            |off, rest| {
                // SAFETY: `off..off+rest` lies inside the checked run and inside the caller's
                // readable source of `len` bytes.
                unsafe { active.uffd.copy(host + off, from as usize + off, rest) }.map(|()| rest)
            },
        )
    }

    /// Places a run of zero pages (`len` bytes, one block), one UFFDIO_ZEROPAGE where
    /// offered; pages already present are skipped as in [`Incoming::place_pages`].
    pub fn place_pages_zero(&self, host: usize, len: u64) -> Result<RunPlacement> {
        let active = self.active("place_pages_zero")?;
        let entry = Self::check_place(&active.table, "place_pages_zero", host, len, false)?;
        self.place_run(
            "place_pages_zero",
            entry,
            host,
            len as usize,
            true,
            |off, rest| Self::zero_fill(&active, entry, host + off, rest),
        )
    }

    /// A scratch page as large as the largest block page, for assembling a host page before
    /// [`Incoming::place_page`]. The same page is returned every time; it stays valid until
    /// cleanup. Needs [`Incoming::init`].
    pub fn tmp_page(&self) -> Result<*mut u8> {
        let table = self.require_table("get_tmp_page")?;
        let mut slot = self.tmp_page.lock();
        if let Some(page) = slot.as_ref() {
            return Ok(page.as_ptr());
        }
        let page = AnonMapping::new(table.largest_page() as usize)
            .map_err(|e| Error::os(&e, "get_tmp_page: mapping the temporary page"))?;
        let ptr = page.as_ptr();
        *slot = Some(page);
        Ok(ptr)
    }

    /// Ends postcopy: stops and joins the fault thread, then unregisters every block (waking
    /// any thread still blocked on a missing page), closes the userfaultfd, re-allows
    /// ballooning, re-locks memory per the mlock policy, frees the temporary pages; state ->
    /// END; calls [`IncomingHooks::shut`]. Needs [`Incoming::init`]; a second call fails.
    pub fn cleanup(&self) -> Result<()> {
        self.refuse_on_fault_thread("incoming_cleanup")?;
        let _control = self.control.lock();
        let Some(table) = self.table.read().clone() else {
            return Err(Error::invalid(
                "incoming_cleanup without incoming_init (or called twice)",
            ));
        };
        let active = self.active.write().take();
        let mut failure: Option<Error> = None;
        if let Some(active) = &active {
            if let Some(thread) = active.fault_thread.lock().take() {
                thread.stop();
            }
            for entry in table.entries() {
                if let Err(e) = active
                    .uffd
                    .unregister(entry.block.host, entry.block.length as usize)
                {
                    let err = Error::os(
                        &e,
                        format_args!("UFFDIO_UNREGISTER of RAM block {}", entry.block.name),
                    );
                    log::error!("incoming_cleanup: {err}");
                    failure.get_or_insert(err);
                }
            }
            self.hooks.balloon_inhibit(false);
            if let Err(e) = self.set_mlock(true) {
                log::error!("incoming_cleanup: re-locking memory: {e}");
            }
        }
        drop(active);
        let _ = self.set_state(State::End);
        let failed = failure.is_some() || self.counters.request_errors.load(Ordering::Relaxed) != 0;
        self.hooks.shut(failed);
        *self.tmp_page.lock() = None;
        *self.table.write() = None;
        failure.map_or(Ok(()), Err)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.table.read().is_some() {
            if let Err(e) = self.cleanup() {
                log::error!("dropping an incoming migration: cleanup: {e}");
            }
        }
    }
}
