//! Tests for the KVM checksum guest (`postcopy_demo::kvm`).
//!
//! Each test is skipped (`common::skip`) and returns when /dev/kvm (or userfaultfd) is
//! unusable. The tests are serialized by a global lock: they use a lot of
//! memory, and some of them count this process's open fds.

mod common;

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::{skip, wait_until};
use postcopy_demo::kvm::{self, GuestOptions, PAGE_SIZE};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns false (after `skip`, which says why) if KVM is unusable.
fn kvm_or_skip(test: &str) -> bool {
    match kvm::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            skip(format_args!("{test}: KVM unavailable: {e}"));
            false
        }
    }
}

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Private anonymous mapping, unmapped on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize, prot: i32) -> Region {
        // SAFETY: fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Region { ptr: p.cast(), len }
    }

    /// # Safety
    /// No guest may be running on the region, and every page must be
    /// readable without blocking (not a missing page of a live userfaultfd).
    unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: per the caller's contract; the mapping is live while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// As for `as_slice`.
    unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: per the caller's contract; `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we created this mapping, and only this drop unmaps it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Deterministic, page-varying test pattern.
fn fill_pattern(buf: &mut [u8], seed: u32) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        let i = i as u32;
        let v = i.wrapping_mul(0x9E37_79B1) ^ seed ^ (i >> 10).rotate_left(16);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn first_mismatching_page(a: &[u8], b: &[u8]) -> Option<usize> {
    a.chunks_exact(PAGE_SIZE)
        .zip(b.chunks_exact(PAGE_SIZE))
        .position(|(x, y)| x != y)
}

// (1) Populated anonymous memory, sequential order, progress reports.
#[test]
fn populated_region_checksum_and_writes() {
    let _g = serial();
    if !kvm_or_skip("populated_region_checksum_and_writes") {
        return;
    }
    let len = 64 << 20;
    let npages = (len / PAGE_SIZE) as u32;
    let mut region = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: no guest is running yet, and the memory is plain anonymous memory.
    fill_pattern(unsafe { region.as_mut_slice() }, 0xC0FF_EE00);
    // SAFETY: as above.
    let original = unsafe { region.as_slice() }.to_vec();
    let expected = kvm::reference_checksum(&original);

    let fds_before = open_fd_count();
    let progress = Arc::new(AtomicU32::new(0));
    let opts = GuestOptions {
        progress_every_pages: 1024,
        progress: Some(progress.clone()),
        ..Default::default()
    };
    // SAFETY: the region stays mapped and no references to it are alive during the call.
    let res = unsafe { kvm::run_checksum_guest(region.ptr, len, &opts) }.expect("guest run");
    assert_eq!(open_fd_count(), fds_before, "fd leak");
    eprintln!(
        "populated: {} MiB, checksum {:#010x}, {} exits ({} mmio, {} progress), run {:?}, total {:?}",
        len >> 20,
        res.checksum,
        res.exits,
        res.mmio_exits,
        res.progress_reports,
        res.run_time,
        res.total_time
    );
    assert_eq!(
        res.checksum, expected,
        "guest checksum != reference_checksum"
    );
    assert_eq!(res.pages, npages);
    assert_eq!(res.progress_reports, u64::from(npages / 1024));
    assert_eq!(progress.load(Ordering::Acquire), npages);
    // progress reports + checksum + done
    assert_eq!(res.mmio_exits, res.progress_reports + 2);

    let mut after = original.clone();
    kvm::apply_guest_writes(&mut after);
    assert_ne!(after, original);
    // SAFETY: the guest has finished; every page is present.
    let now = unsafe { region.as_slice() };
    assert!(
        now == &after[..],
        "region after guest differs from apply_guest_writes() at page {:?}",
        first_mismatching_page(now, &after)
    );
}

