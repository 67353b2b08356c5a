//! The destination side of postcopy: QEMU's `MigrationIncomingState` functions.
//!
//! Lifecycle, as driven by a hypervisor (see the README's sequence):
//! [`Incoming::new`] -> [`Incoming::supported_by_host`] -> [`Incoming::init`] (precopy may run)
//! -> [`Incoming::prepare_discard`] + [`Incoming::discard_range`]... ->
//! [`Incoming::enable_notify`] -> [`Incoming::place_page`] / [`Incoming::place_page_zero`]
//! from any thread (placement.rs), while the fault thread requests missing pages ->
//! [`Incoming::cleanup`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::active::{ActiveGuard, ActiveSlot};
use crate::destination::block::{BlockEntry, BlockName, BlockTable, RamBlock};
use crate::destination::blocktime::Blocktime;
use crate::destination::discard;
use crate::destination::fault_thread::{
    on_fault_thread_of, FaultThread, FaultThreadFailure, WaitStrategy,
};
use crate::destination::pending::Control;
use crate::error::{Error, Result};
use crate::state::State;
use crate::stats::{Counters, Stats};
use crate::sys::mapping::AnonMapping;

pub use super::host_support::check_host_support;
use super::host_support::check_ram_pages;

pub use super::placement::{Placement, RunPlacement};
use crate::sys::uffd::Uffd;

/// What the library needs from the hypervisor on the destination. Every method but
/// [`IncomingHooks::ram_blocks`] and [`IncomingHooks::request_page`] has a default.
pub trait IncomingHooks: Send + Sync {
    /// The guest's RAM blocks. Called by [`Incoming::supported_by_host`] and
    /// [`Incoming::init`] (which keeps the table until [`Incoming::cleanup`]).
    fn ram_blocks(&self) -> Result<Vec<RamBlock>>;

    /// Asks the source for `length` bytes at `offset` in `block` (`None`: the same block as
    /// the previous successful request). Runs on the fault thread; it may call
    /// [`Incoming::place_page`]. An `Err(errno)` is counted and logged; the page stays
    /// pending and requests pause (faults are still read and recorded pending) until
    /// [`Incoming::resend_pending`].
    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32>;

    /// As [`IncomingHooks::request_page`], with the block's table entry (its
    /// [`RamBlock::opaque`] among others) even when the name is not sent (`named` false).
    /// The default calls [`IncomingHooks::request_page`].
    fn request_page_in(
        &self,
        entry: &BlockEntry,
        named: bool,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        self.request_page(named.then_some(&entry.name), offset, length)
    }

    /// Runs on the fault thread, first thing (QEMU registers the thread with its RCU here).
    fn fault_thread_started(&self) {}

    /// Runs on the fault thread, last thing. `failure` is `None` when cleanup stopped it;
    /// otherwise why it stopped on its own (a fatal userfaultfd error, a panic): by then
    /// the failure is recorded ([`Incoming::fault_thread_failure`]) and the destination
    /// aborted ([`Incoming::abort`]: every missing page poisoned or zero-filled, so no
    /// fault waits for the thread that is gone).
    fn fault_thread_stopping(&self, _failure: Option<FaultThreadFailure>) {}

    /// Drops `[start, start+length)` of `block`. `None` (the default) lets the library do
    /// it (see [`crate::destination::discard::drop_range`]).
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

    /// Unlock (`false`, in [`Incoming::init`] before the first discard: locked memory
    /// refuses MADV_DONTNEED) or re-lock (`true`, at every cleanup after a successful init,
    /// before LISTEN too; and after an init that failed once unlocked) guest memory.
    /// `None` (the default) lets the library do it: with [`IncomingConfig::enable_mlock`],
    /// it munlocks the parts of this destination's blocks that are mlocked and mlocks
    /// exactly those again at cleanup (as they were: populated, or on fault), never
    /// munlockall/mlockall, which would act on every other VM of the process; without,
    /// nothing.
    fn mlock(&self, _lock: bool) -> Option<Result<()>> {
        None
    }
}

