//! Issue 17 item 1: blocktime of vCPUs that fault on missing pages one after another. Each
//! page arrives D after its request; a vCPU that faults K times must show about K x D, not
//! D (a wait closed after the placement woke the vCPU was overwritten by its next fault).
//! No absolute times: each vCPU's figure is compared with the sum of the delays the test's
//! own "source" measured for that vCPU's pages, and the all-vCPU total with the per-vCPU
//! figures.

mod common;

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::hooks::TestHooks;
use common::*;
use postcopy_ram::IncomingConfig;

const K: u64 = 6;
const DELAY: Duration = Duration::from_millis(20);

/// A vCPU thread: reports its tid, waits for `go`, then reads `pages` one after another.
fn vcpu(base: usize, pages: Vec<u64>) -> (thread::JoinHandle<bool>, i32, mpsc::Sender<()>) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        go_rx.recv().unwrap();
        pages
            .iter()
            .all(|&p| check_page(base + (p * 4096) as usize, "ram", p * 4096))
    });
    (t, tid_rx.recv().unwrap(), go_tx)
}

/// Pins the calling thread, and so every thread it starts afterwards (the fault thread of
/// enable_notify, the vCPUs, the source), to the CPU it runs on. With the source at
/// SCHED_IDLE ([`idle_priority`]), a placement that wakes a vCPU lets the vCPU fault again
/// and the fault thread read that fault before the placer goes on: the order in which a
/// wait closed after the wake-up was lost.
fn pin_here() {
    // SAFETY: sched_getcpu and sched_setaffinity on the calling thread with a local set.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The calling thread yields its CPU to any other thread that wakes up.
fn idle_priority() {
    // SAFETY: sched_setscheduler on the calling thread with a local parameter.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

fn run(vcpus: usize) {
    pin_here();
    let pages = vcpus as u64 * K;
    let mem = GuestMem::anon((pages * 4096) as usize);
    let (req_tx, req_rx) = mpsc::channel::<u64>();
    let req_tx = parking_lot::Mutex::new(req_tx);
    // The fault thread only forwards the request: the source answers after DELAY.
    let hooks = TestHooks::new(
        vec![mem.block("ram")],
        Arc::new(move |_, r| {
            req_tx.lock().send(r.offset).unwrap();
            Ok(())
        }),
    );
    let incoming = hooks.incoming(IncomingConfig {
        blocktime: true,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    if !incoming.blocktime().thread_id_available {
        skip("no UFFD_FEATURE_THREAD_ID: faults are not attributed to vCPUs");
        incoming.cleanup().unwrap();
        return;
    }
    // vCPU i reads pages i, i + vcpus, i + 2 * vcpus, ...
    let mut threads = Vec::new();
    for i in 0..vcpus {
        let own: Vec<u64> = (0..K).map(|k| i as u64 + k * vcpus as u64).collect();
        let (t, tid, go) = vcpu(mem.addr, own);
        incoming.register_vcpu(i as u32, tid).unwrap();
        threads.push((t, go));
    }
    // The source: each page DELAY after its request, timed from the request's arrival to
    // just before the placement (inside the vCPU's wait).
    let source = {
        let hooks = hooks.clone();
        thread::spawn(move || {
            idle_priority();
            let mut waited = vec![Duration::ZERO; vcpus];
            for _ in 0..pages {
                let offset = req_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a request");
                let asked = Instant::now();
                thread::sleep(DELAY);
                waited[((offset / 4096) % vcpus as u64) as usize] += asked.elapsed();
                hooks.place("ram", offset, 4096).unwrap();
            }
            waited
        })
    };
    for (_, go) in &threads {
        go.send(()).unwrap();
    }
    let waited = join_within(source, 30, "the source");
    for (i, (t, _)) in threads.into_iter().enumerate() {
        assert!(
            join_within(t, 5, &format!("vCPU {i}")),
            "vCPU {i} read its pages"
        );
    }
    incoming.cleanup().unwrap();
    let r = incoming.blocktime();
    eprintln!("{r:?}\nsource-side waits per vCPU: {waited:?}");
    assert_eq!(r.faults_timed, pages, "{r:?}");
    for (i, w) in waited.iter().enumerate() {
        let want = w.as_millis() as u64 * 8 / 10;
        assert!(
            r.per_vcpu_ms[i] as u64 >= want,
            "vCPU {i}: {} ms of blocktime for {K} faults the source kept waiting {} ms in all",
            r.per_vcpu_ms[i],
            w.as_millis()
        );
    }
    let min = *r.per_vcpu_ms.iter().min().unwrap();
    assert!(
        r.total_ms <= min,
        "total {} > a vCPU's {min}: {r:?}",
        r.total_ms
    );
    if vcpus == 1 {
        // One vCPU: all vCPUs were blocked exactly when it was.
        assert!(
            r.total_ms as u64 >= waited[0].as_millis() as u64 * 8 / 10,
            "{r:?}"
        );
    }
}

#[test]
fn one_vcpu_faulting_back_to_back_shows_k_times_the_delay() {
    require_uffd!();
    run(1);
}

#[test]
fn two_vcpus_faulting_back_to_back_and_the_total_below_each() {
    require_uffd!();
    run(2);
}