// (1b) Scattered order, per-page hashes, no writes, on the vCPU thread.
#[test]
fn scattered_page_hashes_without_writes_on_thread() {
    let _g = serial();
    if !kvm_or_skip("scattered_page_hashes_without_writes_on_thread") {
        return;
    }
    let len = 8 << 20;
    let mut region = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: no guest is running yet.
    fill_pattern(unsafe { region.as_mut_slice() }, 0x1234_5678);
    // SAFETY: as above.
    let original = unsafe { region.as_slice() }.to_vec();

    let opts = GuestOptions {
        write_markers: false,
        report_page_hashes: true,
        ..GuestOptions::scattered(len)
    };
    assert!(opts.stride_pages > 1);
    // SAFETY: the region outlives the join below and is not referenced meanwhile.
    let handle = unsafe { kvm::spawn_checksum_guest(region.ptr, len, opts) };
    let res = handle
        .join()
        .expect("vCPU thread panicked")
        .expect("guest run");
    eprintln!(
        "scattered: stride {} pages, {} exits, run {:?}",
        res.stride_pages, res.exits, res.run_time
    );
    assert_eq!(res.checksum, kvm::reference_checksum(&original));
    assert_eq!(
        res.page_hashes.as_deref(),
        Some(&kvm::reference_page_hashes(&original)[..])
    );
    // SAFETY: the guest has finished.
    assert!(
        unsafe { region.as_slice() } == &original[..],
        "guest wrote although write_markers=false"
    );

    // An all-zero (never touched) region.
    let zero = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    let opts = GuestOptions {
        stride_pages: 3,
        ..Default::default()
    };
    // SAFETY: as above.
    let res = unsafe { kvm::run_checksum_guest(zero.ptr, len, &opts) }.expect("guest run");
    assert_eq!(res.checksum, kvm::zero_region_checksum(len));
}

// The same program at CPL 0 gives the same results. Kept small: on a
// kvm_pvm host, CPL 0 is emulated instruction by instruction.
#[test]
fn supervisor_mode_same_results() {
    let _g = serial();
    if !kvm_or_skip("supervisor_mode_same_results") {
        return;
    }
    let len = 256 << 10;
    let mut region = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: no guest is running yet.
    fill_pattern(unsafe { region.as_mut_slice() }, 0x5EED_0001);
    // SAFETY: as above.
    let original = unsafe { region.as_slice() }.to_vec();
    let opts = GuestOptions {
        supervisor_mode: true,
        stride_pages: 5,
        ..Default::default()
    };
    // SAFETY: the region stays mapped and is not referenced during the call.
    let res = unsafe { kvm::run_checksum_guest(region.ptr, len, &opts) }.expect("guest run");
    eprintln!("supervisor mode: {} KiB, run {:?}", len >> 10, res.run_time);
    assert_eq!(res.checksum, kvm::reference_checksum(&original));
    let mut after = original;
    kvm::apply_guest_writes(&mut after);
    // SAFETY: the guest has finished.
    assert!(unsafe { region.as_slice() } == &after[..]);
}

// Error paths report an error and close every fd.
#[test]
fn error_paths_do_not_leak() {
    let _g = serial();
    if !kvm_or_skip("error_paths_do_not_leak") {
        return;
    }
    let fds_before = open_fd_count();
    let len = 1 << 20;
    let region = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    let opts = GuestOptions::default();
    // SAFETY (all calls below): the regions are live mappings, not otherwise referenced.
    unsafe {
        assert!(kvm::run_checksum_guest(region.ptr.add(8), len - PAGE_SIZE, &opts).is_err());
        assert!(kvm::run_checksum_guest(region.ptr, len - 8, &opts).is_err());
        assert!(kvm::run_checksum_guest(region.ptr, 0, &opts).is_err());
        let bad_stride = GuestOptions {
            stride_pages: 2,
            ..Default::default()
        };
        let e = kvm::run_checksum_guest(region.ptr, len, &bad_stride).unwrap_err();
        assert!(e.contains("coprime"), "{e}");
    }
    // Inaccessible memory: fails inside KVM_RUN, after everything was set up.
    let noaccess = Region::new(len, libc::PROT_NONE);
    // SAFETY: as above.
    let e = unsafe { kvm::run_checksum_guest(noaccess.ptr, len, &opts) }.unwrap_err();
    eprintln!("PROT_NONE region error (expected): {e}");
    assert_eq!(open_fd_count(), fds_before, "fd leak on error paths");
}

