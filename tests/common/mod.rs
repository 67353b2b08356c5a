//! Shared helpers for the integration tests: guest memory, a page server, skip checks.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use postcopy_ram::{Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result};

/// Skips the test (returns early) when userfaultfd cannot be used here.
#[macro_export]
macro_rules! require_uffd {
    () => {
        if let Err(e) = postcopy_ram::sys::uffd::probe() {
            eprintln!("SKIP: userfaultfd unavailable: {e}");
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

/// Joins `h`, failing the test if it has not finished within `secs` seconds (a stranded
/// thread would otherwise hang the test run).
pub fn join_within<T>(h: std::thread::JoinHandle<T>, secs: u64, what: &str) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !h.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still blocked after {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    h.join().expect("thread panicked")
}

/// Waits up to `secs` seconds for `cond`, failing the test with `what` otherwise.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
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
