//! The source process of the demo migration.

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postcopy_ram::discard_walk::discard_walk;
use postcopy_ram::source::{DiscardCommandWriter, Source};
use postcopy_ram::wire::{Advise, CommandMsg};

use crate::checksum::{fill_initial, mix};
use crate::dest::{now_ns, BLOCK};
use crate::memory::{GuestMemory, Kind};
use crate::proto::{write_command, write_page_header, TAG_END};
use crate::push::{end_urgent, serve_requests, Pusher, RequestCount, UnsentMap};
use crate::sched::lower_bulk_priority;

/// Options of the source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub kind: Kind,
    pub size: usize,
    pub precopy_rounds: usize,
    pub dirty_threads: usize,
    pub seed: u64,
    pub progress: bool,
    /// Background push rate limit in postcopy, bytes per second (0: unlimited).
    pub postcopy_bandwidth: u64,
    /// For failure testing: drop both connections after this many postcopy pages.
    pub abort_after_pages: Option<u64>,
    /// Recovery test: cut both connections after this many postcopy pages, then
    /// reconnect to `port` and resume (RECV_BITMAP, re-send, POSTCOPY_RESUME).
    pub fail_channel_after: Option<u64>,
    /// The destination's port (for a recovery's reconnect).
    pub port: u16,
}

/// What the source measured.
#[derive(Debug, Default, Clone)]
pub struct SourceReport {
    pub precopy_bytes: u64,
    pub precopy_pages: u64,
    pub postcopy_bytes: u64,
    pub pages_requested: u64,
    pub requests_already_sent: u64,
    pub pages_pushed: u64,
    pub discard_ranges: u64,
    pub discard_commands: u64,
    pub discarded_pages: u64,
    pub dirtied_writes: u64,
    pub t_start_ns: u64,
    /// The source's memory is mapped and filled: the migration starts.
    pub t_migrate_ns: u64,
    pub t_stop_ns: u64,
    pub t_done_ns: u64,
    pub shut_failed: Option<bool>,
    /// Recoveries, their duration, and the host pages the destination's received bitmaps
    /// said it lacked (sent again).
    pub recoveries: u64,
    pub recovery_ns: u64,
    pub recovery_missing_pages: u64,
}

/// Atomic dirty bitmap, one bit per 4 KiB target page (software dirty logging: the
/// source's workload sets a page's bit after writing it).
struct DirtyMap(Vec<AtomicU64>);

impl DirtyMap {
    fn all_set(pages: usize) -> DirtyMap {
        let mut v: Vec<AtomicU64> = (0..pages.div_ceil(64))
            .map(|_| AtomicU64::new(!0))
            .collect();
        if pages % 64 != 0 {
            *v.last_mut().unwrap().get_mut() = (1u64 << (pages % 64)) - 1;
        }
        DirtyMap(v)
    }

    fn set(&self, page: usize) {
        self.0[page / 64].fetch_or(1 << (page % 64), Ordering::Release);
    }

    /// Takes (and clears) every bit.
    fn take(&self) -> Vec<u64> {
        self.0.iter().map(|w| w.swap(0, Ordering::AcqRel)).collect()
    }
}

fn host_page_dirty(bitmap: &[u64], host_page: usize, ratio: usize) -> bool {
    let first = host_page * ratio;
    (first..first + ratio).any(|p| bitmap[p / 64] & (1 << (p % 64)) != 0)
}

struct Stream {
    out: BufWriter<TcpStream>,
    mem: Arc<GuestMemory>,
    page_size: usize,
    bytes: u64,
}

impl Stream {
    /// Sends host page `hp` as a data or zero frame.
    fn send_page(&mut self, hp: usize) -> std::io::Result<()> {
        let off = hp * self.page_size;
        // SAFETY: inside the source mapping; the workload may write concurrently during
        // precopy, which is why a written page's dirty bit is set after the write.
        let page = unsafe { std::slice::from_raw_parts(self.mem.addr().add(off), self.page_size) };
        let zero = page.iter().all(|&b| b == 0);
        write_page_header(
            &mut self.out,
            zero,
            BLOCK,
            off as u64,
            self.page_size as u32,
        )?;
        self.bytes += (2 + BLOCK.len() + 12) as u64;
        if !zero {
            self.out.write_all(page)?;
            self.bytes += self.page_size as u64;
        }
        Ok(())
    }
}

