//! Issue 10 points 3 and 5 with a KVM guest: its vCPU faults on library-managed memory
//! from inside KVM_RUN. Blocktime is attributed to the registered vCPU thread, and an
//! abort never leaves the vCPU hanging or reading zeros: it gets a memory-failure error.
//!
//! Each test is skipped (`common::skip`) and returns when /dev/kvm or userfaultfd is
//! unusable.

mod common;

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{skip, wait_until};

use postcopy_demo::kvm::{self, GuestOptions, PAGE_SIZE};
use postcopy_ram::{Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock};

static SERIAL: Mutex<()> = Mutex::new(());

fn usable(test: &str) -> bool {
    if let Err(e) = kvm::kvm_available() {
        skip(format_args!("{test}: KVM unavailable: {e}"));
        return false;
    }
    if let Err(e) = postcopy_ram::sys::uffd::probe() {
        skip(format_args!("{test}: userfaultfd unavailable: {e}"));
        return false;
    }
    true
}

/// Guest RAM, unmapped on drop.
struct Ram {
    addr: usize,
    len: usize,
}

impl Ram {
    fn new(len: usize) -> Ram {
        // SAFETY: fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Ram {
            addr: p as usize,
            len,
        }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

/// Requests go to a server thread through a channel (the "source").
struct Hooks {
    block: RamBlock,
    tx: Mutex<mpsc::Sender<u64>>,
}

impl IncomingHooks for Hooks {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(vec![self.block.clone()])
    }
    fn request_page(&self, _: Option<&BlockName>, offset: u64, _: u64) -> Result<(), i32> {
        self.tx
            .lock()
            .unwrap()
            .send(offset)
            .map_err(|_| libc::EPIPE)
    }
}

fn source_data(len: usize) -> Arc<Vec<u8>> {
    let mut data = vec![0u8; len];
    for (i, w) in data.chunks_mut(4).enumerate() {
        w.copy_from_slice(&((i as u32).wrapping_mul(2_654_435_761) ^ 0x5EED).to_le_bytes());
    }
    Arc::new(data)
}

/// A destination over `ram` whose server places requested pages accepted by `serve`
/// after `delay`.
fn destination(
    ram: &Ram,
    config: IncomingConfig,
    data: Arc<Vec<u8>>,
    delay: Duration,
    serve: fn(u64) -> bool,
) -> (Arc<Incoming>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<u64>();
    let block = RamBlock {
        name: "pc.ram".into(),
        host: ram.addr,
        offset: 0,
        length: ram.len as u64,
        page_size: PAGE_SIZE as u64,
        backing: Backing::Anonymous { shared: false },
        opaque: 0,
    };
    let incoming = Arc::new(
        Incoming::new(
            Arc::new(Hooks {
                block,
                tx: Mutex::new(tx),
            }),
            config,
        )
        .unwrap(),
    );
    let inc = Arc::downgrade(&incoming);
    let base = ram.addr;
    let server = std::thread::spawn(move || {
        while let Ok(off) = rx.recv() {
            if !serve(off / PAGE_SIZE as u64) {
                continue;
            }
            std::thread::sleep(delay);
            let Some(inc) = inc.upgrade() else { return };
            let src = data[off as usize..].as_ptr();
            // SAFETY: `src` has a page of data.
            let _ = unsafe { inc.place_page(base + off as usize, src, PAGE_SIZE as u64) };
        }
    });
    (incoming, server)
}

