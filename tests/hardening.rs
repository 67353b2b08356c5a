//! Regression tests of the hardening issue (issue 9), one or more per defect, through the
//! safe Rust API. Its own test binary: some tests change vm.nr_hugepages (and put it back),
//! serialised by `HUGE_LOCK`; run it under /tmp/pcr-test.lock like scripts/test.sh does.

mod common;

use common::*;
use postcopy_ram::destination::block::BlockTable;
use postcopy_ram::{Backing, IncomingConfig, Placement, RamBlock};

/// Item 2: a caller's length close to 2^64 must not wrap the placement bounds check. On a
/// hugetlb block (no UFFDIO_ZEROPAGE, so zero pages are copied one page a call) the wrapped
/// check let `place_pages_zero(a, -2 MiB)` zero-fill the next block's page.
#[test]
fn placement_length_overflow_is_refused() {
    require_uffd!();
    let _serial = HUGE_LOCK.lock();
    let Some(_pool) = HugePages::reserve(2) else {
        eprintln!("SKIP: cannot reserve 2 huge pages");
        return;
    };
    let Some(mem) = GuestMem::huge(2 * HUGE) else {
        eprintln!("SKIP: MAP_HUGETLB failed");
        return;
    };
    let a = mem.sub_block("a", 0, HUGE, HUGE as u64);
    let b = mem.sub_block("b", HUGE, HUGE, HUGE as u64);
    let server = Server::new(vec![a.clone(), b.clone()], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let minus_2m = (HUGE as u64).wrapping_neg();
    let err = incoming.place_pages_zero(a.host, minus_2m).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    let page = vec![0u8; HUGE];
    // SAFETY: the length check refuses the call before `page` would be read.
    let err = unsafe { incoming.place_pages(a.host, page.as_ptr(), minus_2m) }.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    // Nothing was placed: both blocks' pages are still missing.
    assert_eq!(
        incoming.place_page_zero(b.host, HUGE as u64).unwrap(),
        Placement::Placed,
        "block b's page was zero-filled by the overflowing call"
    );
    assert_eq!(
        incoming.place_page_zero(a.host, HUGE as u64).unwrap(),
        Placement::Placed
    );
    let stats = incoming.stats();
    assert_eq!((stats.zero_pages_placed, stats.already_present), (2, 0));
    incoming.cleanup().unwrap();
}

/// Item 2: the same on host-page blocks, for every placement call and lengths that wrap
/// the address space exactly back into the block.
#[test]
fn placement_wrapping_lengths_are_refused_on_host_pages() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let page = vec![0u8; 4096];
    for len in [
        4096u64.wrapping_neg(),
        (16 * 4096u64).wrapping_neg(),
        1 << 63,
    ] {
        let host = mem.addr + 4096;
        assert_eq!(
            incoming.place_pages_zero(host, len).unwrap_err().errno(),
            libc::EINVAL
        );
        // SAFETY: refused before `page` is read.
        let r = unsafe { incoming.place_pages(host, page.as_ptr(), len) };
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        assert!(incoming
            .place_pages_zero(host, len)
            .unwrap_err()
            .message()
            .contains("run past block"));
    }
    assert_eq!(incoming.stats().zero_pages_placed, 0);
    incoming.cleanup().unwrap();
}

/// Item 2: bitmap lookups with a caller's offset never index out of bounds.
#[test]
fn received_bitmap_lookup_outside_the_block_is_false() {
    let mem = GuestMem::anon(4 * 4096);
    let table = BlockTable::new(vec![mem.block("ram")]).unwrap();
    let entry = table.by_name("ram").unwrap();
    assert!(!entry.is_received(0));
    assert!(!entry.is_received(4 * 4096));
    assert!(!entry.is_received(u64::MAX));
}

/// Item 2: a file-backed block whose file offset plus length overflows is refused when the
/// table is built, before any discard computes `fd_offset + start`.
#[test]
fn file_offset_overflow_is_refused() {
    let mem = GuestMem::anon(4 * 4096);
    let mut block: RamBlock = mem.block("file");
    block.backing = Backing::File {
        fd: 0,
        offset: u64::MAX - 4095,
        shared: true,
    };
    let err = BlockTable::new(vec![block.clone()]).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    block.backing = Backing::File {
        fd: 0,
        offset: i64::MAX as u64 - 4095,
        shared: true,
    };
    assert!(BlockTable::new(vec![block]).is_err(), "past off_t");
}

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

