//! Issue 9 items 7, 8, 9 and 13: races between the fault thread, its callbacks and the
//! host's calls. Written against the Rust API that predates their fixes, so each one can
//! be run on the old code to see it fail.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::thread;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use postcopy_ram::{BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result};

type OnRequest = dyn Fn(&Incoming, usize, Option<&BlockName>, u64, u64) -> std::result::Result<(), i32>
    + Send
    + Sync;

/// Hooks whose request callback is a closure given the destination and the call number.
struct Hooks {
    blocks: Vec<RamBlock>,
    incoming: Mutex<Weak<Incoming>>,
    calls: AtomicUsize,
    named: Mutex<Vec<bool>>,
    on_request: Box<OnRequest>,
}

impl Hooks {
    fn new(blocks: Vec<RamBlock>, on_request: Box<OnRequest>) -> (Arc<Hooks>, Arc<Incoming>) {
        let hooks = Arc::new(Hooks {
            blocks,
            incoming: Mutex::new(Weak::new()),
            calls: AtomicUsize::new(0),
            named: Mutex::new(Vec::new()),
            on_request,
        });
        let incoming = Arc::new(Incoming::new(hooks.clone(), IncomingConfig::default()).unwrap());
        *hooks.incoming.lock() = Arc::downgrade(&incoming);
        (hooks, incoming)
    }
}

impl IncomingHooks for Hooks {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(self.blocks.clone())
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.named.lock().push(block.is_some());
        let incoming = self.incoming.lock().upgrade().expect("alive");
        (self.on_request)(&incoming, n, block, offset, length)
    }
}

fn place_pattern(incoming: &Incoming, base: usize, offset: u64) -> std::result::Result<(), i32> {
    let mut page = vec![0u8; 4096];
    page_pattern("ram", offset, &mut page);
    // SAFETY: `page` holds 4096 bytes.
    unsafe { incoming.place_page(base + offset as usize, page.as_ptr(), 4096) }
        .map(|_| ())
        .map_err(|e| e.errno())
}

/// Item 7: the first request's callback places the page at once, from the fault thread.
/// The destination must be active by then, however early the thread runs.
#[test]
fn a_request_that_places_at_once_never_sees_an_inactive_destination() {
    require_uffd!();
    for round in 0..30 {
        // Never unmapped: a toucher stranded by the bug must not fault on freed memory.
        let mem = std::mem::ManuallyDrop::new(GuestMem::anon(4 * 4096));
        let base = mem.addr;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let e2 = errors.clone();
        let (_hooks, incoming) = Hooks::new(
            vec![mem.block("ram")],
            Box::new(move |inc, _, _, off, _| {
                place_pattern(inc, base, off).inspect_err(|&e| e2.lock().push(e))
            }),
        );
        incoming.init(0).unwrap();
        // A thread keeps dropping and reading page 0 (zeros) until the block is registered:
        // then it faults at once, before the fault thread has even started, and reads the
        // served page.
        let toucher = thread::spawn(move || loop {
            // SAFETY: our guest memory.
            let v = unsafe {
                libc::madvise(base as *mut _, 4096, libc::MADV_DONTNEED);
                std::ptr::read_volatile(base as *const u64)
            };
            if v != 0 {
                break;
            }
        });
        thread::sleep(Duration::from_millis(1));
        incoming.enable_notify().unwrap();
        join_within(toucher, 5, "the toucher (its page request was lost)");
        incoming.cleanup().unwrap();
        assert!(
            errors.lock().is_empty(),
            "round {round}: placement from the first request failed: {:?}",
            errors.lock()
        );
    }
}

