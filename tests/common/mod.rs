//! Shared helpers for the integration tests: guest memory, a page server, skip checks.
#![allow(dead_code)]

mod skip;
#[allow(unused_imports)] // not every test binary skips
pub use skip::{skip, SKIP_LOG_ENV};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use postcopy_ram::{Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result};

/// Skips the test ([`skip`], then returns) when userfaultfd cannot be used here.
#[macro_export]
macro_rules! require_uffd {
    () => {
        if let Err(e) = postcopy_ram::sys::uffd::probe() {
            $crate::common::skip(format_args!("userfaultfd unavailable: {e}"));
            return;
        }
    };
}

/// Anonymous guest memory owned by a test.
pub struct GuestMem {
    pub addr: usize,
    pub len: usize,
}

impl GuestMem {
    pub fn anon(len: usize) -> GuestMem {
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
        GuestMem {
            addr: p as usize,
            len,
        }
    }

    pub fn block(&self, name: &str) -> RamBlock {
        RamBlock {
            name: name.into(),
            host: self.addr,
            offset: 0,
            length: self.len as u64,
            page_size: 4096,
            backing: Backing::Anonymous { shared: false },
            opaque: 0,
        }
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: inside the mapping; may fault through userfaultfd, which the test serves.
        unsafe { std::ptr::read_volatile((self.addr + off) as *const u64) }
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Deterministic content of the page at `offset` of block `name`.
pub fn page_pattern(name: &str, offset: u64, buf: &mut [u8]) {
    let seed = name
        .bytes()
        .fold(offset.wrapping_mul(0x9E37_79B9_7F4A_7C15), |a, b| {
            a.rotate_left(5) ^ b as u64
        });
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
}

/// A request recorded by [`Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: Option<String>,
    pub offset: u64,
    pub length: u64,
}

/// Hooks that serve each requested page at once from the fault thread, with
/// [`page_pattern`] content, and record the requests.
pub struct Server {
    pub blocks: Vec<RamBlock>,
    pub incoming: Mutex<Weak<Incoming>>,
    pub requests: Mutex<Vec<Request>>,
    pub last_name: Mutex<Option<String>>,
    pub serve: bool,
    pub fail_requests: AtomicU64,
}

impl Server {
    pub fn new(blocks: Vec<RamBlock>, serve: bool) -> Arc<Server> {
        Arc::new(Server {
            blocks,
            incoming: Mutex::new(Weak::new()),
            requests: Mutex::new(Vec::new()),
            last_name: Mutex::new(None),
            serve,
            fail_requests: AtomicU64::new(0),
        })
    }