#[test]
fn kvm_vcpu_blocktime_is_attributed_to_the_registered_vcpu() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !usable("kvm_vcpu_blocktime_is_attributed_to_the_registered_vcpu") {
        return;
    }
    let len = 2 << 20;
    let ram = Ram::new(len);
    let data = source_data(len);
    let config = IncomingConfig {
        blocktime: true,
        ..Default::default()
    };
    let (incoming, server) =
        destination(&ram, config, data.clone(), Duration::from_millis(1), |_| {
            true
        });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let tid = Arc::new(AtomicI32::new(0));
    let gate = Arc::new(AtomicU32::new(0));
    let opts = GuestOptions {
        vcpu_tid: Some(tid.clone()),
        start_gate: Some(gate.clone()),
        write_markers: false,
        ..GuestOptions::scattered(len)
    };
    // SAFETY: the region outlives the joined vCPU thread; only placements fill it.
    let vcpu = unsafe { kvm::spawn_checksum_guest(ram.addr as *mut u8, len, opts) };
    wait_until("the vCPU thread never started", || {
        tid.load(Ordering::SeqCst) != 0
    });
    incoming
        .register_vcpu(0, tid.load(Ordering::SeqCst))
        .unwrap();
    gate.store(1, Ordering::SeqCst);
    let res = vcpu.join().unwrap().expect("guest run");
    assert_eq!(res.checksum, kvm::reference_checksum(&data));
    incoming.cleanup().unwrap();
    // Readable after cleanup.
    let r = incoming.blocktime();
    let s = incoming.stats();
    drop(incoming);
    server.join().unwrap();
    eprintln!(
        "KVM blocktime: vCPU 0 {} ms, total {} ms, {} faults timed, latency p50 {} us p99 {} us max {} us; {} faults",
        r.per_vcpu_ms.first().copied().unwrap_or(0),
        r.total_ms,
        r.faults_timed,
        r.latency_p50_ns / 1000,
        r.latency_p99_ns / 1000,
        r.latency_max_ns / 1000,
        s.faults
    );
    assert!(r.enabled);
    if !r.thread_id_available {
        skip("per-vCPU checks: no UFFD_FEATURE_THREAD_ID on this kernel");
        return;
    }
    let pages = (len / PAGE_SIZE) as u64;
    assert_eq!(r.vcpus, 1);
    assert_eq!(s.faults, pages, "the guest faulted on every page: {s:?}");
    assert_eq!(r.faults_timed, s.faults);
    // Every fault waited about 1 ms for its page: half a second over 512 pages at least.
    assert!(r.per_vcpu_ms[0] as u64 >= pages / 2, "{r:?}");
    // One vCPU: "all vCPUs blocked" is "vCPU 0 blocked".
    assert_eq!(r.total_ms, r.per_vcpu_ms[0], "{r:?}");
    assert!(r.latency_p50_ns >= 1_000_000, "{r:?}");
}

#[test]
fn kvm_abort_gives_the_vcpu_a_memory_failure_not_a_hang() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !usable("kvm_abort_gives_the_vcpu_a_memory_failure_not_a_hang") {
        return;
    }
    let len = 2 << 20;
    let ram = Ram::new(len);
    let data = source_data(len);
    // The source dies after the first half: requests for the second half go unanswered.
    let (incoming, server) = destination(
        &ram,
        IncomingConfig::default(),
        data.clone(),
        Duration::ZERO,
        |page| page < 256,
    );
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let opts = GuestOptions {
        write_markers: false,
        ..Default::default()
    };
    // SAFETY: the region outlives the joined vCPU thread; only placements fill it.
    let vcpu = unsafe { kvm::spawn_checksum_guest(ram.addr as *mut u8, len, opts) };
    wait_until("the guest never blocked on page 256", || {
        incoming.stats().pending_pages != 0 && incoming.stats().pages_placed >= 256
    });
    std::thread::sleep(Duration::from_millis(20));
    assert!(!vcpu.is_finished(), "the vCPU waits for page 256");
    let out = incoming.abort().unwrap();
    assert_eq!(out.pages_lost, 256);
    wait_until("the vCPU hangs after abort", || vcpu.is_finished());
    let res = vcpu.join().unwrap();
    eprintln!("KVM abort: poisoned {}, vCPU: {res:?}", out.poisoned);
    if out.poisoned {
        let err = res.expect_err("the guest must not complete over lost pages");
        assert!(
            err.contains("memory failure"),
            "a memory failure is reported: {err}"
        );
        assert!(
            err.contains(&format!("{:#x}", ram.addr + len / 2)),
            "at the first lost page: {err}"
        );
    } else {
        // Zero fallback: the guest completes, on zeros for the lost pages (data loss).
        let mut want = data[..len / 2].to_vec();
        want.resize(len, 0);
        assert_eq!(res.unwrap().checksum, kvm::reference_checksum(&want));
    }
    incoming.cleanup().unwrap();
    drop(incoming);
    server.join().unwrap();
}