/// Tunables of an [`Incoming`].
#[derive(Debug, Clone)]
pub struct IncomingConfig {
    /// The guest's target page size (discards and bitmaps count in it): a power of two no
    /// larger than the host page size. Default 4096.
    pub target_page_size: u64,
    /// Whether guest memory is mlocked outside postcopy (QEMU's `-realtime mlock=on`): the
    /// library's own policy, without an [`IncomingHooks::mlock`], unlocks the locked parts
    /// of this destination's blocks at init and locks those again at cleanup.
    pub enable_mlock: bool,
    /// How the fault thread waits.
    pub wait: WaitStrategy,
    /// The library never calls [`IncomingHooks::shut`] (so never sends SHUT itself): the
    /// host sends it after completion (QEMU 7.2 does, after COMPLETED).
    pub never_send_shut: bool,
    /// Register for `UFFD_EVENT_REMOVE` (Linux 4.11): MADV_DONTNEED / MADV_REMOVE on
    /// received pages clears their received bits, so their next fault is requested again.
    /// Off by default: the kernel then makes every such madvise wait until the fault
    /// thread has read the event.
    pub track_remove: bool,
    /// Account blocktime and fault latency ([`Incoming::blocktime`]).
    pub blocktime: bool,
    /// [`Incoming::abort`] poisons lost pages where the kernel has UFFDIO_POISON (the
    /// default); `false` always wakes them with zero pages (data loss, logged).
    pub abort_poison: bool,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        IncomingConfig {
            target_page_size: 4096,
            enable_mlock: false,
            wait: WaitStrategy::Block,
            never_send_shut: false,
            track_remove: false,
            blocktime: false,
            abort_poison: true,
        }
    }
}

/// State that exists between enable_notify and cleanup.
pub(super) struct Active {
    pub(super) uffd: Arc<Uffd>,
    pub(super) table: Arc<BlockTable>,
    pub(super) zero_page: AnonMapping,
    pub(super) fault_thread: Mutex<Option<FaultThread>>,
    pub(super) control: Arc<Control>,
}

/// The destination of a postcopy migration (QEMU's `MigrationIncomingState`, RAM part).
pub struct Incoming {
    pub(super) hooks: Arc<dyn IncomingHooks>,
    pub(super) config: IncomingConfig,
    state: crate::state::StateCell,
    /// Serialises init / prepare_discard / enable_notify / cleanup.
    pub(super) control: Mutex<()>,
    pub(super) table: RwLock<Option<Arc<BlockTable>>>,
    pub(super) active: ActiveSlot,
    tmp_page: Mutex<Option<AnonMapping>>,
    pub(super) counters: Arc<Counters>,
    pub(super) blocktime: Arc<Blocktime>,
    /// Set by abort (also the fault thread's, after a failure), cleared by init.
    pub(super) aborted: Arc<AtomicBool>,
    /// Blocks whose transparent huge pages prepare_discard turned off (back on at cleanup).
    thp: super::thp::ThpOff,
    /// Block ranges the default mlock policy unlocked (locked again at cleanup).
    pub(super) unlocked: super::mlock::Unlocked,
}

