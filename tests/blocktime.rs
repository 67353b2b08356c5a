//! Issue 10 point 5 on real userfaultfd: blocktime per vCPU and in total (QEMU 7.2's
//! definitions) and the fault latency histogram, readable after cleanup.

mod common;

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::hooks::TestHooks;
use common::*;
use postcopy_ram::IncomingConfig;

/// A thread that reports its tid, waits for `go`, then reads page `page`.
fn vcpu(base: usize, page: u64) -> (thread::JoinHandle<bool>, i32, mpsc::Sender<()>) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        go_rx.recv().unwrap();
        check_page(base + (page * 4096) as usize, "ram", page * 4096)
    });
    (t, tid_rx.recv().unwrap(), go_tx)
}

#[test]
fn per_vcpu_and_total_blocktime_and_latency() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig {
        blocktime: true,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let (v0, tid0, go0) = vcpu(mem.addr, 1);
    let (v1, tid1, go1) = vcpu(mem.addr, 2);
    incoming.register_vcpu(0, tid0).unwrap();
    incoming.register_vcpu(1, tid1).unwrap();
    // The span in which vCPU 0 can have been blocked: its blocktime lies within it.
    let span = Instant::now();
    go0.send(()).unwrap();
    wait_for(5, "vCPU 0 blocked", || incoming.stats().pending_pages == 1);
    go1.send(()).unwrap();
    wait_for(5, "vCPU 1 blocked", || incoming.stats().pending_pages == 2);
    // Another thread, not a vCPU: only its latency counts.
    let base = mem.addr;
    let other = thread::spawn(move || check_page(base + 3 * 4096, "ram", 3 * 4096));
    wait_for(5, "three pending", || incoming.stats().pending_pages == 3);
    thread::sleep(Duration::from_millis(60));
    hooks.place("ram", 2 * 4096, 4096).unwrap(); // vCPU 1: ~60 ms; both were blocked
    thread::sleep(Duration::from_millis(40));
    hooks.place("ram", 4096, 4096).unwrap(); // vCPU 0: ~100 ms
    hooks.place("ram", 3 * 4096, 4096).unwrap();
    assert!(join_within(v0, 5, "vCPU 0") && join_within(v1, 5, "vCPU 1"));
    let span_ms = span.elapsed().as_millis() as u64;
    assert!(join_within(other, 5, "the other thread"));
    incoming.cleanup().unwrap();
    // Readable after cleanup.
    let r = incoming.blocktime();
    eprintln!("{r:?}");
    assert!(r.enabled);
    if !r.thread_id_available {
        skip("per-vCPU checks: no UFFD_FEATURE_THREAD_ID on this kernel");
        return;
    }
    assert_eq!(r.vcpus, 2);
    assert!(r.per_vcpu_ms[0] >= 99, "{r:?}");
    // Whole milliseconds of a clock, as QEMU counts them: a difference may read 1 high.
    assert!(
        u64::from(r.per_vcpu_ms[0]) <= span_ms + 1,
        "{r:?}: more than the {span_ms} ms span"
    );
    assert!(
        r.per_vcpu_ms[1] >= 59 && r.per_vcpu_ms[1] < r.per_vcpu_ms[0],
        "{r:?}"
    );
    // Both blocked from vCPU 1's fault to its page's placement.
    assert!(r.total_ms >= 59 && r.total_ms <= r.per_vcpu_ms[1], "{r:?}");
    assert_eq!(r.faults_timed, 3, "{r:?}");
    assert_eq!(r.latency_buckets.iter().sum::<u64>(), 3);
    assert!(r.latency_max_ns >= 100_000_000, "{r:?}");
    assert!(
        r.latency_p50_ns >= 60_000_000 && r.latency_p50_ns <= r.latency_max_ns,
        "{r:?}"
    );
}

#[test]
fn blocktime_off_by_default() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    // SAFETY: gettid has no preconditions.
    incoming
        .register_vcpu(0, unsafe { libc::gettid() })
        .unwrap();
    assert!(check_page(mem.addr, "ram", 0));
    incoming.cleanup().unwrap();
    let r = incoming.blocktime();
    assert!(!r.enabled);
    assert_eq!((r.total_ms, r.faults_timed, r.per_vcpu_ms), (0, 0, vec![0]));
}

/// A migration that ends before LISTEN (in precopy) reports blocktime as QEMU 7.2 does:
/// whether the kernel gives thread ids is known from init on, not only once the fault
/// thread runs, so a VMM can report a zero blocktime.
#[test]
fn thread_ids_are_known_from_init_for_a_migration_that_ends_in_precopy() {
    require_uffd!();
    let kernel_has_them = postcopy_ram::sys::uffd::probe().unwrap().features
        & postcopy_ram::sys::uffd::feature::THREAD_ID
        != 0;
    let mem = GuestMem::anon(4 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig {
        blocktime: true,
        ..Default::default()
    });
    assert!(
        !incoming.blocktime().thread_id_available,
        "nothing known before init"
    );
    incoming.init(0).unwrap();
    let r = incoming.blocktime();
    assert_eq!(r.thread_id_available, kernel_has_them);
    assert!(r.enabled);
    assert_eq!((r.total_ms, r.faults_timed), (0, 0));
    incoming.cleanup().unwrap();
    assert_eq!(incoming.blocktime().thread_id_available, kernel_has_them);
}
