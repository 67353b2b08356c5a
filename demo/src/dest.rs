//! The destination process of the demo migration.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use parking_lot::Mutex;
use postcopy_ram::destination::return_path_sender::{
    encode_page_request, encode_shut, MAX_MESSAGE,
};
use postcopy_ram::wire::{self, CommandMsg};
use postcopy_ram::{
    AbortOutcome, BlockName, BlocktimeReport, Incoming, IncomingConfig, IncomingHooks, Placement,
    RamBlock, RunPlacement, State,
};

use crate::checksum::checksum;
use crate::latency_split::{LatencySplit, SplitSummary};
use crate::memory::{GuestMemory, Kind};
use crate::proto::{parse_page_frame, read_item, Item};
use crate::workload::thread_workload;

/// The block name used by the demo.
pub const BLOCK: &str = "pc.ram";

/// What the destination runs once the guest is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `threads` threads touch every 4 KiB page in random order, write a marker into every
    /// 4th page, and time the first touch of each page that was not yet present.
    Threads(usize),
    /// A KVM guest whose RAM is the migrated region reads every page and writes a marker.
    Kvm,
}

/// Fault latencies of the first touches that faulted (threads), or the guest's checksum.
type WorkloadResult = Result<(Vec<u64>, Option<u32>), String>;

/// Options of the destination.
#[derive(Debug, Clone)]
pub struct DestOptions {
    pub kind: Kind,
    pub size: usize,
    pub workload: Workload,
    /// A broken channel while postcopy runs is a network failure: pause and wait for the
    /// source to reconnect (QEMU's migrate-recover). Without it, the source is gone for
    /// good and postcopy is aborted.
    pub recover: bool,
    /// Failure test: the first placement of data at or after the Nth placement after
    /// LISTEN (1-based) is made from an unreadable
    /// buffer, so it fails (EFAULT) as a placement can in production (ENOMEM when the
    /// huge page pool shrinks).
    pub inject_placement_failure: Option<u64>,
    /// Split each faulted touch's latency at its page's placement (`--latency-split`,
    /// thread workload only).
    pub latency_split: bool,
}

/// What the destination measured.
#[derive(Debug, Default, Clone)]
pub struct DestReport {
    pub checksum: u64,
    pub guest_checksum: Option<u32>,
    pub t_run_ns: u64,
    pub t_end_ns: u64,
    pub fault_latencies_ns: Vec<u64>,
    pub stats: postcopy_ram::Stats,
    pub pages_received_post: u64,
    pub zero_received_post: u64,
    pub already_present: u64,
    pub pages_received_urgent: u64,
    pub request_failed: bool,
    /// Recoveries served (reconnects), received bitmaps sent, pending requests re-sent.
    pub recoveries: u64,
    pub bitmaps_sent: u64,
    pub resent_requests: u64,
    /// The library's blocktime and latency figures.
    pub blocktime: BlocktimeReport,
    /// With `latency_split`: touch -> placed and placed -> running again.
    pub latency_split: Option<SplitSummary>,
}

/// Every placement after LISTEN goes through here: one check of the frame, the failure
/// injection of `--inject-placement-failure`, and the count.
struct Placer {
    incoming: Arc<Incoming>,
    mem: Arc<GuestMemory>,
    placements: AtomicU64,
    inject: Option<u64>,
    injected: std::sync::atomic::AtomicBool,
    /// An unreadable page (the injected failure's source).
    bad: GuestMemory,
    /// Placement stamps, with `--latency-split`.
    split: Option<Arc<LatencySplit>>,
}

impl Placer {
    /// Checks a frame of whole host pages (one page on the urgent connection, a run of
    /// them on the main one) inside the block; returns its host address.
    fn check(&self, name: &str, offset: u64, length: u32) -> Result<usize, String> {
        let host_page = self.mem.kind().page_size() as u64;
        if name != BLOCK
            || offset % host_page != 0
            || length == 0
            || length as u64 % host_page != 0
            || offset + length as u64 > self.mem.len() as u64
        {
            return Err(format!(
                "bad page frame {name} +{offset:#x} ({length} bytes)"
            ));
        }
        Ok(self.mem.addr() as usize + offset as usize)
    }

