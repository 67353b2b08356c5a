//! Fault storm: many threads fault random pages of several blocks (private anonymous,
//! shared memfd, and hugetlbfs where 2 MiB pages can be reserved) while a requested-page
//! server and a background placer race to place the same pages. Every page must end with
//! the right bytes, nobody may hang, and the library's counters must reconcile.
//! Its own test binary: it changes vm.nr_hugepages (and puts it back).

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use common::{page_pattern, Rng};
use parking_lot::{Condvar, Mutex};
use postcopy_ram::{
    Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, Placement, RamBlock,
};

const FAULTERS: usize = 8;
const TOUCHES_PER_THREAD: usize = 3000;

struct Region {
    addr: usize,
    len: usize,
    _fd: Option<OwnedFd>,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

fn map_region(len: usize, hugetlb: bool, memfd: bool) -> Option<(Region, Backing)> {
    let fd = if memfd {
        Some(common::memfd(c"storm", len as u64, hugetlb)?)
    } else {
        None
    };
    let (flags, raw) = match &fd {
        Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
    };
    // SAFETY: fresh mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
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
        Some(fd) => Backing::File {
            fd: fd.as_raw_fd(),
            offset: 0,
            shared: true,
        },
        None => Backing::Anonymous { shared: false },
    };
    Some((
        Region {
            addr: p as usize,
            len,
            _fd: fd,
        },
        backing,
    ))
}

struct HugePages(Option<String>);

impl HugePages {
    fn reserve(n: u64) -> Option<HugePages> {
        let path = "/proc/sys/vm/nr_hugepages";
        let old = std::fs::read_to_string(path).ok()?;
        let old_n: u64 = old.trim().parse().ok()?;
        std::fs::write(path, (old_n + n).to_string()).ok()?;
        let guard = HugePages(Some(old.trim().to_string()));
        let free: u64 = std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find(|l| l.starts_with("HugePages_Free:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (free >= n).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", old);
        }
    }
}

fn fill_page(name: &str, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(4096).enumerate() {
        page_pattern(name, offset + (i * 4096) as u64, chunk);
    }
}

/// The "source": requested pages are queued and placed by a server thread.
struct Storm {
    blocks: Vec<RamBlock>,
    queue: Mutex<VecDeque<(String, u64)>>,
    wake: Condvar,
    last_name: Mutex<Option<String>>,
    requests_seen: AtomicU64,
}

impl IncomingHooks for Storm {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(self.blocks.clone())
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        _length: u64,
    ) -> Result<(), i32> {
        let mut last = self.last_name.lock();
        if let Some(b) = block {
            *last = Some(b.as_str().to_owned());
        }
        let name = last.clone().ok_or(libc::EPROTO)?;
        self.requests_seen.fetch_add(1, Ordering::Relaxed);
        self.queue.lock().push_back((name, offset));
        self.wake.notify_one();
        Ok(())
    }
}

#[derive(Default)]
struct PlaceCount {
    placed: AtomicU64,
    present: AtomicU64,
}

fn place(incoming: &Incoming, block: &RamBlock, offset: u64, buf: &mut [u8], count: &PlaceCount) {
    fill_page(&block.name, offset, buf);
    // SAFETY: `buf` is one page of the block's size.
    match unsafe {
        incoming.place_page(block.host + offset as usize, buf.as_ptr(), block.page_size)
    } {
        Ok(Placement::Placed) => count.placed.fetch_add(1, Ordering::Relaxed),
        Ok(Placement::AlreadyPresent) => count.present.fetch_add(1, Ordering::Relaxed),
        Err(e) => panic!("place_page {} +{offset:#x}: {e}", block.name),
    };
}

