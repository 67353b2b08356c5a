//! Cleanup while other threads are placing pages (the lock-free placement path).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use postcopy_ram::{IncomingConfig, Placement, State};

/// Threads place pages as fast as they can while cleanup runs: every placement either
/// succeeds before cleanup has taken the state (and is counted by the time cleanup
/// returns) or fails with EINVAL; no placement is counted after cleanup returned.
#[test]
fn cleanup_waits_for_placers_and_the_counters_are_final_after_it() {
    require_uffd!();
    const PAGES: usize = 4096;
    const THREADS: usize = 3;
    let mem = GuestMem::anon(PAGES * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let placers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (incoming, started, base) = (incoming.clone(), started.clone(), mem.addr);
            thread::spawn(move || {
                let data = vec![0x5au8; 4096];
                let (mut placed, mut zero) = (0u64, 0u64);
                // Each thread its own pages, data and zero pages alternating.
                for p in (t..PAGES).step_by(THREADS) {
                    let host = base + p * 4096;
                    let r = if p % 2 == 0 {
                        // SAFETY: `data` holds 4096 bytes.
                        unsafe { incoming.place_page(host, data.as_ptr(), 4096) }
                    } else {
                        incoming.place_page_zero(host, 4096)
                    };
                    match r {
                        Ok(Placement::Placed) if p % 2 == 0 => placed += 1,
                        Ok(Placement::Placed) => zero += 1,
                        Ok(Placement::AlreadyPresent) => panic!("page {p} placed twice"),
                        Err(e) => {
                            assert_eq!(e.errno(), libc::EINVAL, "{e}");
                            assert!(e.to_string().contains("after cleanup"), "{e}");
                            break;
                        }
                    }
                    if p > PAGES / 8 {
                        started.store(true, Ordering::Release);
                    }
                }
                (placed, zero)
            })
        })
        .collect();
    while !started.load(Ordering::Acquire) {
        thread::yield_now();
    }
    incoming.cleanup().unwrap();
    let at_cleanup = incoming.stats();
    let (mut placed, mut zero) = (0, 0);
    for p in placers {
        let (a, b) = p.join().unwrap();
        placed += a;
        zero += b;
    }
    assert_eq!(incoming.state(), State::End);
    assert_eq!(
        incoming.stats(),
        at_cleanup,
        "a placement was counted after cleanup"
    );
    assert_eq!(
        (at_cleanup.pages_placed, at_cleanup.zero_pages_placed),
        (placed, zero),
        "every successful placement is counted, none other"
    );
    assert!(placed + zero > 0);
}