    /// Places a run of pages with data (`Some`) or of zero pages, one call each.
    fn place(&self, host: usize, data: Option<&[u8]>, length: u32) -> Result<RunPlacement, String> {
        let n = self.placements.fetch_add(1, Ordering::Relaxed) + 1;
        // Stamped before the ioctl: the placed thread may run again before it returns.
        let issued = self.split.as_ref().map(|_| now_ns());
        let r = match data {
            Some(_)
                if self.inject.is_some_and(|at| n >= at)
                    && !self.injected.swap(true, Ordering::Relaxed) =>
            {
                eprintln!("[dest] injecting a placement failure (placement #{n})");
                let page = self.bad.len() as u64;
                // SAFETY: the unreadable one-page mapping of the injection, which the
                // kernel reports as EFAULT.
                unsafe { self.incoming.place_page(host, self.bad.addr(), page) }.map(|p| {
                    RunPlacement {
                        placed: (p == Placement::Placed) as u64,
                        already_present: (p == Placement::AlreadyPresent) as u64,
                    }
                })
            }
            // SAFETY: `data` holds the frame's `length` bytes.
            Some(data) => unsafe {
                self.incoming
                    .place_pages(host, data.as_ptr(), length as u64)
            },
            None => self.incoming.place_pages_zero(host, length as u64),
        };
        if let (Ok(_), Some(split), Some(issued)) = (&r, &self.split, issued) {
            split.placed(host - self.mem.addr() as usize, length as usize, issued);
        }
        r.map_err(|e| {
            format!(
                "placing the page at +{:#x}: {e}",
                host - self.mem.addr() as usize
            )
        })
    }
}

/// The first failure of the migration: what it was and when, set once.
#[derive(Default)]
struct Failure(Mutex<Option<(String, Instant)>>);

impl Failure {
    fn set(&self, why: String) {
        self.0.lock().get_or_insert((why, Instant::now()));
    }
}

/// Places the pages that arrive on the urgent connection (answers to page requests). A
/// failed placement is recorded and the main connection shut down, so that the main loop
/// stops at once and aborts (a read error here is only the channel going away).
fn serve_urgent(stream: TcpStream, placer: &Placer, failure: &Failure, main: &TcpStream) -> u64 {
    crate::sched::raise_request_path();
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut data = Vec::new();
    let mut placed = 0;
    loop {
        let r = match read_item(&mut reader, &mut data) {
            Ok(Item::End) | Err(_) => return placed,
            Ok(Item::Page {
                name,
                offset,
                length,
            }) => placer
                .check(&name, offset, length)
                .and_then(|host| placer.place(host, Some(&data), length)),
            Ok(Item::Zero {
                name,
                offset,
                length,
            }) => placer
                .check(&name, offset, length)
                .and_then(|host| placer.place(host, None, length)),
            Ok(Item::Command(_)) => Err("command on the urgent channel".into()),
        };
        match r {
            Ok(_) => placed += 1,
            Err(e) => {
                failure.set(format!("urgent channel: {e}"));
                let _ = main.shutdown(std::net::Shutdown::Both);
                return placed;
            }
        }
    }
}

/// Places the next page frame of the main stream straight from the receive buffer when
/// it is there whole (most are: the buffer holds up to 1 MiB of the stream), with no copy
/// into a frame buffer first. Returns the placement and whether it was a zero frame, or
/// `None` (the buffer holds no whole page frame: the caller reads the next item).
fn place_buffered(
    reader: &mut BufReader<TcpStream>,
    placer: &Placer,
) -> Result<Option<(RunPlacement, bool)>, String> {
    let Some(frame) = parse_page_frame(reader.buffer()) else {
        return Ok(None);
    };
    let host = placer.check(frame.name, frame.offset, frame.length)?;
    let run = placer.place(host, frame.data, frame.length)?;
    let (size, zero) = (frame.size, frame.data.is_none());
    reader.consume(size);
    Ok(Some((run, zero)))
}