#[test]
fn storm_of_faults_races_with_background_placement() {
    if let Err(e) = postcopy_ram::sys::uffd::probe() {
        common::skip(format_args!("userfaultfd unavailable: {e}"));
        return;
    }
    let mut regions = Vec::new();
    let mut blocks = Vec::new();
    let (anon, b) = map_region(16 << 20, false, false).expect("anonymous mapping");
    blocks.push(RamBlock {
        name: "anon".into(),
        host: anon.addr,
        offset: 0,
        length: anon.len as u64,
        page_size: 4096,
        backing: b,
        opaque: 0,
    });
    regions.push(anon);
    let (shm, b) = map_region(8 << 20, false, true).expect("memfd mapping");
    blocks.push(RamBlock {
        name: "shmem".into(),
        host: shm.addr,
        offset: 16 << 20,
        length: shm.len as u64,
        page_size: 4096,
        backing: b,
        opaque: 0,
    });
    regions.push(shm);
    let huge = HugePages::reserve(8);
    match huge.as_ref().and_then(|_| map_region(16 << 20, true, true)) {
        Some((r, b)) => {
            blocks.push(RamBlock {
                name: "huge".into(),
                host: r.addr,
                offset: 24 << 20,
                length: r.len as u64,
                page_size: 2 << 20,
                backing: b,
                opaque: 0,
            });
            regions.push(r);
        }
        None => eprintln!(
            "NOTE: no 2 MiB huge pages could be reserved; the storm runs without a hugetlbfs block"
        ),
    }

    let storm = Arc::new(Storm {
        blocks: blocks.clone(),
        queue: Mutex::new(VecDeque::new()),
        wake: Condvar::new(),
        last_name: Mutex::new(None),
        requests_seen: AtomicU64::new(0),
    });
    let incoming = Arc::new(Incoming::new(storm.clone(), IncomingConfig::default()).unwrap());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(PlaceCount::default());
    let weak: Weak<Incoming> = Arc::downgrade(&incoming);
    // Server: places requested pages.
    let server = {
        let (storm, done, counts, weak) =
            (storm.clone(), done.clone(), counts.clone(), weak.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 2 << 20];
            loop {
                let next = {
                    let mut q = storm.queue.lock();
                    while q.is_empty() && !done.load(Ordering::Acquire) {
                        storm.wake.wait_for(&mut q, Duration::from_millis(10));
                    }
                    q.pop_front()
                };
                let Some((name, offset)) = next else { return };
                let block = storm.blocks.iter().find(|b| b.name == name).unwrap();
                let incoming = weak.upgrade().unwrap();
                place(
                    &incoming,
                    block,
                    offset,
                    &mut buf[..block.page_size as usize],
                    &counts,
                );
            }
        })
    };
    // Background placer: every page, in a scattered order, racing the server.
    let placer = {
        let (blocks, counts, weak) = (blocks.clone(), counts.clone(), weak.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 2 << 20];
            let mut pages: Vec<(usize, u64)> = blocks
                .iter()
                .enumerate()
                .flat_map(|(i, b)| (0..b.length / b.page_size).map(move |p| (i, p * b.page_size)))
                .collect();
            let mut rng = Rng::new(0x1234_5678);
            for i in (1..pages.len()).rev() {
                pages.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let incoming = weak.upgrade().unwrap();
            for (n, (bi, off)) in pages.into_iter().enumerate() {
                let b = &blocks[bi];
                place(&incoming, b, off, &mut buf[..b.page_size as usize], &counts);
                if n % 64 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // Faulters: random 4 KiB touches across all blocks; each checks the bytes it reads.
    let (tx, rx) = mpsc::channel();
    for t in 0..FAULTERS {
        let (blocks, tx) = (blocks.clone(), tx.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(t as u64 + 1);
            let mut expected = vec![0u8; 4096];
            for _ in 0..TOUCHES_PER_THREAD {
                let b = &blocks[rng.below(blocks.len() as u64) as usize];
                let off = rng.below(b.length / 4096) * 4096;
                // SAFETY: inside a registered block; the library places it.
                let got = unsafe {
                    std::slice::from_raw_parts((b.host + off as usize) as *const u8, 4096)
                };
                page_pattern(&b.name, off, &mut expected);
                if got != &expected[..] {
                    let _ = tx.send(Err(format!("{} +{off:#x}: wrong bytes", b.name)));
                    return;
                }
            }
            let _ = tx.send(Ok(()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..FAULTERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("a faulting thread hung (stats {:?})", incoming.stats()),
        }
    }
    placer.join().unwrap();
    done.store(true, Ordering::Release);
    storm.wake.notify_all();
    server.join().unwrap();

    // Every page ends with the right bytes.
    for b in &blocks {
        let mut expected = vec![0u8; 4096];
        for off in (0..b.length).step_by(4096) {
            // SAFETY: inside the block; every page has been placed.
            let got =
                unsafe { std::slice::from_raw_parts((b.host + off as usize) as *const u8, 4096) };
            page_pattern(&b.name, off, &mut expected);
            assert_eq!(got, &expected[..], "{} +{off:#x}", b.name);
        }
    }
    // Cleanup joins the fault thread: the counters are final after it.
    incoming.cleanup().unwrap();
    let stats = incoming.stats();
    let total_pages: u64 = blocks.iter().map(|b| b.length / b.page_size).sum();
    let placed = counts.placed.load(Ordering::Relaxed);
    let present = counts.present.load(Ordering::Relaxed);
    eprintln!(
        "storm: {} blocks, {total_pages} host pages, {stats:?}",
        blocks.len()
    );
    assert_eq!(placed, total_pages, "each page placed exactly once");
    assert_eq!(stats.pages_placed, placed);
    assert_eq!(stats.already_present, present, "EEXIST races counted");
    assert_eq!(
        placed + present,
        total_pages + storm.requests_seen.load(Ordering::Relaxed)
    );
    assert_eq!(stats.requests, storm.requests_seen.load(Ordering::Relaxed));
    assert_eq!(
        stats.faults,
        stats.requests + stats.duplicate_faults + stats.late_faults,
        "{stats:?}"
    );
    assert_eq!((stats.faults_outside, stats.request_errors), (0, 0));
    assert!(stats.faults > 0);
    drop(incoming);
    drop(regions);
    drop(huge);
}