/// Puts a sysctl back on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Option<Sysctl> {
        let old = std::fs::read_to_string(path).ok()?.trim().to_string();
        std::fs::write(path, value).ok()?;
        Some(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

const PROBE_CHILD_ENV: &str = "PCR_TEST_UFFD_PROBE_CHILD";

/// Not a test on its own: the body of the unprivileged child process that
/// `userfaultfd_eperm_keeps_its_errno_and_names_the_sysctl` runs (as user nobody, so that
/// /dev/userfaultfd, mode 0600 root, is unusable). Prints the probe's outcome.
#[test]
fn helper_uffd_probe_as_child() {
    if std::env::var_os(PROBE_CHILD_ENV).is_none() {
        return;
    }
    match postcopy_ram::check_host_support(Vec::new(), 4096) {
        Ok(()) => println!("PROBE-RESULT ok"),
        Err(e) => println!("PROBE-RESULT errno={} message={}", e.errno(), e.message()),
    }
}

/// Runs the helper test `name` of this binary in a child process with `PROBE_CHILD_ENV`
/// set (as uid/gid 65534 when `nobody`) and returns its PROBE-RESULT line.
fn run_helper(name: &str, nobody: bool) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(PROBE_CHILD_ENV, "1");
    if nobody {
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("running the helper child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.find("PROBE-RESULT").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no PROBE-RESULT from {name}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn probe_as_nobody() -> String {
    run_helper("helper_uffd_probe_as_child", true)
}

/// Item 14: a userfaultfd that cannot be opened keeps its real errno (it was -ENOSYS for
/// everything), and EPERM from vm.unprivileged_userfaultfd=0 says so, naming the sysctl.
/// Run as an unprivileged user (uid 65534, no access to /dev/userfaultfd), once with the
/// sysctl at 0 (EPERM) and once at 1 (works: the failure was the sysctl's).
#[test]
fn userfaultfd_eperm_keeps_its_errno_and_names_the_sysctl() {
    require_uffd!();
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIP: needs root to change vm.unprivileged_userfaultfd and drop to nobody");
        return;
    }
    const SYSCTL: &str = "/proc/sys/vm/unprivileged_userfaultfd";
    let Some(_restore) = Sysctl::set(SYSCTL, "0") else {
        eprintln!("SKIP: cannot write {SYSCTL}");
        return;
    };
    let denied = probe_as_nobody();
    assert!(
        denied.contains(&format!("errno={} ", libc::EPERM)),
        "{denied}"
    );
    assert!(denied.contains("vm.unprivileged_userfaultfd=0"), "{denied}");
    std::fs::write(SYSCTL, "1").unwrap();
    assert_eq!(probe_as_nobody(), "PROBE-RESULT ok");
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

/// Item 10: a discard in ADVISE (before prepare_discard) ran with transparent huge pages
/// still on, so khugepaged could collapse over the hole before registration (a present
/// zero page that never faults). Every post-init discard now finds THP off for its block.
#[test]
fn no_discard_runs_before_thp_is_off() {
    require_uffd!();
    let mem = GuestMem::anon(64 * 4096);
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

/// Hooks whose mlock policy locks and unlocks the guest block only, recording the calls.
struct BlockLock {
    server: std::sync::Arc<Server>,
    calls: parking_lot::Mutex<Vec<bool>>,
}

impl postcopy_ram::IncomingHooks for BlockLock {
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

    fn mlock(&self, lock: bool) -> Option<postcopy_ram::Result<()>> {
        self.calls.lock().push(lock);
        let b = &self.server.blocks[0];
        let (addr, len) = (b.host as *const libc::c_void, b.length as usize);
        // SAFETY: (un)locking the test's own mapping.
        let rc = unsafe {
            if lock {
                libc::mlock(addr, len)
            } else {
                libc::munlock(addr, len)
            }
        };
        Some(if rc == 0 {
            Ok(())
        } else {
            Err(postcopy_ram::Error::new(libc::EIO, "mlock hook"))
        })
    }
}

fn is_locked(mem: &GuestMem) -> bool {
    vm_flags(mem.addr)
        .expect("mapping in smaps")
        .iter()
        .any(|f| f == "lo")
}

/// Item 4: with mlocked guest memory (QEMU's -overcommit mem-lock=on) MADV_DONTNEED is
/// refused, so init's discard failed with -EINVAL: memory is now unlocked before the first
/// discard (the mlock policy with `false`), and locked again at cleanup.
#[test]
fn mlocked_guest_memory_is_unlocked_before_the_first_discard() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    // SAFETY: locking the test's own mapping.
    if unsafe { libc::mlock(mem.addr as *const libc::c_void, mem.len) } != 0 {
        eprintln!("SKIP: mlock: {}", std::io::Error::last_os_error());
        return;
    }
    let hooks = std::sync::Arc::new(BlockLock {
        server: Server::new(vec![mem.block("ram")], false),
        calls: parking_lot::Mutex::new(Vec::new()),
    });
    let config = IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    };
    let incoming = postcopy_ram::Incoming::new(hooks.clone(), config).unwrap();
    incoming.init(0).unwrap();
    assert!(!is_locked(&mem));
    incoming.discard_range("ram", 0, 4096).unwrap();
    incoming.enable_notify().unwrap();
    incoming.cleanup().unwrap();
    assert!(is_locked(&mem), "locked again at cleanup");
    assert_eq!(*hooks.calls.lock(), vec![false, true]);
}

/// Not a test on its own: the child of `default_mlock_policy_unlocks_before_discarding`,
/// which locks all of its memory (mlockall) and so runs alone in its own process.
#[test]
fn helper_mlockall_migration_as_child() {
    if std::env::var_os(PROBE_CHILD_ENV).is_none() {
        return;
    }
    let mem = GuestMem::anon(16 * 4096);
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        println!(
            "PROBE-RESULT skip mlockall: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let locked_before = is_locked(&mem);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    });
    let outcome = incoming
        .init(0)
        .and_then(|()| incoming.discard_range("ram", 0, 4096))
        .and_then(|()| incoming.enable_notify())
        .and_then(|()| incoming.cleanup());
    println!(
        "PROBE-RESULT {outcome:?} locked_before={locked_before} locked_after={}",
        is_locked(&mem)
    );
}

/// Item 4 with the library's own policy (munlockall / mlockall), in a child process.
#[test]
fn default_mlock_policy_unlocks_before_discarding() {
    require_uffd!();
    let result = run_helper("helper_mlockall_migration_as_child", false);
    if result.contains("skip") {
        eprintln!("SKIP: {result}");
        return;
    }
    assert_eq!(
        result,
        "PROBE-RESULT Ok(()) locked_before=true locked_after=true"
    );
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
        eprintln!("SKIP: cannot reserve 2 huge pages");
        return;
    };
    // SAFETY: memfd_create with a static name.
    let fd = unsafe { libc::memfd_create(c"huge".as_ptr(), libc::MFD_HUGETLB) };
    if fd < 0 {
        eprintln!("SKIP: memfd_create(MFD_HUGETLB) failed");
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
        eprintln!("SKIP: no seccomp filter on this architecture");
        return;
    };
    result.unwrap();
    assert_eq!(mem.read_u64(0), 0, "the private huge page was dropped");
    assert_eq!(mem.read_u64(HUGE - 8), 0);
    drop(mem);
}

/// Item 12: the host check only registered an anonymous test page, so a block that cannot
/// be registered (a regular-file mapping) passed it and failed at LISTEN, after the source
/// had stopped the guest. Every block kind that will be registered is now checked.
#[test]
fn host_check_covers_every_block_kind() {
    require_uffd!();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("regular-file-block");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(16 * 4096).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: a fresh shared mapping of our own file.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            raw,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let mapped = GuestMem {
        addr: addr as usize,
        len: 16 * 4096,
    };
    let regular = RamBlock {
        backing: Backing::File {
            fd: raw,
            offset: 0,
            shared: true,
        },
        ..mapped.block("ext4-file")
    };
    let anon = GuestMem::anon(16 * 4096);
    // Anonymous memory alone passes.
    postcopy_ram::check_host_support(vec![anon.block("ram")], 4096).unwrap();
    let err = postcopy_ram::check_host_support(vec![anon.block("ram"), regular.clone()], 4096)
        .expect_err("a regular-file block cannot be registered for missing faults");
    assert!(err.message().contains("ext4-file"), "{err}");
    // What it protects against: the same blocks fail at enable_notify (LISTEN).
    let server = Server::new(vec![anon.block("ram"), regular], false);
    let incoming = server.incoming(IncomingConfig::default());
    assert_eq!(
        incoming.supported_by_host().unwrap_err().errno(),
        err.errno()
    );
    incoming.init(0).unwrap();
    assert_eq!(incoming.enable_notify().unwrap_err().errno(), err.errno());
    incoming.cleanup().unwrap();
    drop(mapped);
    drop(file);
    let _ = std::fs::remove_file(path);
}

/// Item 16: `ram_pages` was documented as cross-checked, but a mismatch only warned.
/// Decided: it is checked. Every block must end (its RAM offset plus length) within
/// `ram_pages` target pages (QEMU passes `last_ram_offset() >> TARGET_PAGE_BITS`, which
/// may be larger: gaps between blocks, resizable blocks); otherwise -EINVAL. 0 skips it.
#[test]
fn ram_pages_is_checked_against_the_blocks() {
    require_uffd!();
    let a = GuestMem::anon(16 * 4096);
    let b = GuestMem::anon(8 * 4096);
    let mut block_b = b.block("b");
    block_b.offset = 32 * 4096; // a gap after block a, as QEMU's ram_addr space has
    let server = Server::new(vec![a.block("a"), block_b], false);
    let incoming = server.incoming(IncomingConfig::default());
    for too_small in [1, 24, 39] {
        let err = incoming.init(too_small).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{too_small}: {err}");
        assert_eq!(incoming.state(), postcopy_ram::State::None);
    }
    incoming.init(40).unwrap();
    incoming.cleanup().unwrap();
    incoming.init(1 << 20).unwrap();
    incoming.cleanup().unwrap();
    incoming.init(0).unwrap();
    incoming.cleanup().unwrap();
}

/// Item 16: `requests` counts the requests the callback accepted; a failed request is
/// counted in `request_errors` only (the docs said `requests` included failed ones).
#[test]
fn failed_requests_are_counted_apart_from_requests() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    let server = Server::new(vec![mem.block("ram")], true);
    server
        .fail_requests
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let addr = mem.addr;
    let toucher = std::thread::spawn(move || {
        // SAFETY: inside the mapping; blocks until placed.
        unsafe { std::ptr::read_volatile((addr + 4096) as *const u64) }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while incoming.stats().request_errors == 0 {
        assert!(std::time::Instant::now() < deadline, "no failed request");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // A request that succeeds, on another page.
    // SAFETY: inside the mapping; served by the page server.
    let _served = unsafe { std::ptr::read_volatile((mem.addr + 2 * 4096) as *const u64) };
    incoming.cleanup().unwrap();
    toucher.join().unwrap();
    let s = incoming.stats();
    assert_eq!(s.request_errors, 1, "{s:?}");
    assert_eq!(
        s.requests,
        server.requests.lock().len() as u64,
        "requests counts accepted ones only: {s:?}"
    );
    assert_eq!(
        s.faults,
        s.requests + s.request_errors + s.duplicate_faults + s.late_faults + s.faults_outside,
        "{s:?}"
    );
}

/// Item 5: every command and return-path type of QEMU 10.x (migration/savevm.c
/// `mig_cmd_args`, migration/migration.c `rp_cmd_args`) with its payload length rule, as
/// (number, QEMU name, lengths accepted, a length refused). ENABLE_COLO (8),
/// SWITCHOVER_START (11) and SWITCHOVER_ACK (7) were refused as unknown, so a stream
/// reader could not even learn their length.
#[test]
fn every_qemu_10_message_kind_has_its_length_rule() {
    use postcopy_ram::wire::{
        decode_command, decode_command_header, decode_return_path, decode_return_path_header,
        encode_command, encode_return_path, CommandMsg, ReturnPathMsg, WireError,
    };
    let commands: &[(u16, &str, &[usize], usize)] = &[
        (1, "OPEN_RETURN_PATH", &[0], 1),
        (2, "PING", &[4], 0),
        (3, "POSTCOPY_ADVISE", &[0, 16], 8),
        (4, "POSTCOPY_LISTEN", &[0], 1),
        (5, "POSTCOPY_RUN", &[0], 1),
        (6, "POSTCOPY_RAM_DISCARD", &[20, 36, 65535], 19),
        (7, "PACKAGED", &[4], 5),
        (8, "ENABLE_COLO", &[0], 1),
        (9, "POSTCOPY_RESUME", &[0], 1),
        (10, "RECV_BITMAP", &[1, 256], 257),
        (11, "SWITCHOVER_START", &[0], 1),
    ];
    for &(cmd, name, good, bad) in commands {
        for &len in good {
            let mut h = vec![0x08u8];
            h.extend_from_slice(&cmd.to_be_bytes());
            h.extend_from_slice(&(len as u16).to_be_bytes());
            let header = decode_command_header(&h).unwrap_or_else(|e| panic!("{name} {len}: {e}"));
            assert_eq!(header.cmd.name(), name);
            assert_eq!(header.total_len(), 5 + len, "{name}");
        }
        let mut h = vec![0x08u8];
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&(bad as u16).to_be_bytes());
        assert!(
            matches!(
                decode_command_header(&h),
                Err(WireError::LengthMismatch { .. })
            ),
            "{name} with {bad} bytes"
        );
    }
    for unknown in [0u16, 12, 0xffff] {
        let h = [0x08, (unknown >> 8) as u8, unknown as u8, 0, 0];
        assert_eq!(
            decode_command_header(&h),
            Err(WireError::UnknownCommand(unknown))
        );
    }
    // The new ones decode and encode whole.
    let mut buf = [0u8; 16];
    for (msg, bytes) in [
        (CommandMsg::EnableColo, [0x08, 0, 8, 0, 0]),
        (CommandMsg::SwitchoverStart, [0x08, 0, 11, 0, 0]),
    ] {
        assert_eq!(decode_command(&bytes).unwrap(), (msg, 5));
        assert_eq!(encode_command(&mut buf, &msg).unwrap(), 5);
        assert_eq!(buf[..5], bytes);
    }

    let rp_types: &[(u16, &str, &[usize], usize)] = &[
        (1, "SHUT", &[4], 0),
        (2, "PONG", &[4], 5),
        (3, "REQ_PAGES_ID", &[13, 268], 12),
        (4, "REQ_PAGES", &[12], 13),
        (5, "RECV_BITMAP", &[1, 256], 257),
        (6, "RESUME_ACK", &[4], 3),
        (7, "SWITCHOVER_ACK", &[0], 1),
    ];
    for &(ty, name, good, bad) in rp_types {
        for &len in good {
            let mut h = ty.to_be_bytes().to_vec();
            h.extend_from_slice(&(len as u16).to_be_bytes());
            let header =
                decode_return_path_header(&h).unwrap_or_else(|e| panic!("{name} {len}: {e}"));
            assert_eq!(header.rp_type.name(), name);
            assert_eq!(header.total_len(), 4 + len, "{name}");
        }
        let mut h = ty.to_be_bytes().to_vec();
        h.extend_from_slice(&(bad as u16).to_be_bytes());
        assert!(
            matches!(
                decode_return_path_header(&h),
                Err(WireError::LengthMismatch { .. })
            ),
            "{name} with {bad} bytes"
        );
    }
    for unknown in [0u16, 8, 0xffff] {
        let h = [(unknown >> 8) as u8, unknown as u8, 0, 0];
        assert_eq!(
            decode_return_path_header(&h),
            Err(WireError::UnknownReturnPathType(unknown))
        );
    }
    let ack = [0u8, 7, 0, 0];
    assert_eq!(
        decode_return_path(&ack).unwrap(),
        (ReturnPathMsg::SwitchoverAck, 4)
    );
    assert_eq!(
        encode_return_path(&mut buf, &ReturnPathMsg::SwitchoverAck).unwrap(),
        4
    );
    assert_eq!(buf[..4], ack);
}