/// Monotonic clock in ns (CLOCK_MONOTONIC: comparable across processes on one machine).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct DestHooks {
    block: RamBlock,
    /// None while the channel is down (a recovery): requests fail and the library keeps
    /// them pending until `resend_pending`.
    return_path: Mutex<Option<TcpStream>>,
}

impl DestHooks {
    fn send(&self, bytes: &[u8]) -> Result<(), i32> {
        let mut rp = self.return_path.lock();
        let stream = rp.as_mut().ok_or(libc::ENOTCONN)?;
        stream.write_all(bytes).map_err(|e| {
            *rp = None;
            e.raw_os_error().unwrap_or(libc::EPIPE)
        })
    }
}

impl IncomingHooks for DestHooks {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(vec![self.block.clone()])
    }

    fn request_page(&self, block: Option<&BlockName>, offset: u64, length: u64) -> Result<(), i32> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_page_request(&mut buf, block, offset, length)?;
        self.send(&buf[..n])
    }

    fn fault_thread_started(&self) {
        crate::sched::raise_request_path();
    }

    fn shut(&self, failed: bool) {
        let mut buf = [0u8; MAX_MESSAGE];
        if let Ok(n) = encode_shut(&mut buf, failed) {
            if let Err(e) = self.send(&buf[..n]) {
                log::warn!("sending SHUT: errno {e}");
            }
        }
    }
}