// ---------------------------------------------------------------------------
// (2) userfaultfd: minimal local ABI definitions (<linux/userfaultfd.h>)
// ---------------------------------------------------------------------------

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F; // _IOWR(0xAA, 0x3F, struct uffdio_api)
const UFFDIO_REGISTER: u64 = 0xC020_AA00; // _IOWR(0xAA, 0x00, struct uffdio_register)
const UFFDIO_UNREGISTER: u64 = 0x8010_AA01; // _IOR(0xAA, 0x01, struct uffdio_range)
const UFFDIO_COPY: u64 = 0xC028_AA03; // _IOWR(0xAA, 0x03, struct uffdio_copy)
const USERFAULTFD_IOC_NEW: u64 = 0xAA00; // _IO(0xAA, 0x00), on /dev/userfaultfd
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8; // fill uffd_msg.pagefault.feat.ptid
const UFFDIO_COPY_BIT: u64 = 1 << 0x03; // _UFFDIO_COPY in uffdio_register.ioctls

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg`, with the `pagefault` member of its union.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    pf_flags: u64,
    pf_address: u64,
    pf_ptid: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdMsg>() == 32);

/// Opens a userfaultfd (O_CLOEXEC | O_NONBLOCK) with the syscall, or else
/// through /dev/userfaultfd. Then performs the UFFDIO_API handshake,
/// asking for `features`.
fn open_uffd(features: u64) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: plain syscall with integer arguments.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
    let mut why = String::new();
    if fd < 0 {
        why = format!("userfaultfd(2): {}", std::io::Error::last_os_error());
        // SAFETY: `open` of a NUL-terminated constant path.
        let dev =
            unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if dev < 0 {
            return Err(format!(
                "{why}; /dev/userfaultfd: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as an integer argument.
        fd = unsafe {
            libc::ioctl(
                dev,
                USERFAULTFD_IOC_NEW as libc::Ioctl,
                flags as libc::c_ulong,
            )
        };
        let e = std::io::Error::last_os_error();
        // SAFETY: `dev` is our fd, closed once.
        unsafe { libc::close(dev) };
        if fd < 0 {
            return Err(format!("{why}; USERFAULTFD_IOC_NEW: {e}"));
        }
    }
    // SAFETY: `fd` is a new descriptor that we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one UffdioApi.
    if unsafe { libc::ioctl(fd, UFFDIO_API as libc::Ioctl, &mut api as *mut UffdioApi) } < 0 {
        return Err(format!(
            "{why} UFFDIO_API: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(owned)
}

#[derive(Default)]
struct HandlerStats {
    faults: AtomicU64,
    write_faults: AtomicU64,
    eexist: AtomicU64,
    /// Distinct faulting thread ids (with UFFD_FEATURE_THREAD_ID).
    threads: Mutex<std::collections::BTreeSet<u32>>,
    /// The handler's own thread id.
    handler_tid: AtomicU32,
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Polls `uffd` until `stop`, resolving every missing-page fault in the
/// region at `base` with a UFFDIO_COPY of the matching page of `source`.
fn fault_handler(
    uffd: i32,
    base: usize,
    source: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    stats: Arc<HandlerStats>,
) {
    let mut msgs = [UffdMsg::default(); 64];
    stats.handler_tid.store(gettid(), Ordering::Relaxed);
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: uffd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 20) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reading whole uffd_msg records into a buffer we own.
        let r = unsafe { libc::read(uffd, msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs)) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "read(uffd): {e}");
            continue;
        }
        for m in &msgs[..r as usize / size_of::<UffdMsg>()] {
            assert_eq!(m.event, UFFD_EVENT_PAGEFAULT, "unexpected uffd event");
            stats.faults.fetch_add(1, Ordering::Relaxed);
            stats.threads.lock().unwrap().insert(m.pf_ptid);
            if m.pf_flags & UFFD_PAGEFAULT_FLAG_WRITE != 0 {
                stats.write_faults.fetch_add(1, Ordering::Relaxed);
            }
            let page = (m.pf_address as usize & !(PAGE_SIZE - 1)) - base;
            let mut copy = UffdioCopy {
                dst: (base + page) as u64,
                src: source[page..page + PAGE_SIZE].as_ptr() as u64,
                len: PAGE_SIZE as u64,
                mode: 0,
                copy: 0,
            };
            loop {
                // SAFETY: UFFDIO_COPY reads/writes one UffdioCopy. `src` is a
                // live page of `source` (only read by the kernel), and `dst` is
                // inside the registered region.
                let r = unsafe {
                    libc::ioctl(
                        uffd,
                        UFFDIO_COPY as libc::Ioctl,
                        &mut copy as *mut UffdioCopy,
                    )
                };
                if r == 0 {
                    break;
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EEXIST) => {
                        stats.eexist.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(libc::EAGAIN) => {
                        copy.copy = 0;
                        continue;
                    }
                    _ => panic!("UFFDIO_COPY: {}", std::io::Error::last_os_error()),
                }
            }
        }
    }
}

// (2) Missing pages registered with userfaultfd: the vCPU faults through it.
#[test]
fn userfaultfd_missing_pages_fault_through_uffd() {
    use std::os::fd::AsRawFd;
    let _g = serial();
    if !kvm_or_skip("userfaultfd_missing_pages_fault_through_uffd") {
        return;
    }
    // Ask for the faulting thread's id when the kernel supports it (4.14+).
    let (uffd, thread_ids) = match open_uffd(UFFD_FEATURE_THREAD_ID)
        .map(|fd| (fd, true))
        .or_else(|_| open_uffd(0).map(|fd| (fd, false)))
    {
        Ok(x) => x,
        Err(e) => {
            skip(format_args!(
                "userfaultfd_missing_pages_fault_through_uffd: userfaultfd unavailable: {e}"
            ));
            return;
        }
    };
    let len = 64 << 20;
    let npages = (len / PAGE_SIZE) as u64;
    let region = Region::new(len, libc::PROT_READ | libc::PROT_WRITE);
    let mut source = vec![0u8; len];
    fill_pattern(&mut source, 0xFEED_F00D);
    let source = Arc::new(source);
    let expected = kvm::reference_checksum(&source);

    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: region.ptr as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads/writes one UffdioRegister; the range is our mapping.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER as libc::Ioctl,
            &mut reg as *mut UffdioRegister,
        )
    };
    if r < 0 {
        skip(format_args!(
            "userfaultfd_missing_pages_fault_through_uffd: UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        ));
        return;
    }
    assert_ne!(
        reg.ioctls & UFFDIO_COPY_BIT,
        0,
        "UFFDIO_COPY not supported on the range"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(HandlerStats::default());
    let handler = {
        let (fd, base, source, stop, stats) = (
            uffd.as_raw_fd(),
            region.ptr as usize,
            source.clone(),
            stop.clone(),
            stats.clone(),
        );
        std::thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || fault_handler(fd, base, source, stop, stats))
            .unwrap()
    };

    let progress = Arc::new(AtomicU32::new(0));
    let opts = GuestOptions {
        progress_every_pages: 4096,
        progress: Some(progress.clone()),
        ..GuestOptions::scattered(len)
    };
    let stride = opts.stride_pages;
    // SAFETY: the region stays mapped until after the join and is not referenced
    // meanwhile. Only the handler's UFFDIO_COPY fills it.
    let vcpu = unsafe { kvm::spawn_checksum_guest(region.ptr, len, opts) };
    // Watchdog: a guest stuck on an unresolved fault would otherwise hang forever.
    wait_until("the guest is stuck on an unresolved fault", || {
        vcpu.is_finished()
    });
    let res = vcpu.join().expect("vCPU thread panicked");
    stop.store(true, Ordering::Release);
    handler.join().expect("uffd handler panicked");

    // Unregister before the host touches the region, so that a page that was
    // never filled reads as zeros (and fails the comparison) instead of
    // blocking on a fault nobody serves.
    let mut range = reg.range;
    // SAFETY: UFFDIO_UNREGISTER reads one UffdioRange.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_UNREGISTER as libc::Ioctl,
            &mut range as *mut UffdioRange,
        )
    };
    assert_eq!(
        r,
        0,
        "UFFDIO_UNREGISTER: {}",
        std::io::Error::last_os_error()
    );
    drop(uffd);

    let res = res.expect("guest run");
    let faults = stats.faults.load(Ordering::Relaxed);
    eprintln!(
        "userfaultfd: {} MiB, stride {stride}, checksum {:#010x}, {} uffd faults ({} write, {} EEXIST), {} exits, run {:?}",
        len >> 20,
        res.checksum,
        faults,
        stats.write_faults.load(Ordering::Relaxed),
        stats.eexist.load(Ordering::Relaxed),
        res.exits,
        res.run_time
    );
    assert_eq!(
        res.checksum, expected,
        "guest checksum != reference_checksum"
    );
    assert!(faults > 0, "the vCPU never faulted through userfaultfd");
    assert!(
        faults <= npages,
        "more faults ({faults}) than pages ({npages})"
    );
    if thread_ids {
        // Every fault came from one thread, the vCPU thread: neither this
        // thread nor the handler ever touches the region.
        let threads = stats.threads.lock().unwrap();
        assert_eq!(threads.len(), 1, "faulting threads: {threads:?}");
        let t = *threads.iter().next().unwrap();
        assert_ne!(t, gettid(), "the test thread faulted");
        assert_ne!(
            t,
            stats.handler_tid.load(Ordering::Relaxed),
            "the handler faulted"
        );
        eprintln!("userfaultfd: all faults came from thread {t} (the vCPU thread)");
    }

    let mut after = source.to_vec();
    kvm::apply_guest_writes(&mut after);
    // SAFETY: the guest has finished and the range is unregistered.
    let now = unsafe { region.as_slice() };
    assert!(
        now == &after[..],
        "region after guest differs from apply_guest_writes() at page {:?}",
        first_mismatching_page(now, &after)
    );
}
