//! Issue 17 item 7: a discard after LISTEN racing a placement of the same page. The
//! discard clears the received bits, then drops the pages; a placement whose ioctl and
//! bookkeeping land between the two would leave the page marked received but absent, so
//! that its next fault reads as "late", is never requested, and the thread hangs. The
//! library must order this itself: the page ends either present, or not received and
//! requested at its next fault.

mod common;
#[path = "common/keep_on_panic.rs"]
mod keep_on_panic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::thread;

use common::*;
use keep_on_panic::KeepOnPanic;
use parking_lot::Mutex;
use postcopy_ram::{BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result};

/// Serves every request at once; its discard hook can be held between the clearing of
/// the received bits and the drop of the pages.
struct Hooks {
    block: RamBlock,
    incoming: Mutex<Weak<Incoming>>,
    hold_discard: AtomicBool,
    in_discard: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    requests: Mutex<Vec<u64>>,
}

impl Hooks {
    fn place(&self, offset: u64) -> Result<postcopy_ram::Placement> {
        let mut page = vec![0u8; 4096];
        page_pattern("ram", offset, &mut page);
        let incoming = self.incoming.lock().upgrade().expect("incoming alive");
        // SAFETY: `page` holds 4096 bytes.
        unsafe { incoming.place_page(self.block.host + offset as usize, page.as_ptr(), 4096) }
    }
}

impl IncomingHooks for Hooks {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(vec![self.block.clone()])
    }

    fn request_page(
        &self,
        _: Option<&BlockName>,
        offset: u64,
        _: u64,
    ) -> std::result::Result<(), i32> {
        self.requests.lock().push(offset);
        self.place(offset).map(|_| ()).map_err(|e| e.errno())
    }

    fn discard_range(&self, _: &RamBlock, _: u64, _: u64) -> Option<Result<()>> {
        if self.hold_discard.swap(false, Ordering::SeqCst) {
            self.in_discard.lock().take().unwrap().send(()).unwrap();
            self.release.lock().take().unwrap().recv().unwrap();
        }
        None // the library drops the pages (MADV_DONTNEED)
    }
}

#[test]
fn a_placement_inside_a_live_discard_leaves_the_page_requestable() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(4 * 4096));
    let (in_tx, in_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let hooks = Arc::new(Hooks {
        block: mem.block("ram"),
        incoming: Mutex::new(Weak::new()),
        hold_discard: AtomicBool::new(false),
        in_discard: Mutex::new(Some(in_tx)),
        release: Mutex::new(Some(go_rx)),
        requests: Mutex::new(Vec::new()),
    });
    let incoming = Arc::new(Incoming::new(hooks.clone(), IncomingConfig::default()).unwrap());
    *hooks.incoming.lock() = Arc::downgrade(&incoming);
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    // A balloon drops page 1 while the source's copy of page 1 is being placed.
    hooks.hold_discard.store(true, Ordering::SeqCst);
    let discarder = {
        let incoming = incoming.clone();
        thread::spawn(move || incoming.discard_range("ram", 4096, 4096))
    };
    in_rx.recv().unwrap(); // received bits cleared, pages not dropped yet
    hooks.place(4096).unwrap(); // ioctl and bookkeeping inside the discard
    go_tx.send(()).unwrap();
    join_within(discarder, 5, "the discard").unwrap();
    let entry_received = incoming.blocks().unwrap().entries()[0].is_received(4096);
    assert!(
        !entry_received,
        "page 1 was dropped: it must not read as received"
    );
    // The next touch faults, is requested, and gets the page.
    let base = mem.addr;
    let reader = thread::spawn(move || check_page(base + 4096, "ram", 4096));
    assert!(join_within(reader, 5, "a reader of the discarded page"));
    assert_eq!(*hooks.requests.lock(), vec![4096]);
    let s = incoming.stats();
    assert_eq!(s.late_faults, 0, "{s:?}");
    incoming.cleanup().unwrap();
}
