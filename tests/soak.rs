//! Soak: the fault storm, scaled up and repeated. Not part of the test command; run it with
//! `bash scripts/soak.sh` (release build, under /tmp/pcr-test.lock, with a watchdog).
//!
//! One destination lives through round after round of a whole postcopy cycle
//! (init -> prepare_discard -> enable_notify -> RUNNING -> cleanup) over every block kind:
//! private anonymous, shared anonymous (shmem), a shared memfd, a hugetlbfs memfd and
//! private anonymous hugetlb (the huge ones when 2 MiB pages can be reserved). In each round
//! 16 threads touch every page (and their neighbours' pages, to fault on the same page at
//! once) and check the bytes they read, while two requested-page servers, a background
//! placer (single pages, batched runs and zero pages, paced to race the faulters throughout)
//! and a duplicate placer (placing requested pages again) all place the same pages. Every
//! round ends with every page checked and the counters reconciled exactly; rounds go on
//! until at least `PCR_SOAK_FAULTS` (default 1,000,000) faults. A watchdog aborts the
//! process, printing the counters, when nothing moves for 30 s or the whole run passes
//! `PCR_SOAK_SECONDS` (default 570).

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postcopy_ram::{
    Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, Placement, RamBlock, State, Stats,
};

const FAULTERS: usize = 16;
const SMALL: u64 = 4096;
const HUGE: u64 = 2 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A guest memory region of one block kind.
struct Region {
    block: RamBlock,
    _fd: Option<OwnedFd>,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns.
        unsafe {
            libc::munmap(
                self.block.host as *mut libc::c_void,
                self.block.length as usize,
            )
        };
    }
}

/// Maps `len` bytes: `memfd` (with `huge`: MFD_HUGETLB) shared, else anonymous (`shared`:
/// MAP_SHARED; `huge`: MAP_HUGETLB).
fn map(name: &str, len: u64, huge: bool, memfd: bool, shared: bool) -> Option<Region> {
    let fd = if memfd {
        Some(common::memfd(c"soak", len, huge)?)
    } else {
        None
    };
    let mut flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    if fd.is_none() {
        flags |= libc::MAP_ANONYMOUS | if huge { libc::MAP_HUGETLB } else { 0 };
    }
    let raw = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
    // SAFETY: a fresh mapping, owned by the returned Region.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            raw,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let backing = match &fd {
        Some(f) => Backing::File {
            fd: f.as_raw_fd(),
            offset: 0,
            shared,
        },
        None => Backing::Anonymous { shared },
    };
    Some(Region {
        block: RamBlock {
            name: name.into(),
            host: p as usize,
            offset: 0,
            length: len,
            page_size: if huge { HUGE } else { SMALL },
            backing,
            opaque: 0,
        },
        _fd: fd,
    })
}

/// Raises vm.nr_hugepages by `n` for its lifetime (the caller holds /tmp/pcr-test.lock).
struct HugePages(String);

impl HugePages {
    fn reserve(n: u64) -> Option<HugePages> {
        let path = "/proc/sys/vm/nr_hugepages";
        let old = std::fs::read_to_string(path).ok()?.trim().to_string();
        let want = old.parse::<u64>().ok()? + n;
        std::fs::write(path, want.to_string()).ok()?;
        let guard = HugePages(old);
        let total: u64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        (total >= want).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", &self.0);
    }
}

/// The bytes every page must end with in round `round`: a hash of the position, except
/// that one host page in eight is a zero page.
#[derive(Clone, Copy)]
struct Pattern {
    round: u64,
}

impl Pattern {
    fn is_zero(self, block: usize, host_page: u64) -> bool {
        splitmix(self.round << 40 ^ (block as u64) << 32 ^ host_page) % 8 == 0
    }