/// Serves one migration on `stream` (and `urgent`; `listener` takes the connections of a
/// recovery); returns the report. A failure while postcopy runs (the source gone, a
/// placement failed) aborts postcopy at once: the pages that never arrived are poisoned,
/// the loss is reported, and this returns its error without waiting for the workload
/// (threads that touch a lost page are stopped by SIGBUS, see `sigbus`).
pub fn run_dest(
    listener: &TcpListener,
    stream: TcpStream,
    urgent: TcpStream,
    opts: &DestOptions,
) -> Result<DestReport, String> {
    stream.set_nodelay(true).ok();
    crate::sigbus::install();
    let mem = Arc::new(
        GuestMemory::new(opts.kind, opts.size).map_err(|e| format!("mapping guest memory: {e}"))?,
    );
    let block = mem.block(BLOCK);
    let hooks = Arc::new(DestHooks {
        block: block.clone(),
        // Page requests and SHUT go back on the urgent connection: they never queue behind
        // the bulk stream in the main socket (nor behind its lock).
        return_path: Mutex::new(Some(urgent.try_clone().map_err(|e| e.to_string())?)),
    });
    let config = IncomingConfig {
        blocktime: true,
        ..Default::default()
    };
    let incoming = Arc::new(Incoming::new(hooks.clone(), config).map_err(|e| e.to_string())?);
    let bad = GuestMemory::new(Kind::Anon, opts.kind.page_size()).map_err(|e| e.to_string())?;
    // SAFETY: our own mapping; made unreadable for the injected failure.
    unsafe { libc::mprotect(bad.addr().cast(), bad.len(), libc::PROT_NONE) };
    let split = (opts.latency_split && matches!(opts.workload, Workload::Threads(_)))
        .then(|| Arc::new(LatencySplit::new(mem.len())));
    let placer = Arc::new(Placer {
        incoming: incoming.clone(),
        mem: mem.clone(),
        placements: AtomicU64::new(0),
        inject: opts.inject_placement_failure,
        injected: Default::default(),
        bad,
        split: split.clone(),
    });
    let failure = Arc::new(Failure::default());
    let mut urgent_readers = Vec::new();
    let spawn_urgent = |urgent: TcpStream, main: &TcpStream| {
        let (placer, failure) = (placer.clone(), failure.clone());
        let main = main.try_clone().map_err(|e| e.to_string())?;
        thread::Builder::new()
            .name("dst-urgent".into())
            .spawn(move || serve_urgent(urgent, &placer, &failure, &main))
            .map_err(|e| e.to_string())
    };
    // Requested pages arrive on their own connection, ahead of the background stream.
    urgent_readers.push(spawn_urgent(urgent, &stream)?);
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut data = Vec::new();
    let mut report = DestReport::default();
    let mut workload: Option<thread::JoinHandle<WorkloadResult>> = None;
    let host_page = opts.kind.page_size() as u64;
    let outcome: Result<(), String> = (|| loop {
        if incoming.state() >= State::Listening {
            if let Some((run, zero)) = place_buffered(&mut reader, &placer)? {
                if zero {
                    report.zero_received_post += run.placed;
                } else {
                    report.pages_received_post += run.placed;
                }
                report.already_present += run.already_present;
                continue;
            }
        }
        let item = match read_item(&mut reader, &mut data) {
            Ok(item) => item,
            Err(e)
                if opts.recover
                    && failure.0.lock().is_none()
                    && incoming.state() == State::Running =>
            {
                // A network failure: park requests, wait for the source to reconnect.
                let t0 = Instant::now();
                *hooks.return_path.lock() = None;
                incoming.pause_requests(true).map_err(|e| e.to_string())?;
                eprintln!("[dest] channel failed ({e}); page requests paused ({} pending), waiting for the source", incoming.stats().pending_pages);
                let (main, urgent) = crate::recovery::accept_pair(listener)?;
                main.set_nodelay(true).ok();
                let requests = urgent.try_clone().map_err(|e| e.to_string())?;
                urgent_readers.push(spawn_urgent(urgent, &main)?);
                let rp = main.try_clone().map_err(|e| e.to_string())?;
                reader = BufReader::with_capacity(1 << 20, main);
                let (bitmaps, resent) = crate::recovery::dest_resume(
                    &mut reader,
                    rp,
                    requests,
                    &hooks.return_path,
                    &incoming,
                )?;
                report.recoveries += 1;
                report.bitmaps_sent += bitmaps;
                report.resent_requests += resent;
                eprintln!(
                    "[dest] recovered in {:.1} ms: {bitmaps} received bitmap(s) sent, {resent} pending requests re-sent",
                    t0.elapsed().as_secs_f64() * 1e3
                );
                continue;
            }
            Err(e) => return Err(format!("migration stream: {e}")),
        };
        let is_data = matches!(item, Item::Page { .. });
        match item {
            Item::Command(bytes) => {
                let (msg, _) =
                    wire::decode_command(&bytes).map_err(|e| format!("bad command: {e}"))?;
                match msg {
                    CommandMsg::PostcopyAdvise(advise) => {
                        if let Some(a) = advise {
                            if a.ram_pagesize_summary != host_page {
                                return Err(format!(
                                    "source page size {} != ours {host_page}",
                                    a.ram_pagesize_summary
                                ));
                            }
                        }
                        incoming.supported_by_host().map_err(|e| e.to_string())?;
                        incoming.init(0).map_err(|e| e.to_string())?;
                    }
                    CommandMsg::PostcopyRamDiscard(_) => {
                        incoming
                            .handle_discard_command(&bytes)
                            .map_err(|e| e.to_string())?;
                    }
                    CommandMsg::PostcopyListen => {
                        incoming.enable_notify().map_err(|e| e.to_string())?;
                    }
                    CommandMsg::PostcopyRun => {
                        incoming
                            .set_state(State::Running)
                            .map_err(|e| e.to_string())?;
                        report.t_run_ns = now_ns();
                        let (mem, incoming) = (mem.clone(), incoming.clone());
                        let split = split.clone();
                        let wl = opts.workload;
                        workload = Some(thread::spawn(move || match wl {
                            Workload::Threads(n) => {
                                Ok((thread_workload(&mem, &incoming, n, split), None))
                            }
                            Workload::Kvm => {
                                // KVM_RUN runs on this thread: it is vCPU 0.
                                // SAFETY: gettid has no preconditions.
                                let _ = incoming.register_vcpu(0, unsafe { libc::gettid() });
                                drop(incoming);
                                // SAFETY: the guest memory stays mapped (the Arc is held) until the
                                // guest is done; the host side touches it only after the join.
                                let r = unsafe {
                                    crate::kvm::run_checksum_guest(
                                        mem.addr(),
                                        mem.len(),
                                        // Pages in a scattered order, as a guest touches them.
                                        &crate::kvm::GuestOptions::scattered(mem.len()),
                                    )
                                }?;
                                Ok((Vec::new(), Some(r.checksum)))
                            }
                        }));
                        // This thread now moves the bulk of the pages: it yields the CPU
                        // to the request path (fault thread, urgent reader) and to the
                        // workload, which was started before so as not to inherit it.
                        crate::sched::lower_bulk_priority();
                    }
                    other => log::warn!("ignoring command {:?}", other.command()),
                }
            }
            Item::Page {
                name,
                offset,
                length,
            }
            | Item::Zero {
                name,
                offset,
                length,
            } if incoming.state() < State::Listening => {
                let host = placer.check(&name, offset, length)?;
                // SAFETY: checked inside the mapping; not registered yet (precopy).
                let page =
                    unsafe { std::slice::from_raw_parts_mut(host as *mut u8, length as usize) };
                if is_data {
                    page.copy_from_slice(&data);
                } else if page.iter().any(|&b| b != 0) {
                    page.fill(0);
                }
                // The library counts it received: a recovery's bitmap stays exact.
                incoming
                    .mark_received(host, length as u64)
                    .map_err(|e| e.to_string())?;
            }
            Item::Page {
                name,
                offset,
                length,
            } => {
                let host = placer.check(&name, offset, length)?;
                let run = placer.place(host, Some(&data), length)?;
                report.pages_received_post += run.placed;
                report.already_present += run.already_present;
            }
            Item::Zero {
                name,
                offset,
                length,
            } => {
                let host = placer.check(&name, offset, length)?;
                let run = placer.place(host, None, length)?;
                report.zero_received_post += run.placed;
                report.already_present += run.already_present;
            }
            Item::End => return Ok(()),
        }
    })();
    if let Err(e) = outcome {
        let (cause, since) = failure
            .0
            .lock()
            .clone()
            .unwrap_or_else(|| (e, Instant::now()));
        return Err(abort_now(&incoming, &cause, since));
    }
    if let Some(handle) = workload {
        let (latencies, guest) = handle
            .join()
            .map_err(|_| "workload panicked".to_string())??;
        report.fault_latencies_ns = latencies;
        report.guest_checksum = guest;
    }
    report.t_end_ns = now_ns();
    report.stats = incoming.stats();
    incoming.cleanup().map_err(|e| e.to_string())?;
    report.blocktime = incoming.blocktime();
    report.latency_split = split.map(|s| s.summary());
    for h in urgent_readers {
        match h.join() {
            Ok(n) => report.pages_received_urgent += n,
            Err(_) => eprintln!("[dest] urgent page reader panicked"),
        }
    }
    report.request_failed = report.stats.request_errors > 0;
    // SAFETY: every page has arrived and the workload is over.
    report.checksum = checksum(unsafe { mem.as_slice() });
    Ok(report)
}