impl Incoming {
    /// A destination with no migration in progress (state NONE). Fails with EINVAL when
    /// `config.target_page_size` is not a power of two (0 included) or is larger than the
    /// host page size (every block page is at least that; QEMU refuses it too).
    pub fn new(hooks: Arc<dyn IncomingHooks>, config: IncomingConfig) -> Result<Incoming> {
        let target = config.target_page_size;
        if !target.is_power_of_two() {
            return Err(Error::invalid(format!(
                "target page size {target} is not a power of two"
            )));
        }
        let host = super::block::host_page_size();
        if target > host {
            return Err(Error::invalid(format!(
                "target page size {target} is larger than the host page size {host}"
            )));
        }
        Ok(Incoming {
            hooks,
            config,
            state: Default::default(),
            control: Mutex::new(()),
            table: RwLock::new(None),
            active: ActiveSlot::new(),
            tmp_page: Mutex::new(None),
            thp: Default::default(),
            unlocked: Default::default(),
            counters: Default::default(),
            blocktime: Default::default(),
            aborted: Default::default(),
        })
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
        let mut stats = self.counters.snapshot();
        stats.pending_pages = self.pending_pages();
        stats
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

    pub(super) fn discard_with_hook(
        &self,
        block: &RamBlock,
        start: u64,
        length: u64,
    ) -> Result<()> {
        match self.hooks.discard_range(block, start, length) {
            Some(result) => result,
            None => discard::drop_range(block, start, length),
        }
    }

    /// Reads the RAM blocks, validates them, unlocks guest memory per the mlock policy
    /// ([`IncomingHooks::mlock`] with `false`: locked memory refuses MADV_DONTNEED), and
    /// discards all of their memory so that every page will fault later; state NONE ->
    /// ADVISE. `ram_pages` (the size of the guest's RAM address space in target pages; QEMU
    /// passes `last_ram_offset() >> TARGET_PAGE_BITS`) is checked when non-zero: a block
    /// ending (RAM offset + length) past it is refused with EINVAL. A larger value (gaps,
    /// resizable blocks) is fine.
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
        let table =
            BlockTable::with_target_page(self.hooks.ram_blocks()?, self.config.target_page_size)?;
        check_ram_pages(&table, ram_pages, self.config.target_page_size)?;
        // Locked memory refuses MADV_DONTNEED: unlock before the first discard (QEMU
        // unlocks in its host check, before init); cleanup locks again.
        self.unlock_memory(&table)?;
        for entry in table.entries() {
            if let Err(e) = self.discard_with_hook(&entry.block, 0, entry.block.length) {
                if let Err(relock) = self.relock_memory() {
                    log::error!("incoming_init: re-locking memory after a failure: {relock}");
                }
                return Err(e);
            }
        }
        // After the discard: the blocks' page tables are empty, so reading smaps is cheap.
        self.thp.plan(&table);
        if state == State::End {
            self.set_state(State::None)?;
        }
        self.set_state(State::Advise)?;
        self.blocktime.reset(self.config.blocktime);
        // Known from init (ADVISE) on, as QEMU 7.2 knows it from its host check: a migration that
        // ends before LISTEN (in precopy) still reports blocktime, zero (enable_notify sets
        // it again from the userfaultfd it opens).
        self.blocktime
            .set_thread_id_available(kernel_reports_thread_ids());
        self.aborted.store(false, Ordering::Release);
        *self.table.write() = Some(Arc::new(table));
        Ok(())
    }

    pub(super) fn require_table(&self, what: &str) -> Result<Arc<BlockTable>> {
        self.table.read().clone().ok_or_else(|| {
            Error::invalid(format!("{what} before incoming_init (or after cleanup)"))
        })
    }

    /// Turns transparent huge pages off (MADV_NOHUGEPAGE) on the host-page blocks so that
    /// discards really drop pages and no THP collapse fills a hole; state -> DISCARD. Only
    /// where THP could back the memory: parts with MADV_HUGEPAGE, or THP-eligible without
    /// a flag (system setting `always`), as init read them from /proc/self/smaps; parts
    /// already MADV_NOHUGEPAGE or not eligible are left alone. [`Incoming::cleanup`] sets
    /// MADV_HUGEPAGE on what this turned off, and only there.
    pub fn prepare_discard(&self) -> Result<()> {
        let _control = self.control.lock();
        self.require_table("prepare_discard")?;
        let state = self.state();
        if !matches!(state, State::Advise | State::Discard) {
            return Err(Error::invalid(format!(
                "prepare_discard in state {state:?}"
            )));
        }
        self.thp.turn_off();
        self.set_state(State::Discard)?;
        Ok(())
    }

