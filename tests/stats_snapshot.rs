//! Issue 17 item 9: the statistics are a consistent snapshot. Read during a fault storm
//! (duplicates, late faults, refused requests and their re-sends), every snapshot keeps
//! the documented relation `faults == requests + request_errors + duplicate_faults +
//! late_faults + faults_outside + paused_faults`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::hooks::{serve, TestHooks};
use common::*;
use postcopy_ram::{IncomingConfig, State, Stats};

const PAGES: usize = 2048;
const FAULTERS: usize = 4;

fn holds(s: &Stats) -> bool {
    s.faults
        == s.requests
            + s.request_errors
            + s.duplicate_faults
            + s.late_faults
            + s.faults_outside
            + s.paused_faults
}

#[test]
fn every_snapshot_during_a_fault_storm_keeps_faults_the_sum_of_its_categories() {
    require_uffd!();
    let mem = GuestMem::anon(PAGES * 4096);
    let served = Arc::new(AtomicU64::new(0));
    let hooks = TestHooks::new(vec![mem.block("ram")], {
        let served = served.clone();
        Arc::new(move |h, r| {
            // One request in 64 is refused: requests pause until a re-send.
            if served.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
                return Err(libc::EAGAIN);
            }
            serve(h, r)
        })
    });
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    // A reader (pcr_incoming_get_stats is this same call behind the C boundary).
    let rust_reader = {
        let (incoming, done) = (incoming.clone(), done.clone());
        thread::spawn(move || {
            let (mut reads, mut broken) = (0u64, Vec::new());
            while !done.load(Ordering::SeqCst) {
                let s = incoming.stats();
                if !holds(&s) && broken.len() < 5 {
                    broken.push(s);
                }
                reads += 1;
            }
            (reads, broken)
        })
    };
    // Re-sends the pages of refused requests while the storm runs.
    let resender = {
        let (incoming, done) = (incoming.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                incoming.resend_pending().unwrap();
                thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // Several threads touch every page, each in its own order: duplicates and late faults.
    let base = mem.addr;
    let faulters: Vec<_> = (0..FAULTERS)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 1);
                let mut order: Vec<usize> = (0..PAGES).collect();
                for i in (1..PAGES).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                for p in order {
                    assert!(check_page(base + p * 4096, "ram", (p * 4096) as u64));
                }
            })
        })
        .collect();
    for f in faulters {
        join_within(f, 300, "a faulting thread");
    }
    done.store(true, Ordering::SeqCst);
    resender.join().unwrap();
    let (rust_reads, rust_broken) = rust_reader.join().unwrap();
    let s = incoming.stats();
    eprintln!(
        "{rust_reads} snapshots during {} faults ({} requests, {} refused, {} duplicates, {} late)",
        s.faults, s.requests, s.request_errors, s.duplicate_faults, s.late_faults
    );
    assert!(
        rust_broken.is_empty(),
        "snapshots where faults != the sum of its categories: {rust_broken:#?}"
    );
    assert!(rust_reads > 0);
    assert!(s.faults >= PAGES as u64);
    assert!(s.request_errors > 0, "the storm had refused requests");
    assert!(holds(&s));
    incoming.cleanup().unwrap();
    assert!(holds(&incoming.stats()));
}