/// Aborts postcopy after `cause` (noticed at `since`): pages that never arrived are
/// poisoned (or zero-filled and reported as data loss). Returns the error to exit with.
fn abort_now(incoming: &Incoming, cause: &str, since: Instant) -> String {
    if incoming.state() < State::Listening {
        let _ = incoming.cleanup();
        return format!("migration failed before postcopy: {cause}");
    }
    let outcome: Result<AbortOutcome, _> = incoming.abort();
    let stats = incoming.stats();
    let what = match &outcome {
        Ok(o) if o.poisoned => format!(
            "{} pages ({:.1} MiB) never arrived and were poisoned (a touch raises SIGBUS, no thread reads a zero page)",
            o.pages_lost,
            o.bytes_lost as f64 / 1048576.0
        ),
        Ok(o) => format!(
            "{} pages ({:.1} MiB) never arrived and were filled with zeros: DATA LOSS (no UFFDIO_POISON, Linux < 6.6)",
            o.pages_lost,
            o.bytes_lost as f64 / 1048576.0
        ),
        Err(e) => format!("the abort itself failed: {e}"),
    };
    format!(
        "postcopy aborted: {cause}; {what}; {} pages had been placed; exiting {:.0} ms after the failure",
        stats.pages_placed + stats.zero_pages_placed,
        since.elapsed().as_secs_f64() * 1e3
    )
}
