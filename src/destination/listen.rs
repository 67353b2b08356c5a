//! LISTEN: `enable_notify` reads the block table again, opens a userfaultfd, registers the
//! blocks and starts the fault thread, publishing the active state first.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;

use super::block::BlockTable;
use super::fault_thread::{FaultState, FaultThread};
use super::host_support::{feature_names, features_needed};
use super::incoming::{Active, Incoming};
use super::pending::Control;
use super::registration::Registration;
use crate::error::{Error, Result};
use crate::state::State;
use crate::sys::mapping::AnonMapping;
use crate::sys::uffd::{self, feature, Uffd};

impl Incoming {
    /// Opens a userfaultfd, registers every block for missing-page faults, starts the fault
    /// thread, inhibits ballooning; state -> LISTENING. The block table is read again
    /// first ([`IncomingHooks::ram_blocks`]: RAM may have been resized during ADVISE): the
    /// received bits of blocks by the same name are kept, and what is new (a grown tail, a
    /// new block) is discarded so that it faults.
    pub fn enable_notify(&self) -> Result<()> {
        self.refuse_on_fault_thread("enable_notify")?;
        let _control = self.control.lock();
        let old_table = self.require_table("enable_notify")?;
        if self.active.is_set() {
            return Err(Error::new(libc::EBUSY, "enable_notify called twice"));
        }
        let state = self.state();
        if !matches!(state, State::Advise | State::Discard | State::Listening) {
            return Err(Error::invalid(format!("enable_notify in state {state:?}")));
        }
        let table = Arc::new(self.reread_table(&old_table)?);
        let caps = uffd::probe()?;
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
        if self.config.track_remove && caps.features & feature::EVENT_REMOVE == 0 {
            return Err(Error::new(
                libc::ENOTSUP,
                "track_remove: userfaultfd on this kernel lacks UFFD_FEATURE_EVENT_REMOVE (Linux 4.11)",
            ));
        }
        let optional = feature::THREAD_ID
            | feature::POISON
            | if self.config.track_remove {
                feature::EVENT_REMOVE
            } else {
                0
            };
        let uffd = Arc::new(Uffd::open(needed | (caps.features & optional))?);
        self.blocktime
            .set_thread_id_available(uffd.features() & feature::THREAD_ID != 0);
        let zero_page = AnonMapping::new(table.largest_page() as usize)
            .map_err(|e| Error::os(&e, "mapping the zero page"))?;
        let registration = Registration::register(&uffd, &table)?;
        let control = Arc::new(Control::default());
        // Publish the active state before the fault thread starts: its first request may
        // place the page at once (from the callback), which needs it.
        let active = Arc::new(Active {
            uffd: uffd.clone(),
            table: table.clone(),
            zero_page,
            fault_thread: Mutex::new(None),
            control: control.clone(),
        });
        *self.table.write() = Some(table.clone());
        if self.active.publish(active.clone()).is_err() {
            // Not reachable: `control` serialises enable_notify and cleanup, and the slot
            // was checked empty above.
            return Err(Error::new(libc::EBUSY, "enable_notify called twice"));
        }
        let state = FaultState {
            control,
            blocktime: self.blocktime.clone(),
            name_next_request: AtomicBool::new(false),
            track_remove: self.config.track_remove,
            owner: self.owner_id(),
            on_failure: {
                let active = Arc::downgrade(&active);
                let (poison, counters, aborted) = (
                    self.config.abort_poison,
                    self.counters.clone(),
                    self.aborted.clone(),
                );
                Box::new(move || {
                    if let Some(active) = active.upgrade() {
                        let _ = Incoming::abort_active(&active, poison, &counters, &aborted);
                    }
                })
            },
        };
        let thread = match FaultThread::spawn(
            uffd.clone(),
            table.clone(),
            self.hooks.clone(),
            self.counters.clone(),
            state,
            self.config.wait,
        ) {
            Ok(thread) => thread,
            Err(e) => {
                drop(self.active.take());
                return Err(e);
            }
        };
        registration.keep();
        *active.fault_thread.lock() = Some(thread);
        self.hooks.balloon_inhibit(true);
        self.set_state(State::Listening)?;
        Ok(())
    }

    /// Reads the blocks again for enable_notify and carries the received bits over.
    fn reread_table(&self, old: &BlockTable) -> Result<BlockTable> {
        let table =
            BlockTable::with_target_page(self.hooks.ram_blocks()?, self.config.target_page_size)?;
        for entry in table.entries() {
            let b = &entry.block;
            let kept = match old.by_name(&b.name) {
                Some(o) if o.block.host == b.host && o.block.page_size == b.page_size => {
                    entry.received.copy_from(&o.received);
                    o.block.length.min(b.length)
                }
                _ => 0,
            };
            if kept < b.length {
                if self.unlocked.in_use() {
                    // Grown or new since init: locked (mlockall's MCL_FUTURE, say) refuses
                    // the discard; unlocked and locked again at cleanup like the rest.
                    let new_part = (b.host + kept as usize, (b.length - kept) as usize);
                    self.unlocked.unlock(&[new_part])?;
                }
                log::debug!(
                    "enable_notify: RAM block {} changed since init; discarding [{kept:#x}, {:#x})",
                    b.name,
                    b.length
                );
                self.discard_with_hook(b, kept, b.length - kept)?;
            }
        }
        Ok(table)
    }
}