/// Item 8: the return path is reset while a batch of faults is being served (here, by the
/// callback of the batch's first request). The very next request must name its block.
#[test]
fn a_reset_in_the_middle_of_a_batch_names_the_next_request() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let base = mem.addr;
    let (hooks, incoming) = Hooks::new(
        vec![mem.block("ram")],
        Box::new(move |inc, n, _, _, _| {
            match n {
                // Hold the first request while three more faults queue up.
                1 => thread::sleep(Duration::from_millis(300)),
                // First request of the next batch: the return path is re-established.
                2 => inc.reset_request_block(),
                _ => {}
            }
            Ok(())
        }),
    );
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let t0 = thread::spawn(move || check_page(base, "ram", 0));
    thread::sleep(Duration::from_millis(50));
    let rest: Vec<_> = (1..4u64)
        .map(|p| thread::spawn(move || check_page(base + p as usize * 4096, "ram", p * 4096)))
        .collect();
    wait_for(5, "four requests", || {
        hooks.calls.load(Ordering::SeqCst) == 4
    });
    for p in 0..4 {
        place_pattern(&incoming, base, p * 4096).unwrap();
    }
    assert!(join_within(t0, 5, "t0"));
    for t in rest {
        assert!(join_within(t, 5, "a toucher"));
    }
    let named = hooks.named.lock().clone();
    assert_eq!(
        named,
        vec![true, false, true, false],
        "request 3 follows the reset"
    );
    incoming.cleanup().unwrap();
}

/// Item 9: a run whose source becomes unreadable part-way. The pages placed before the
/// error are placed (the kernel woke them): they must be counted and known as received.
#[test]
fn pages_placed_before_an_error_are_kept() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let base = mem.addr;
    let (_hooks, incoming) = Hooks::new(vec![mem.block("ram")], Box::new(|_, _, _, _, _| Ok(())));
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let t = thread::spawn(move || check_page(base + 4096, "ram", 4096));
    wait_for(5, "the fault on page 1", || incoming.stats().requests == 1);
    // Source: pages 0..4 readable, page 4 not.
    let src = GuestMem::anon(8 * 4096);
    for p in 0..4u64 {
        let mut page = vec![0u8; 4096];
        page_pattern("ram", p * 4096, &mut page);
        // SAFETY: inside our source mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                page.as_ptr(),
                (src.addr + p as usize * 4096) as *mut u8,
                4096,
            )
        };
    }
    // SAFETY: our own mapping.
    let rc = unsafe { libc::mprotect((src.addr + 4 * 4096) as *mut _, 4 * 4096, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    // SAFETY: `src` is 8 pages long (half unreadable, which the kernel reports as EFAULT).
    let err = unsafe { incoming.place_pages(base, src.addr as *const u8, 8 * 4096) }.unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(join_within(t, 5, "the thread on page 1"));
    let s = incoming.stats();
    assert_eq!(
        s.pages_placed, 4,
        "the four pages placed before the error: {s:?}"
    );
    // Placing them again finds them present, and the rest can still be placed.
    // SAFETY: as above, the first four pages only.
    let again = unsafe { incoming.place_pages(base, src.addr as *const u8, 4 * 4096) }.unwrap();
    assert_eq!((again.placed, again.already_present), (0, 4));
    incoming.cleanup().unwrap();
}

/// Item 13: `cleanup` (or `enable_notify`) called from `request_page` while another thread
/// runs cleanup: -EDEADLK, not a deadlock.
#[test]
fn forbidden_calls_from_the_callback_during_cleanup_fail_with_edeadlk() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    let base = mem.addr;
    let (tx, rx) = mpsc::channel();
    let cleanup_started = Arc::new(AtomicBool::new(false));
    let started = cleanup_started.clone();
    let tx = Mutex::new(tx);
    let (_hooks, incoming) = Hooks::new(
        vec![mem.block("ram")],
        Box::new(move |inc, _, _, _, _| {
            while !started.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            // Let cleanup take the active state and wait to join this thread.
            thread::sleep(Duration::from_millis(200));
            let c = inc.cleanup().map_err(|e| e.errno());
            let e = inc.enable_notify().map_err(|e| e.errno());
            let _ = tx.lock().send((c, e));
            Ok(())
        }),
    );
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let _toucher = thread::spawn(move || {
        // SAFETY: our guest memory; woken by cleanup's unregister.
        unsafe { std::ptr::read_volatile(base as *const u8) }
    });
    wait_for(5, "the request", || incoming.stats().faults == 1);
    let inc2 = incoming.clone();
    let cleaner = thread::spawn(move || {
        cleanup_started.store(true, Ordering::SeqCst);
        inc2.cleanup()
    });
    let (c, e) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback deadlocked in cleanup/enable_notify");
    assert_eq!(c, Err(libc::EDEADLK));
    assert_eq!(e, Err(libc::EDEADLK));
    join_within(cleaner, 5, "cleanup").unwrap();
}
