//! Regression tests of issue 9 items 1, 10, 3 and 11 (discards: empty ranges, THP off
//! before any discard and back on at cleanup, hugetlbfs files), through the safe Rust API.
//! One test changes vm.nr_hugepages (and puts it back), serialised by `HUGE_LOCK`.

mod common;

use common::*;
use postcopy_ram::{Backing, IncomingConfig, RamBlock};

/// A whole `POSTCOPY_RAM_DISCARD` command for `name` with `ranges` (bytes), built by hand
/// (the library's encoder refuses empty ranges, as a source should).
fn discard_command(name: &str, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut payload = vec![0u8, name.len() as u8];
    payload.extend_from_slice(name.as_bytes());
    payload.push(0);
    for (start, length) in ranges {
        payload.extend_from_slice(&start.to_be_bytes());
        payload.extend_from_slice(&length.to_be_bytes());
    }
    let mut cmd = vec![0x08u8, 0, 6];
    cmd.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    cmd.extend_from_slice(&payload);
    cmd
}

/// Item 1: QEMU 2.6-2.9 sources end a block's discards with `(block_length, 0)` when its
/// last page is clean. The destination accepts empty ranges, skips and counts them.
#[test]
fn empty_discard_ranges_from_old_sources_are_skipped_and_counted() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    // SAFETY: inside the mapping, not registered.
    unsafe { std::ptr::write_bytes(mem.addr as *mut u8, 0xCD, mem.len) };
    let cmd = discard_command("ram", &[(2 * 4096, 4096), (16 * 4096, 0)]);
    assert_eq!(incoming.handle_discard_command(&cmd).unwrap(), 1);
    assert_eq!(mem.read_u64(2 * 4096), 0, "the real range was dropped");
    assert_eq!(mem.read_u64(3 * 4096), 0xCDCD_CDCD_CDCD_CDCD);
    // The payload form and the single-range call accept them too.
    assert_eq!(incoming.handle_discard_command(&cmd[5..]).unwrap(), 1);
    incoming.discard_range("ram", 16 * 4096, 0).unwrap();
    incoming.discard_range("ram", 0, 0).unwrap();
    // An empty range must still be page-aligned and inside (or at the end of) the block.
    for (start, what) in [(17 * 4096, "past the end"), (100, "misaligned")] {
        let bad = discard_command("ram", &[(2 * 4096, 4096), (start, 0)]);
        assert_eq!(
            incoming.handle_discard_command(&bad).unwrap_err().errno(),
            libc::EINVAL,
            "{what}"
        );
        assert_eq!(
            incoming.discard_range("ram", start, 0).unwrap_err().errno(),
            libc::EINVAL,
            "{what}"
        );
    }
    assert_eq!(incoming.stats().discard_ranges_empty, 4);
    incoming.cleanup().unwrap();
}

/// Hooks that record, at each discard the library asks for, whether transparent huge pages
/// were already off (`nh` in VmFlags) for the range being dropped; the library then drops it.
struct ThpWitness {
    server: std::sync::Arc<Server>,
    thp_off_at_discard: parking_lot::Mutex<Vec<bool>>,
}

impl postcopy_ram::IncomingHooks for ThpWitness {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        self.server.ram_blocks()
    }

    fn request_page(
        &self,
        block: Option<&postcopy_ram::BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        self.server.request_page(block, offset, length)
    }

    fn discard_range(
        &self,
        block: &RamBlock,
        start: u64,
        _length: u64,
    ) -> Option<postcopy_ram::Result<()>> {
        let flags = vm_flags(block.host + start as usize).unwrap_or_default();
        self.thp_off_at_discard
            .lock()
            .push(flags.iter().any(|f| f == "nh"));
        None
    }
}

fn thp_witness(mem: &GuestMem) -> (std::sync::Arc<ThpWitness>, postcopy_ram::Incoming) {
    let witness = std::sync::Arc::new(ThpWitness {
        server: Server::new(vec![mem.block("ram")], false),
        thp_off_at_discard: parking_lot::Mutex::new(Vec::new()),
    });
    let incoming = postcopy_ram::Incoming::new(witness.clone(), IncomingConfig::default()).unwrap();
    (witness, incoming)
}

/// MADV_HUGEPAGE on `mem`, as QEMU sets on its guest RAM: THP may then back it (the library
/// leaves memory THP cannot back alone, issue 17 item 11; see tests/thp_restore.rs).
fn hugepage_advised(mem: &GuestMem) {
    // SAFETY: advice on the test's own mapping.
    let rc = unsafe { libc::madvise(mem.addr as *mut libc::c_void, mem.len, libc::MADV_HUGEPAGE) };
    assert_eq!(rc, 0, "MADV_HUGEPAGE: {}", std::io::Error::last_os_error());
}

/// Item 10: a discard in ADVISE (before prepare_discard) ran with transparent huge pages
/// still on, so khugepaged could collapse over the hole before registration (a present
/// zero page that never faults). Every post-init discard now finds THP off for its block.
#[test]
fn no_discard_runs_before_thp_is_off() {
    require_uffd!();
    let mem = GuestMem::anon(64 * 4096);
    hugepage_advised(&mem);
    let (witness, incoming) = thp_witness(&mem);
    incoming.init(0).unwrap();
    witness.thp_off_at_discard.lock().clear(); // init's whole-RAM discard, see README
    assert_eq!(incoming.state(), postcopy_ram::State::Advise);
    incoming.discard_range("ram", 4096, 4096).unwrap();
    let cmd = discard_command("ram", &[(8 * 4096, 4096)]);
    incoming.handle_discard_command(&cmd).unwrap();
    assert_eq!(*witness.thp_off_at_discard.lock(), vec![true, true]);
    assert_eq!(incoming.state(), postcopy_ram::State::Discard);
    incoming.cleanup().unwrap();
}