    /// Fills `buf` with the bytes at `off` of block `block` (page size `ps`).
    fn fill(self, block: usize, ps: u64, off: u64, buf: &mut [u8]) {
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            let at = off + 8 * i as u64;
            let v = if self.is_zero(block, at / ps) {
                0
            } else {
                splitmix(self.round << 48 ^ (block as u64) << 40 ^ at)
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The source side: requests queue up for the servers; the duplicate placer re-places them.
struct Source {
    blocks: Vec<RamBlock>,
    queue: Mutex<VecDeque<(usize, u64)>>,
    wake: Condvar,
    recent: Mutex<VecDeque<(usize, u64)>>,
    last: Mutex<Option<usize>>,
    requests: AtomicU64,
}

impl IncomingHooks for Source {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(self.blocks.clone())
    }

    fn request_page(&self, block: Option<&BlockName>, offset: u64, _len: u64) -> Result<(), i32> {
        let mut last = self.last.lock();
        if let Some(b) = block {
            *last = self.blocks.iter().position(|x| x.name == b.as_str());
        }
        let bi = last.ok_or(libc::EPROTO)?;
        self.requests.fetch_add(1, Relaxed);
        self.queue.lock().push_back((bi, offset));
        self.wake.notify_one();
        Ok(())
    }
}

/// What this side's placements did, by API.
#[derive(Default)]
struct Tally {
    data: AtomicU64,
    zero: AtomicU64,
    present: AtomicU64,
    attempts: AtomicU64,
}

/// Places host page `off` of block `bi` with the right API for its pattern.
fn place_one(
    inc: &Incoming,
    src: &Source,
    pat: Pattern,
    bi: usize,
    off: u64,
    buf: &mut [u8],
    t: &Tally,
) {
    let b = &src.blocks[bi];
    let host = b.host + off as usize;
    let result = if pat.is_zero(bi, off / b.page_size) {
        inc.place_page_zero(host, b.page_size).map(|p| (p, &t.zero))
    } else {
        let buf = &mut buf[..b.page_size as usize];
        pat.fill(bi, b.page_size, off, buf);
        // SAFETY: `buf` holds one page of the block's page size.
        unsafe { inc.place_page(host, buf.as_ptr(), b.page_size) }.map(|p| (p, &t.data))
    };
    t.attempts.fetch_add(1, Relaxed);
    match result {
        Ok((Placement::Placed, counter)) => counter.fetch_add(1, Relaxed),
        Ok((Placement::AlreadyPresent, _)) => t.present.fetch_add(1, Relaxed),
        Err(e) => panic!("placing {} +{off:#x}: {e}", b.name),
    };
}

/// Places `n` host pages from `off` of block `bi` with one batched call (data, zero pages
/// copied as data).
fn place_run(
    inc: &Incoming,
    src: &Source,
    pat: Pattern,
    (bi, off, n): (usize, u64, u64),
    buf: &mut [u8],
    t: &Tally,
) {
    let b = &src.blocks[bi];
    let len = n * b.page_size;
    let buf = &mut buf[..len as usize];
    pat.fill(bi, b.page_size, off, buf);
    // SAFETY: `buf` holds `len` bytes.
    let run = unsafe { inc.place_pages(b.host + off as usize, buf.as_ptr(), len) }
        .unwrap_or_else(|e| panic!("place_pages {} +{off:#x} x{n}: {e}", b.name));
    assert_eq!(run.placed + run.already_present, n);
    t.attempts.fetch_add(n, Relaxed);
    t.data.fetch_add(run.placed, Relaxed);
    t.present.fetch_add(run.already_present, Relaxed);
}

/// Checks the 4 KiB at `off` of block `bi` (faulting it in if missing).
fn check(
    src: &Source,
    pat: Pattern,
    bi: usize,
    off: u64,
    expected: &mut [u8],
) -> Result<(), String> {
    let b = &src.blocks[bi];
    pat.fill(bi, b.page_size, off, expected);
    // SAFETY: inside a block registered with the destination, which places it.
    let got = unsafe { std::slice::from_raw_parts((b.host + off as usize) as *const u8, 4096) };
    if got != expected {
        return Err(format!(
            "round {}: {} +{off:#x}: wrong bytes",
            pat.round, b.name
        ));
    }
    Ok(())
}

struct Progress {
    touches: AtomicU64,
    rounds: AtomicU64,
    done: AtomicBool,
}

/// Aborts the process when nothing moves for 30 s or the run is past its deadline.
fn watchdog(inc: Arc<Incoming>, progress: Arc<Progress>, deadline: Instant) {
    thread::spawn(move || {
        let mut last = (u64::MAX, u64::MAX, u64::MAX);
        let mut still = Instant::now();
        while !progress.done.load(Acquire) {
            thread::sleep(Duration::from_millis(200));
            let s = inc.stats();
            let now = (
                progress.touches.load(Relaxed),
                s.faults,
                s.pages_placed + s.zero_pages_placed,
            );
            if now != last {
                last = now;
                still = Instant::now();
            }
            let stuck = still.elapsed() > Duration::from_secs(30);
            if stuck || Instant::now() > deadline {
                eprintln!(
                    "SOAK WATCHDOG: {} (round {}, {} touches): {s:?}",
                    if stuck {
                        "nothing moved for 30 s"
                    } else {
                        "past the deadline"
                    },
                    progress.rounds.load(Relaxed),
                    now.0
                );
                std::process::abort();
            }
        }
    });
}

#[derive(Default)]
struct Totals {
    touches: u64,
    data: u64,
    zero: u64,
    present: u64,
    requests: u64,
}

/// One whole postcopy cycle over every block; returns the counters' change.
fn round(
    inc: &Arc<Incoming>,
    src: &Arc<Source>,
    pat: Pattern,
    progress: &Arc<Progress>,
    totals: &mut Totals,
) -> Stats {
    let before = inc.stats();
    let requests_before = src.requests.load(Relaxed);
    inc.init(0).expect("init");
    inc.prepare_discard().expect("prepare_discard");
    inc.enable_notify().expect("enable_notify");
    inc.set_state(State::Running).expect("RUNNING");

    // Every host page of every block, shuffled.
    let mut pages: Vec<(usize, u64)> = src
        .blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| (0..b.length / b.page_size).map(move |p| (i, p * b.page_size)))
        .collect();
    let mut r = splitmix(pat.round ^ 0x5eed);
    for i in (1..pages.len()).rev() {
        r = splitmix(r);
        pages.swap(i, (r % (i as u64 + 1)) as usize);
    }
    let pages = Arc::new(pages);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let touched = Arc::new(AtomicU64::new(0));
    let mut helpers = Vec::new();
    // Two requested-page servers.
    for _ in 0..2 {
        let (inc, src, tally, stop) = (inc.clone(), src.clone(), tally.clone(), stop.clone());
        helpers.push(thread::spawn(move || {
            let mut buf = vec![0u8; HUGE as usize];
            loop {
                let next = {
                    let mut q = src.queue.lock();
                    while q.is_empty() && !stop.load(Acquire) {
                        src.wake.wait_for(&mut q, Duration::from_millis(5));
                    }
                    q.pop_front()
                };
                let Some((bi, off)) = next else { return };
                place_one(&inc, &src, pat, bi, off, &mut buf, &tally);
                let mut recent = src.recent.lock();
                recent.push_back((bi, off));
                if recent.len() > 256 {
                    recent.pop_front();
                }
            }
        }));
    }
    // Duplicate placer: places pages the servers just placed, again.
    {
        let (inc, src, tally, stop) = (inc.clone(), src.clone(), tally.clone(), stop.clone());
        helpers.push(thread::spawn(move || {
            let mut buf = vec![0u8; HUGE as usize];
            while !stop.load(Acquire) {
                let next = src.recent.lock().pop_front();
                match next {
                    Some((bi, off)) => place_one(&inc, &src, pat, bi, off, &mut buf, &tally),
                    None => thread::sleep(Duration::from_micros(100)),
                }
            }
        }));
    }
    // Background placer: every page in the shuffled order, kept at about a third of the
    // faulters' pace so that both race all round long; full speed once they are done.
    let placer = {
        let (inc, src, tally, pages, touched, stop) = (
            inc.clone(),
            src.clone(),
            tally.clone(),
            pages.clone(),
            touched.clone(),
            stop.clone(),
        );
        thread::spawn(move || {
            let mut buf = vec![0u8; 4 * HUGE as usize];
            let mut i = 0;
            while i < pages.len() {
                if !stop.load(Acquire) && (i as u64) * 3 > touched.load(Relaxed) + 64 {
                    thread::sleep(Duration::from_micros(50));
                    continue;
                }
                let (bi, off) = pages[i];
                let b = &src.blocks[bi];
                // One page in four starts a batched run of up to 4 contiguous pages.
                let n = if i % 4 == 0 {
                    ((b.length - off) / b.page_size).min(4)
                } else {
                    1
                };
                if n > 1 {
                    place_run(&inc, &src, pat, (bi, off, n), &mut buf, &tally);
                } else {
                    place_one(&inc, &src, pat, bi, off, &mut buf, &tally);
                }
                i += 1;
            }
        })
    };
    // Faulters: thread t touches every FAULTERS-th page of the shuffled list and, every
    // other step, the page its neighbour is touching; each checks what it reads.
    let (tx, rx) = mpsc::channel();
    for t in 0..FAULTERS {
        let (src, pages, touched, progress, tx) = (
            src.clone(),
            pages.clone(),
            touched.clone(),
            progress.clone(),
            tx.clone(),
        );
        thread::spawn(move || {
            let mut expected = vec![0u8; 4096];
            let mut r = splitmix(pat.round << 8 ^ t as u64);
            let mut j = t;
            let mut k = 0u64;
            while j < pages.len() {
                let mut targets = [Some(pages[j]), None];
                if k % 2 == 1 {
                    targets[1] = pages.get(j + 1).copied();
                }
                for (bi, off) in targets.into_iter().flatten() {
                    r = splitmix(r);
                    let ps = src.blocks[bi].page_size;
                    let sub = (r % (ps / 4096)) * 4096;
                    if let Err(e) = check(&src, pat, bi, off + sub, &mut expected) {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    touched.fetch_add(1, Relaxed);
                    progress.touches.fetch_add(1, Relaxed);
                }
                j += FAULTERS;
                k += 1;
            }
            let _ = tx.send(Ok(()));
        });
    }
    drop(tx);
    for _ in 0..FAULTERS {
        if let Err(e) = rx.recv().expect("a faulter died") {
            panic!("{e}");
        }
    }
    stop.store(true, Release);
    src.wake.notify_all();
    placer.join().expect("placer");
    for h in helpers {
        h.join().expect("server or duplicate placer");
    }

    // Every page ends with the right bytes.
    let mut expected = vec![0u8; 4096];
    for (bi, b) in src.blocks.iter().enumerate() {
        for off in (0..b.length).step_by(4096) {
            check(src, pat, bi, off, &mut expected).unwrap_or_else(|e| panic!("{e} (at the end)"));
        }
    }
    inc.cleanup().expect("cleanup");
    assert!(src.queue.lock().is_empty());
    src.recent.lock().clear();

    // The counters reconcile exactly.
    let after = inc.stats();
    let d = |f: fn(&Stats) -> u64| f(&after) - f(&before);
    let delta = Stats {
        faults: d(|s| s.faults),
        requests: d(|s| s.requests),
        duplicate_faults: d(|s| s.duplicate_faults),
        late_faults: d(|s| s.late_faults),
        faults_outside: d(|s| s.faults_outside),
        request_errors: d(|s| s.request_errors),
        pages_placed: d(|s| s.pages_placed),
        zero_pages_placed: d(|s| s.zero_pages_placed),
        already_present: d(|s| s.already_present),
        unexpected_events: d(|s| s.unexpected_events),
        ..after
    };
    let total_pages = pages.len() as u64;
    let (data, zero, present, attempts) = (
        tally.data.load(Relaxed),
        tally.zero.load(Relaxed),
        tally.present.load(Relaxed),
        tally.attempts.load(Relaxed),
    );
    let requests = src.requests.load(Relaxed) - requests_before;
    assert_eq!(
        data + zero,
        total_pages,
        "each page placed exactly once: {delta:?}"
    );
    assert_eq!(delta.pages_placed, data, "{delta:?}");
    assert_eq!(delta.zero_pages_placed, zero, "{delta:?}");
    assert_eq!(delta.already_present, present, "{delta:?}");
    assert_eq!(attempts, data + zero + present);
    assert_eq!(delta.requests, requests, "{delta:?}");
    assert_eq!(
        delta.faults,
        delta.requests + delta.duplicate_faults + delta.late_faults,
        "{delta:?}"
    );
    assert_eq!(
        (
            delta.faults_outside,
            delta.request_errors,
            delta.unexpected_events
        ),
        (0, 0, 0),
        "{delta:?}"
    );
    assert!(delta.faults > 0);
    totals.touches += touched.load(Relaxed);
    totals.data += data;
    totals.zero += zero;
    totals.present += present;
    totals.requests += requests;
    delta
}

#[test]
#[ignore = "soak: run with scripts/soak.sh"]
fn soak_million_faults_every_block_kind() {
    if let Err(e) = postcopy_ram::sys::uffd::probe() {
        common::skip(format_args!("userfaultfd unavailable: {e}"));
        return;
    }
    let target_faults = env_u64("PCR_SOAK_FAULTS", 1_000_000);
    let deadline = Instant::now() + Duration::from_secs(env_u64("PCR_SOAK_SECONDS", 570));
    let mut regions = vec![
        map("anon", 64 << 20, false, false, false).expect("anonymous mapping"),
        map("shm-anon", 16 << 20, false, false, true).expect("shared anonymous mapping"),
        map("memfd", 32 << 20, false, true, true).expect("memfd mapping"),
    ];
    let huge = HugePages::reserve(24);
    let huge_regions = huge.as_ref().and_then(|_| {
        Some([
            map("huge-memfd", 16 * HUGE, true, true, true)?,
            map("huge-anon", 8 * HUGE, true, false, false)?,
        ])
    });
    match huge_regions {
        Some(h) => regions.extend(h),
        None => eprintln!("NOTE: no 2 MiB huge pages could be reserved: no hugetlbfs blocks"),
    }
    let src = Arc::new(Source {
        blocks: regions.iter().map(|r| r.block.clone()).collect(),
        queue: Mutex::new(VecDeque::new()),
        wake: Condvar::new(),
        recent: Mutex::new(VecDeque::new()),
        last: Mutex::new(None),
        requests: AtomicU64::new(0),
    });
    let inc = Arc::new(Incoming::new(src.clone(), IncomingConfig::default()).expect("Incoming"));
    let progress = Arc::new(Progress {
        touches: AtomicU64::new(0),
        rounds: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    watchdog(inc.clone(), progress.clone(), deadline);

    let start = Instant::now();
    let mut totals = Totals::default();
    let mut rounds = 0u64;
    while inc.stats().faults < target_faults {
        let d = round(
            &inc,
            &src,
            Pattern { round: rounds },
            &progress,
            &mut totals,
        );
        rounds += 1;
        progress.rounds.store(rounds, Relaxed);
        eprintln!(
            "round {rounds}: {} faults ({} requests, {} duplicate, {} late), {} placed, {} zero, {} EEXIST; {:.1} s",
            d.faults, d.requests, d.duplicate_faults, d.late_faults, d.pages_placed,
            d.zero_pages_placed, d.already_present, start.elapsed().as_secs_f64()
        );
    }
    progress.done.store(true, Release);
    let s = inc.stats();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "soak: {} blocks ({}), {FAULTERS} faulting threads, {rounds} rounds in {secs:.1} s: \
         {} faults ({:.0}/s), {} touches checked, {} requests, {} duplicate faults, {} late faults, \
         {} pages placed, {} zero pages, {} EEXIST; final stats {s:?}",
        src.blocks.len(),
        src.blocks.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", "),
        s.faults,
        s.faults as f64 / secs,
        totals.touches,
        s.requests,
        s.duplicate_faults,
        s.late_faults,
        s.pages_placed,
        s.zero_pages_placed,
        s.already_present,
    );
    assert_eq!(s.requests, totals.requests);
    assert_eq!(s.pages_placed, totals.data);
    assert_eq!(s.zero_pages_placed, totals.zero);
    assert_eq!(s.already_present, totals.present);
    assert!(s.faults >= target_faults);
    drop(inc);
    drop(regions);
    drop(huge);
}