    /// Drops `[start, start+length)` (bytes) of block `name` and clears its received bits:
    /// allowed in ADVISE and DISCARD (the first one in ADVISE calls
    /// [`Incoming::prepare_discard`], THP off, state DISCARD, before dropping anything, as
    /// the first discard command does), and after LISTEN (LISTENING, RUNNING: a balloon or
    /// virtio-mem dropping received pages), where their next fault is then requested again
    /// (QEMU's ram_discard_range clears its receivedmap the same way). The range must be
    /// aligned to the block's page size and inside it. An empty range (aligned start at
    /// most the block length) is skipped and counted ([`Stats::discard_ranges_empty`]).
    /// After LISTEN, a placement of the same pages may race the discard: the page then ends
    /// either placed and received, or dropped and not received (its next fault requested).
    /// After an abort (or a failed fault thread) it fails with EPIPE and drops nothing: no
    /// page can be requested any more, so a dropped page would never come back.
    pub fn discard_range(&self, name: &str, start: u64, length: u64) -> Result<()> {
        let table = self.require_table("discard_range")?;
        let state = self.state();
        let live = matches!(state, State::Listening | State::Running);
        if !live && !matches!(state, State::Advise | State::Discard) {
            return Err(Error::invalid(format!("discard_range in state {state:?}")));
        }
        let entry = table
            .by_name(name)
            .ok_or_else(|| Error::invalid(format!("discard_range: no RAM block named {name:?}")))?;
        discard::check_range(&entry.block, start, length)?;
        if length == 0 {
            self.count_empty_discard();
            return Ok(());
        }
        if state == State::Advise {
            // No discard before THP is off for its block: khugepaged could collapse over
            // the hole before registration, leaving a present zero page that never faults.
            self.prepare_discard()?;
        }
        if live && self.aborted.load(Ordering::Acquire) {
            return Err(Error::new(
                libc::EPIPE,
                "discard_range after an abort: no page can be requested any more",
            ));
        }
        if live && self.config.track_remove {
            // The kernel holds the madvise until the fault thread reads the REMOVE event:
            // from the fault thread itself that would never return.
            self.refuse_on_fault_thread("discard_range with track_remove")?;
        }
        self.discard_received(entry, start, length)
    }

    /// Clears the received bits of a range (QEMU's ram_discard_range clears its
    /// receivedmap too) and drops its pages, safe against a placement of the same pages
    /// (see [`crate::destination::received::ReceivedMap::discard`]).
    fn discard_received(&self, entry: &BlockEntry, start: u64, length: u64) -> Result<()> {
        entry.received.discard(
            start >> entry.target_shift,
            length >> entry.target_shift,
            || self.discard_with_hook(&entry.block, start, length),
        )
    }