/// The source's guest memory with its initial content. This is the demo's setup (a real
/// guest's memory exists before a migration starts), so it is filled by one thread a CPU.
/// (Transparent huge pages were tried: on the VM of BENCHMARKS.md their first touch was
/// slower and far more variable than 4 KiB pages'.)
fn new_guest(size: usize, seed: u64) -> Result<GuestMemory, String> {
    let mem =
        GuestMemory::new(Kind::Anon, size).map_err(|e| format!("mapping source memory: {e}"))?;
    // SAFETY: nobody else uses the memory yet; the slice covers the mapping.
    let all = unsafe { std::slice::from_raw_parts_mut(mem.addr(), mem.len()) };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    // Chunks of whole 2 MiB pages (or whole 4 KiB pages when the region is smaller).
    let per = all
        .len()
        .div_ceil(cpus)
        .next_multiple_of(2 << 20)
        .min(all.len());
    thread::scope(|s| {
        for (i, part) in all.chunks_mut(per).enumerate() {
            s.spawn(move || {
                let first = (i * per / 4096) as u64;
                for (p, chunk) in part.chunks_exact_mut(4096).enumerate() {
                    fill_initial(seed, first + p as u64, chunk);
                }
            });
        }
    });
    Ok(mem)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Runs the source side over `stream`; returns its report and its memory (frozen since the
/// switch to postcopy) for the checksum comparison.
pub fn run_source(
    stream: TcpStream,
    urgent: TcpStream,
    opts: &SourceOptions,
) -> Result<(SourceReport, Arc<GuestMemory>), String> {
    let mut report = SourceReport {
        t_start_ns: now_ns(),
        ..Default::default()
    };
    stream.set_nodelay(true).ok();
    let page_size = opts.kind.page_size();
    let ratio = page_size / 4096;
    let target_pages = opts.size / 4096;
    let host_pages = opts.size / page_size;
    // The source keeps its copy in anonymous memory whatever the destination uses: only
    // the page size matters to the protocol.
    let mem = Arc::new(new_guest(opts.size, opts.seed)?);
    // The guest's memory exists before a migration starts: the migration is timed from here.
    report.t_migrate_ns = now_ns();
    let dirty = Arc::new(DirtyMap::all_set(target_pages));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..opts.dirty_threads)
        .map(|t| {
            let (mem, dirty, stop, writes) =
                (mem.clone(), dirty.clone(), stop.clone(), writes.clone());
            let seed = opts.seed;
            thread::spawn(move || {
                let mut x = mix(seed ^ (t as u64 + 77));
                // A hot quarter of memory takes most writes, the rest a few.
                let hot = (target_pages / 4).max(1);
                while !stop.load(Ordering::Acquire) {
                    for _ in 0..64 {
                        x = mix(x);
                        let page = if x % 8 != 0 {
                            (x >> 8) as usize % hot
                        } else {
                            (x >> 8) as usize % target_pages
                        };
                        let line = (x >> 40) as usize % 64;
                        // SAFETY: inside the source mapping.
                        unsafe {
                            if x % 16 == 3 {
                                // Now and then a page is cleared: postcopy then moves a zero page.
                                std::ptr::write_bytes(mem.addr().add(page * 4096), 0, 4096);
                                dirty.set(page);
                                continue;
                            }
                            let p = mem.addr().add(page * 4096 + line * 64) as *mut u64;
                            for i in 0..8 {
                                std::ptr::write_volatile(p.add(i), mix(x ^ i as u64));
                            }
                        }
                        dirty.set(page);
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_micros(500));
                }
            })
        })
        .collect();

    // The destination's page requests (and its SHUT) come back on the urgent connection.
    let rp = urgent.try_clone().map_err(|e| e.to_string())?;
    urgent.set_nodelay(true).ok();
    let fast = BufWriter::with_capacity(64 << 10, urgent);
    let mut out = Stream {
        out: BufWriter::with_capacity(1 << 20, stream),
        mem: mem.clone(),
        page_size,
        bytes: 0,
    };
    let io = |e: std::io::Error| format!("migration stream: {e}");
    write_command(
        &mut out.out,
        &CommandMsg::PostcopyAdvise(Some(Advise {
            ram_pagesize_summary: page_size as u64,
            target_page_size: 4096,
        })),
    )
    .map_err(io)?;

    let mut last_progress = Instant::now();
    for round in 1..=opts.precopy_rounds {
        let bits = dirty.take();
        let mut sent = 0u64;
        for hp in 0..host_pages {
            if host_page_dirty(&bits, hp, ratio) {
                out.send_page(hp).map_err(io)?;
                sent += 1;
            }
            if opts.progress && last_progress.elapsed() > Duration::from_millis(500) {
                last_progress = Instant::now();
                eprintln!(
                    "[source] precopy round {round}: {:.0} MiB sent so far",
                    mib(out.bytes)
                );
            }
        }
        report.precopy_pages += sent;
        if opts.progress {
            eprintln!(
                "[source] precopy round {round}: {sent} pages ({:.1} MiB)",
                mib(sent * page_size as u64)
            );
        }
    }
    report.precopy_bytes = out.bytes;

    // Switch to postcopy: stop the workload, take the final dirty set.
    report.t_stop_ns = now_ns();
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().map_err(|_| "source workload panicked")?;
    }
    report.dirtied_writes = writes.load(Ordering::Relaxed);
    let mut unsent = dirty.take();
    let commands = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = commands.clone();
    let writer = DiscardCommandWriter::new(move |bytes: &[u8]| {
        sink.lock().push(bytes.to_vec());
        Ok(())
    });
    let source = Source::new(Box::new(writer), 4096).map_err(|e| e.to_string())?;
    let mut batch = source.discard_begin(0, BLOCK).map_err(|e| e.to_string())?;
    let mut walk_error = None;
    discard_walk(&mut unsent, target_pages, ratio, |start, npages| {
        report.discarded_pages += npages;
        if let Err(e) = source.discard_range(&mut batch, start, npages) {
            walk_error.get_or_insert(e);
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = walk_error {
        return Err(e.to_string());
    }
    let summary = source.discard_finish(batch).map_err(|e| e.to_string())?;
    report.discard_ranges = summary.ranges;
    report.discard_commands = summary.commands;
    for cmd in commands.lock().iter() {
        out.out.write_all(cmd).map_err(io)?;
    }
    write_command(&mut out.out, &CommandMsg::PostcopyListen).map_err(io)?;
    write_command(&mut out.out, &CommandMsg::PostcopyRun).map_err(io)?;
    out.out.flush().map_err(io)?;
    if opts.progress {
        eprintln!(
            "[source] postcopy: {} pages to move, {} discard ranges in {} commands",
            report.discarded_pages / ratio as u64,
            report.discard_ranges,
            report.discard_commands
        );
    }

    // Postcopy: the return-path reader answers each page request itself, on the urgent
    // connection; this thread pushes the rest in runs (push.rs).
    let unsent = Arc::new(UnsentMap::new(unsent, ratio));
    let requested: RequestCount = Arc::default();
    let spawn_server = |rp: TcpStream, urgent: &Arc<Mutex<BufWriter<TcpStream>>>| {
        let (urgent, mem, unsent, requested) = (
            urgent.clone(),
            mem.clone(),
            unsent.clone(),
            requested.clone(),
        );
        thread::Builder::new()
            .name("src-requests".into())
            .spawn(move || serve_requests(rp, urgent, mem, page_size, unsent, requested))
            .map_err(|e| e.to_string())
    };
    let mut urgent = Arc::new(Mutex::new(fast));
    let mut server = spawn_server(rp, &urgent)?;
    let mut served = Vec::new();
    // This thread moves the bulk of the pages: it yields the CPU to the request path.
    lower_bulk_priority();
    let mut pusher = Pusher::new(page_size, opts.postcopy_bandwidth);
    loop {
        let cut = opts.fail_channel_after.filter(|_| report.recoveries == 0);
        let limit = match (cut, opts.abort_after_pages) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let progress = opts.progress;
        let finished = pusher
            .push(&mut out.out, &mem, &unsent, &mut |pushed| {
                if progress && last_progress.elapsed() > Duration::from_millis(500) {
                    last_progress = Instant::now();
                    eprintln!(
                        "[source] postcopy: {pushed} pages pushed, {} requested",
                        requested.load(Ordering::Relaxed)
                    );
                }
                limit.is_some_and(|l| pushed + requested.load(Ordering::Relaxed) >= l)
            })
            .map_err(io)?;
        if finished {
            break;
        }
        let pages = pusher.pages + requested.load(Ordering::Relaxed);
        if cut.is_some_and(|l| pages >= l) {
            let t0 = Instant::now();
            out.out.flush().map_err(io)?;
            let _ = out.out.get_ref().shutdown(std::net::Shutdown::Both);
            let _ = urgent.lock().get_ref().shutdown(std::net::Shutdown::Both);
            served.push(server.join().map_err(|_| "request server panicked")?);
            if opts.progress {
                eprintln!(
                    "[source] cut both connections after {pages} postcopy pages; reconnecting"
                );
            }
            let connect = || {
                TcpStream::connect(("127.0.0.1", opts.port))
                    .map_err(|e| format!("reconnecting: {e}"))
            };
            let (main, urgent_conn) = (connect()?, connect()?);
            main.set_nodelay(true).ok();
            urgent_conn.set_nodelay(true).ok();
            let mut rp = main.try_clone().map_err(|e| e.to_string())?;
            let requests = urgent_conn.try_clone().map_err(|e| e.to_string())?;
            out.out = BufWriter::with_capacity(1 << 20, main);
            urgent = Arc::new(Mutex::new(BufWriter::with_capacity(64 << 10, urgent_conn)));
            let received =
                crate::recovery::source_fetch_bitmap(&mut out.out, &mut rp, BLOCK, target_pages)?;
            // What the destination lacks is sent again: in flight at the cut, or never
            // sent. What it has is never sent again.
            let missing = unsent.reset_from_received(&received, host_pages);
            pusher.restart();
            crate::recovery::source_resume(&mut out.out, &mut rp)?;
            server = spawn_server(requests, &urgent)?;
            report.recoveries += 1;
            report.recovery_missing_pages = missing;
            report.recovery_ns = t0.elapsed().as_nanos() as u64;
            if opts.progress {
                eprintln!("[source] resumed: the destination lacks {missing} pages");
            }
            continue;
        }
        // --abort-postcopy-after
        out.out.flush().map_err(io)?;
        let _ = out.out.get_ref().shutdown(std::net::Shutdown::Both);
        let _ = urgent.lock().get_ref().shutdown(std::net::Shutdown::Both);
        let _ = server.join();
        return Err(format!(
            "aborted postcopy after {} pages (--abort-postcopy-after)",
            opts.abort_after_pages.unwrap_or(pages)
        ));
    }
    out.out.write_all(&[TAG_END]).map_err(io)?;
    out.out.flush().map_err(io)?;
    end_urgent(&urgent).map_err(io)?;
    report.t_done_ns = now_ns();
    // Late requests are for pages already in the stream; they are counted until SHUT.
    served.push(server.join().map_err(|_| "request server panicked")?);
    report.pages_pushed = pusher.pages;
    report.pages_requested = requested.load(Ordering::Relaxed);
    report.requests_already_sent = served.iter().map(|s| s.requests_already_sent).sum();
    report.postcopy_bytes = pusher.bytes + served.iter().map(|s| s.bytes).sum::<u64>() + 2;
    report.shut_failed = served.last().and_then(|s| s.shut_failed);
    Ok((report, mem))
}