/// Item 3: prepare_discard turns THP off (MADV_NOHUGEPAGE); cleanup turns it back on
/// (MADV_HUGEPAGE, as QEMU's cleanup does) on the blocks it turned off, so the guest does
/// not lose THP for the rest of its life.
#[test]
fn cleanup_restores_transparent_huge_pages() {
    require_uffd!();
    let has = |mem: &GuestMem, flag: &str| {
        vm_flags(mem.addr)
            .expect("mapping in smaps")
            .iter()
            .any(|f| f == flag)
    };
    for enable in [true, false] {
        let mem = GuestMem::anon(64 * 4096);
        hugepage_advised(&mem);
        let server = Server::new(vec![mem.block("ram")], false);
        let incoming = server.incoming(IncomingConfig::default());
        incoming.init(0).unwrap();
        incoming.prepare_discard().unwrap();
        assert!(has(&mem, "nh"), "THP off while postcopy runs");
        if enable {
            incoming.enable_notify().unwrap();
        }
        incoming.cleanup().unwrap();
        assert!(
            !has(&mem, "nh"),
            "THP still off after cleanup (enabled: {enable})"
        );
        assert!(
            has(&mem, "hg"),
            "MADV_HUGEPAGE after cleanup (enabled: {enable})"
        );
    }
}

/// Makes `madvise(..., MADV_DONTNEED)` fail with EINVAL on the calling thread only, as it
/// does on hugetlb memory before Linux 5.18 (a seccomp filter; irreversible for the
/// thread, so use a thread of its own). Returns false where unsupported (not x86-64).
fn refuse_madv_dontneed_on_this_thread() -> bool {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    const LD_ABS_W: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let f = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let filter = [
        f(LD_ABS_W, 0, 0, 4), // seccomp_data.arch
        f(JEQ_K, 0, 4, AUDIT_ARCH_X86_64),
        f(LD_ABS_W, 0, 0, 0), // seccomp_data.nr
        f(JEQ_K, 0, 2, libc::SYS_madvise as u32),
        f(LD_ABS_W, 0, 0, 32), // seccomp_data.args[2], low half
        f(JEQ_K, 1, 0, libc::MADV_DONTNEED as u32),
        f(RET_K, 0, 0, RET_ALLOW),
        f(RET_K, 0, 0, RET_ERRNO | libc::EINVAL as u32),
    ];
    let prog = SockFprog {
        len: filter.len() as u16,
        filter: filter.as_ptr(),
    };
    // SAFETY: prctl with a valid, live filter program; affects this thread only.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const SockFprog,
            ) == 0
    }
}

/// Item 11: a private mapping of a hugetlbfs file was dropped with fallocate(PUNCH_HOLE)
/// plus MADV_DONTNEED, and MADV_DONTNEED fails on hugetlb before Linux 5.18 (emulated here
/// with a seccomp filter). Punching the hole alone drops the page, private copy included.
#[test]
fn private_hugetlbfs_blocks_are_dropped_without_madv_dontneed() {
    let _serial = HUGE_LOCK.lock();
    let Some(_pool) = HugePages::reserve(2) else {
        skip("cannot reserve 2 huge pages");
        return;
    };
    // SAFETY: memfd_create with a static name.
    let fd = unsafe { libc::memfd_create(c"huge".as_ptr(), libc::MFD_HUGETLB) };
    if fd < 0 {
        skip("memfd_create(MFD_HUGETLB) failed");
        return;
    }
    // SAFETY: just created; owned here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: plain syscalls on our descriptor; a fresh private mapping of it.
    let addr = unsafe {
        assert_eq!(libc::ftruncate(raw, HUGE as libc::off_t), 0);
        libc::mmap(
            std::ptr::null_mut(),
            HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            raw,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let mem = GuestMem {
        addr: addr as usize,
        len: HUGE,
    };
    let block = RamBlock {
        backing: Backing::File {
            fd: raw,
            offset: 0,
            shared: false,
        },
        ..mem.sub_block("huge-private", 0, HUGE, HUGE as u64)
    };
    let addr = mem.addr;
    let outcome = std::thread::spawn(move || {
        // SAFETY: writes into the test's own private mapping (a private huge page).
        unsafe { std::ptr::write_bytes(addr as *mut u8, 0xAB, HUGE) };
        if !refuse_madv_dontneed_on_this_thread() {
            return None;
        }
        // The filter works: MADV_DONTNEED is refused here.
        // SAFETY: madvise on our own mapping (refused by the filter anyway).
        let rc = unsafe { libc::madvise(addr as *mut libc::c_void, HUGE, libc::MADV_DONTNEED) };
        assert_eq!(rc, -1);
        Some(postcopy_ram::destination::discard::drop_range(
            &block,
            0,
            HUGE as u64,
        ))
    })
    .join()
    .unwrap();
    let Some(result) = outcome else {
        skip("no seccomp filter on this architecture");
        return;
    };
    result.unwrap();
    assert_eq!(mem.read_u64(0), 0, "the private huge page was dropped");
    assert_eq!(mem.read_u64(HUGE - 8), 0);
    drop(mem);
}