    fn count_empty_discard(&self) {
        self.counters
            .discard_ranges_empty
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Applies one QEMU `POSTCOPY_RAM_DISCARD` command (`bytes`: the whole command with its
    /// `0x08` envelope, or just its payload): decodes it, checks the state (the first
    /// discard in ADVISE calls [`Incoming::prepare_discard`]), the block name and every
    /// range (aligned to the block's page size, inside the block), then drops the ranges.
    /// A bad command is rejected whole, before any page is touched. Empty ranges (QEMU
    /// 2.6-2.9 sources send a trailing `(block_length, 0)`) are skipped and counted
    /// ([`Stats::discard_ranges_empty`]). Returns the number of non-empty ranges dropped.
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
                Err(e) => return Err(Error::new(e.errno(), format!("discard command: {e}"))),
            }
        } else {
            crate::wire::decode_discard_payload(bytes)
                .map_err(|e| Error::new(e.errno(), format!("discard command: {e}")))?
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
        let mut dropped = 0;
        for range in discard.ranges() {
            if range.length == 0 {
                self.count_empty_discard();
                continue;
            }
            self.discard_received(entry, range.start, range.length)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Makes the next page request name its block again (call after the return path to the
    /// source was re-established).
    pub fn reset_request_block(&self) {
        if let Some(active) = self.active.enter() {
            if let Some(thread) = active.fault_thread.lock().as_ref() {
                thread
                    .shared()
                    .state
                    .name_next_request
                    .store(true, Ordering::Release);
            }
        }
    }

    /// Refuses calls that would wait for the fault thread when made from it (a callback).
    /// Independent of the active state, so it also holds while cleanup runs.
    pub(super) fn refuse_on_fault_thread(&self, what: &str) -> Result<()> {
        if on_fault_thread_of(self.owner_id()) {
            return Err(Error::new(
                libc::EDEADLK,
                format!("{what} called from the fault thread (a request_page callback); it would wait for itself"),
            ));
        }
        Ok(())
    }

    /// This destination's identity for [`on_fault_thread_of`].
    pub(super) fn owner_id(&self) -> usize {
        Arc::as_ptr(&self.counters) as usize
    }

    /// A counted reference to the state between enable_notify and cleanup, for control
    /// calls that hold it across waits.
    pub(super) fn active(&self, what: &str) -> Result<Arc<Active>> {
        self.active.arc().ok_or_else(|| not_active(what))
    }

    /// The state between enable_notify and cleanup, for one placement: no lock, no
    /// reference count; cleanup waits until the guard drops.
    #[inline(always)]
    pub(super) fn placing(&self, what: &'static str) -> Result<ActiveGuard<'_>> {
        match self.active.enter() {
            Some(guard) => Ok(guard),
            None => Err(not_active(what)),
        }
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
    /// ballooning (after enable_notify), puts back the transparent-huge-page state
    /// prepare_discard changed, re-locks memory per the mlock policy (also before LISTEN:
    /// init unlocked it), frees the temporary pages; state -> END; calls
    /// [`IncomingHooks::shut`]. Needs [`Incoming::init`]; a second call fails.
    /// A failed end (`shut(failed = true)`) without [`Incoming::abort`] counts every host
    /// page not received, requested or not, in [`Stats::pages_lost`] and logs them.
    pub fn cleanup(&self) -> Result<()> {
        self.refuse_on_fault_thread("incoming_cleanup")?;
        let _control = self.control.lock();
        let Some(table) = self.table.read().clone() else {
            return Err(Error::invalid(
                "incoming_cleanup without incoming_init (or called twice)",
            ));
        };
        // Waits for placements in flight: none touches the state after this.
        let active = self.active.take();
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
        }
        drop(active);
        self.thp.restore();
        // init unlocked memory whatever happened next: lock it again also when cleanup
        // comes before LISTEN (QEMU 7.2 cleans up in ADVISE when postcopy goes unused).
        if let Err(e) = self.relock_memory() {
            log::error!("incoming_cleanup: re-locking memory: {e}");
        }
        // Failed: cleanup failed, postcopy was aborted, or pages are still pending (a request
        // failed and was never recovered). A request that failed and was re-sent with
        // success does not count.
        let failed =
            failure.is_some() || self.aborted.load(Ordering::Acquire) || self.pending_pages() != 0;
        if failed {
            self.count_lost_at_end(&table);
        }
        let _ = self.set_state(State::End);
        if !self.config.never_send_shut {
            self.hooks.shut(failed);
        }
        *self.tmp_page.lock() = None;
        *self.table.write() = None;
        failure.map_or(Ok(()), Err)
    }
}

#[cold]
#[inline(never)]
fn not_active(what: &str) -> Error {
    Error::invalid(format!("{what} before enable_notify (or after cleanup)"))
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

/// Whether the kernel's userfaultfd offers UFFD_FEATURE_THREAD_ID (false when there is no
/// userfaultfd at all: enable_notify reports that).
fn kernel_reports_thread_ids() -> bool {
    crate::sys::uffd::probe()
        .map(|caps| caps.features & crate::sys::uffd::feature::THREAD_ID != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHooks;

    impl IncomingHooks for NoHooks {
        fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
            Ok(Vec::new())
        }

        fn request_page(
            &self,
            _: Option<&BlockName>,
            _: u64,
            _: u64,
        ) -> std::result::Result<(), i32> {
            Ok(())
        }
    }

    #[test]
    fn the_config_is_checked_when_the_destination_is_made() {
        for bad in [0, 3, 4097] {
            let config = IncomingConfig {
                target_page_size: bad,
                ..IncomingConfig::default()
            };
            let err = Incoming::new(Arc::new(NoHooks), config).err().unwrap();
            assert_eq!(err.errno(), libc::EINVAL);
            assert!(err.to_string().contains("power of two"), "{err}");
        }
        let ok = Incoming::new(Arc::new(NoHooks), IncomingConfig::default()).unwrap();
        assert_eq!(ok.state(), State::None);
    }
}