    pub fn incoming(self: &Arc<Self>, config: IncomingConfig) -> Arc<Incoming> {
        let incoming = Arc::new(Incoming::new(self.clone(), config).expect("a valid config"));
        *self.incoming.lock() = Arc::downgrade(&incoming);
        incoming
    }
}

impl IncomingHooks for Server {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(self.blocks.clone())
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        if self.fail_requests.load(Ordering::Relaxed) > 0 {
            self.fail_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(libc::EPIPE);
        }
        let name = block.map(|b| b.as_str().to_owned());
        self.requests.lock().push(Request {
            name: name.clone(),
            offset,
            length,
        });
        if let Some(n) = name {
            *self.last_name.lock() = Some(n);
        }
        if !self.serve {
            return Ok(());
        }
        let block_name = self
            .last_name
            .lock()
            .clone()
            .expect("first request names its block");
        let block = self
            .blocks
            .iter()
            .find(|b| b.name == block_name)
            .expect("known block");
        let mut page = vec![0u8; length as usize];
        page_pattern(&block.name, offset, &mut page);
        let incoming = self.incoming.lock().upgrade().expect("incoming alive");
        // SAFETY: `page` holds `length` bytes.
        unsafe { incoming.place_page(block.host + offset as usize, page.as_ptr(), length) }
            .map(|_| ())
            .map_err(|e| e.errno())
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// xorshift64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

pub mod hooks;
pub mod sigbus;

/// The least time [`join_within`] and [`wait_for`] wait before calling it a hang: a liveness
/// guard, not a timing check. Far above any run on a loaded machine, it only turns a hang
/// (a stranded thread, a condition that never comes) into a failure.
pub const HANG_GUARD_SECS: u64 = 120;

/// The hang guard for a caller's `secs`: at least [`HANG_GUARD_SECS`].
fn hang_guard(secs: u64) -> (std::time::Instant, u64) {
    let secs = secs.max(HANG_GUARD_SECS);
    (
        std::time::Instant::now() + std::time::Duration::from_secs(secs),
        secs,
    )
}

/// Joins `h`, failing the test if it has not finished within `secs` seconds, at least
/// [`HANG_GUARD_SECS`] (a stranded thread would otherwise hang the test run).
pub fn join_within<T>(h: std::thread::JoinHandle<T>, secs: u64, what: &str) -> T {
    let (deadline, secs) = hang_guard(secs);
    while !h.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still blocked after {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    h.join().expect("thread panicked")
}

/// Waits for `cond` up to `secs` seconds, at least [`HANG_GUARD_SECS`], failing the test
/// with `what` otherwise.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let (deadline, _) = hang_guard(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Reads the page at `addr` (faulting through userfaultfd if missing) and compares it with
/// the pattern of `name` at `offset`.
pub fn check_page(addr: usize, name: &str, offset: u64) -> bool {
    let mut want = vec![0u8; 4096];
    page_pattern(name, offset, &mut want);
    // SAFETY: the caller passes a live page of guest memory.
    let got = unsafe { std::slice::from_raw_parts(addr as *const u8, 4096) };
    got == &want[..]
}

/// Raises `vm.nr_hugepages` so that `n` more 2 MiB pages are free, and puts the old value
/// back on drop. `None` when the host cannot give them (no hugetlb, not root, no memory).
/// Tests that use it must hold `/tmp/pcr-test.lock` (scripts/test.sh does) and serialise
/// among themselves (see `HUGE_LOCK`).
pub struct HugePages(Option<String>);

/// Serialises the hugetlb tests of one test binary.
pub static HUGE_LOCK: Mutex<()> = Mutex::new(());

impl HugePages {
    pub fn reserve(n: u64) -> Option<HugePages> {
        let path = "/proc/sys/vm/nr_hugepages";
        let old = std::fs::read_to_string(path).ok()?;
        let old_n: u64 = old.trim().parse().ok()?;
        let free = || -> Option<u64> {
            std::fs::read_to_string("/proc/meminfo")
                .ok()?
                .lines()
                .find(|l| l.starts_with("HugePages_Free:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        if free()? >= n {
            return Some(HugePages(None));
        }
        std::fs::write(path, (old_n + n).to_string()).ok()?;
        let guard = HugePages(Some(old.trim().to_string()));
        (free()? >= n).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", old);
        }
    }
}

/// 2 MiB, the huge page size the hugetlb tests use.
pub const HUGE: usize = 2 << 20;

impl GuestMem {
    /// `len` bytes of private anonymous hugetlb memory (MAP_HUGETLB, 2 MiB pages).
    pub fn huge(len: usize) -> Option<GuestMem> {
        // SAFETY: fresh mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(GuestMem {
            addr: p as usize,
            len,
        })
    }

    /// A block of `len` bytes at `offset` into this mapping, with `page_size` pages.
    pub fn sub_block(&self, name: &str, offset: usize, len: usize, page_size: u64) -> RamBlock {
        RamBlock {
            name: name.into(),
            host: self.addr + offset,
            offset: offset as u64,
            length: len as u64,
            page_size,
            backing: Backing::Anonymous { shared: false },
            opaque: 0,
        }
    }
}

/// The `VmFlags` of the mapping containing `addr`, from /proc/self/smaps (`nh`:
/// MADV_NOHUGEPAGE, `hg`: MADV_HUGEPAGE, `lo`: mlocked...).
pub fn vm_flags(addr: usize) -> Option<Vec<String>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.split_whitespace().map(String::from).collect());
            }
        }
    }
    None
}

/// A memfd of `len` bytes (hugetlbfs-backed with `huge`), or None when the kernel refuses
/// (no huge pages reserved, say).
pub fn memfd(name: &std::ffi::CStr, len: u64, huge: bool) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let flags = libc::MFD_CLOEXEC | if huge { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: just created, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return None;
    }
    Some(fd)
}
