//! Unit tests of the fault thread's bookkeeping (`handle_message`, `resend`).
use super::*;
use crate::destination::block::{Backing, BlockName, RamBlock};
use crate::sys::uffd::PAGEFAULT_FLAG_WRITE;
use parking_lot::Mutex;
use std::sync::atomic::Ordering::Relaxed;

/// Records requests; fails them with `fail` (an errno) or panics when `panic` is set.
#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<(Option<String>, u64, u64)>>,
    fail: Mutex<Option<i32>>,
    panic: AtomicBool,
}

impl IncomingHooks for Recorder {
    fn ram_blocks(&self) -> crate::Result<Vec<RamBlock>> {
        Ok(Vec::new())
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        if self.panic.load(Relaxed) {
            panic!("request hook panics");
        }
        self.requests
            .lock()
            .push((block.map(|b| b.as_str().to_owned()), offset, length));
        self.fail.lock().map_or(Ok(()), Err)
    }
}

/// The host page size (the blocks' page size).
fn page() -> usize {
    crate::destination::block::host_page_size() as usize
}

const A: usize = 0x10_0000_0000;
const B: usize = 0x20_0000_0000;

fn table() -> BlockTable {
    let block = |name: &str, host| RamBlock {
        name: name.into(),
        host,
        offset: 0,
        length: 8 * page() as u64,
        page_size: page() as u64,
        backing: Backing::Anonymous { shared: false },
        opaque: 0,
    };
    BlockTable::new(vec![block("a", A), block("b", B)]).unwrap()
}

fn fault(addr: usize) -> UffdMsg {
    UffdMsg::for_test(EVENT_PAGEFAULT, PAGEFAULT_FLAG_WRITE, addr as u64)
}

struct Rig {
    table: BlockTable,
    hooks: Recorder,
    counters: Counters,
    state: FaultState,
    last: usize,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            table: table(),
            hooks: Recorder::default(),
            counters: Counters::default(),
            state: FaultState {
                control: Default::default(),
                blocktime: Default::default(),
                name_next_request: AtomicBool::new(false),
                track_remove: false,
                owner: 1,
                on_failure: Box::new(|| {}),
            },
            last: usize::MAX,
        }
    }

    fn deliver(&mut self, msg: UffdMsg) {
        handle_message(
            &self.table,
            &self.hooks,
            &self.counters,
            &self.state,
            &msg,
            &mut self.last,
        );
    }

    fn resend(&mut self) -> Outcome {
        resend(
            &self.table,
            &self.hooks,
            &self.counters,
            &self.state,
            &mut self.last,
        )
    }

    fn requests(&self) -> Vec<(Option<String>, u64, u64)> {
        std::mem::take(&mut *self.hooks.requests.lock())
    }
}

#[test]
fn a_request_names_its_block_only_when_the_block_changes() {
    let mut r = Rig::new();
    r.deliver(fault(A + 2 * page() + 123));
    r.deliver(fault(A + 5 * page()));
    r.deliver(fault(B));
    r.deliver(fault(A + page()));
    assert_eq!(
        r.requests(),
        vec![
            (Some("a".into()), 2 * page() as u64, page() as u64),
            (None, 5 * page() as u64, page() as u64),
            (Some("b".into()), 0, page() as u64),
            (Some("a".into()), page() as u64, page() as u64),
        ]
    );
    let s = r.counters.snapshot();
    assert_eq!((s.faults, s.requests), (4, 4));
}

#[test]
fn duplicate_late_outside_and_foreign_messages_send_no_request() {
    let mut r = Rig::new();
    r.deliver(fault(A));
    r.deliver(fault(A + 8)); // same page, still requested
    let entry = &r.table.entries()[0];
    entry.received.set_host_pages(3, 1);
    r.deliver(fault(A + 3 * page())); // already placed
    r.deliver(fault(A + 8 * page())); // just past block a
    r.deliver(UffdMsg::for_test(0x15, 0, 0)); // UFFD_EVENT_REMOVE
    assert_eq!(r.requests().len(), 1);
    let s = r.counters.snapshot();
    assert_eq!(s.faults, 4);
    assert_eq!(s.requests, 1);
    assert_eq!(s.duplicate_faults, 1);
    assert_eq!(s.late_faults, 1);
    assert_eq!(s.faults_outside, 1);
    assert_eq!(s.unexpected_events, 1);
    // The invariant the C tests check after every run.
    assert_eq!(
        s.faults,
        s.requests + s.request_errors + s.duplicate_faults + s.late_faults + s.faults_outside
    );
}

#[test]
fn a_failed_request_keeps_its_page_pending_and_pauses_until_resend() {
    let mut r = Rig::new();
    r.deliver(fault(A));
    *r.hooks.fail.lock() = Some(libc::EPIPE);
    r.deliver(fault(A + page()));
    assert!(r.state.control.paused.load(Relaxed));
    *r.hooks.fail.lock() = None;
    // While paused: the same page is a duplicate, a new one is recorded pending.
    r.deliver(fault(A + page()));
    r.deliver(fault(B + 2 * page()));
    assert_eq!(r.requests().len(), 2, "the first one and the failed one");
    let s = r.counters.snapshot();
    assert_eq!((s.requests, s.request_errors, s.paused_faults), (1, 1, 1));
    assert_eq!((s.duplicate_faults, s.last_request_errno), (1, libc::EPIPE));
    // The re-send asks again for every pending page, the one whose request had gone out
    // too (it may have been lost with the channel), the first naming its block.
    assert_eq!(r.resend(), Ok(3));
    assert!(!r.state.control.paused.load(Relaxed));
    assert_eq!(
        r.requests(),
        vec![
            (Some("a".into()), 0, page() as u64),
            (None, page() as u64, page() as u64),
            (Some("b".into()), 2 * page() as u64, page() as u64),
        ]
    );
    assert_eq!(r.counters.snapshot().resent, 3);
}

#[test]
fn a_panicking_request_hook_is_a_failed_request() {
    let mut r = Rig::new();
    r.hooks.panic.store(true, Relaxed);
    r.deliver(fault(B + page()));
    r.hooks.panic.store(false, Relaxed);
    r.deliver(fault(B + page()));
    let s = r.counters.snapshot();
    assert_eq!((s.requests, s.request_errors), (0, 1));
    assert_eq!(s.last_request_errno, libc::EFAULT);
    assert_eq!(r.resend(), Ok(1));
    assert_eq!(
        r.requests(),
        vec![(Some("b".into()), page() as u64, page() as u64)]
    );
}

#[test]
fn a_reset_names_the_next_request_even_within_a_batch() {
    let mut r = Rig::new();
    r.deliver(fault(A));
    r.state.name_next_request.store(true, Relaxed);
    r.deliver(fault(A + page()));
    r.deliver(fault(A + 2 * page()));
    let named: Vec<bool> = r.requests().iter().map(|q| q.0.is_some()).collect();
    assert_eq!(named, vec![true, true, false]);
}

#[test]
fn remove_events_clear_received_pages_when_tracked() {
    let mut r = Rig::new();
    r.state.track_remove = true;
    r.table.entries()[0].received.set_host_pages(0, 4);
    let msg = UffdMsg::for_test(EVENT_REMOVE, (A + page()) as u64, (A + 3 * page()) as u64);
    r.deliver(msg);
    let e = &r.table.entries()[0];
    let got: Vec<bool> = (0..4).map(|p| e.received.host_page_received(p)).collect();
    assert_eq!(got, vec![true, false, false, true]);
    assert_eq!(r.counters.snapshot().remove_events, 1);
}
