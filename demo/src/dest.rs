//! The destination process of the demo migration.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use parking_lot::Mutex;
use postcopy_ram::destination::return_path_sender::ReturnPathSender;
use postcopy_ram::wire::{self, CommandMsg, MessageWriter};
use postcopy_ram::{
    BlockName, Incoming, IncomingConfig, IncomingHooks, Placement, RamBlock, State,
};

use crate::checksum::{checksum, dest_marker, mix};
use crate::memory::{GuestMemory, Kind};
use crate::proto::{read_item, Item};

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
}

/// Places the pages that arrive on the urgent connection (answers to page requests).
fn serve_urgent(stream: TcpStream, incoming: &Incoming, mem: &GuestMemory) -> Result<u64, String> {
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut data = Vec::new();
    let host_page = mem.kind().page_size() as u64;
    let mut placed = 0;
    loop {
        match read_item(&mut reader, &mut data) {
            Ok(Item::End) => return Ok(placed),
            Ok(Item::Page {
                name,
                offset,
                length,
            })
            | Ok(Item::Zero {
                name,
                offset,
                length,
            }) if name != BLOCK
                || offset % host_page != 0
                || length as u64 != host_page
                || offset + host_page > mem.len() as u64 =>
            {
                return Err(format!(
                    "bad page frame {name} +{offset:#x} ({length} bytes)"
                ));
            }
            Ok(Item::Page { offset, length, .. }) => {
                let host = mem.addr() as usize + offset as usize;
                // SAFETY: `data` holds `length` bytes.
                unsafe { incoming.place_page(host, data.as_ptr(), length as u64) }
                    .map_err(|e| e.to_string())?;
                placed += 1;
            }
            Ok(Item::Zero { offset, length, .. }) => {
                let host = mem.addr() as usize + offset as usize;
                incoming
                    .place_page_zero(host, length as u64)
                    .map_err(|e| e.to_string())?;
                placed += 1;
            }
            Ok(Item::Command(_)) => return Err("command on the urgent channel".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
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

/// The return-path connection, one whole message per write.
struct StreamWriter(Mutex<TcpStream>);

impl MessageWriter for StreamWriter {
    fn write_message(&self, bytes: &[u8]) -> Result<(), i32> {
        self.0
            .lock()
            .write_all(bytes)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EPIPE))
    }
}

struct DestHooks {
    block: RamBlock,
    return_path: ReturnPathSender<StreamWriter>,
}

impl IncomingHooks for DestHooks {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(vec![self.block.clone()])
    }

    fn request_page(&self, block: Option<&BlockName>, offset: u64, length: u64) -> Result<(), i32> {
        self.return_path.request_page(block, offset, length)
    }

    fn shut(&self, failed: bool) {
        if let Err(e) = self.return_path.shut(failed) {
            log::warn!("sending SHUT: errno {e}");
        }
    }
}

fn is_resident(addr: usize, page_size: usize) -> bool {
    let base = addr & !(page_size - 1);
    let mut vec = [0u8; 1];
    // SAFETY: one page of our own mapping; mincore writes one byte per 4 KiB page, and we
    // ask for 4 KiB only.
    let rc = unsafe { libc::mincore(base as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
    rc == 0 && vec[0] & 1 != 0
}

fn thread_workload(mem: &GuestMemory, threads: usize) -> Vec<u64> {
    let pages = mem.len() / 4096;
    let page_size = mem.kind().page_size();
    let base = mem.addr() as usize;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut mine: Vec<usize> = (t..pages).step_by(threads).collect();
                // Fisher-Yates with a fixed seed per thread.
                let mut x = mix(t as u64 + 1);
                for i in (1..mine.len()).rev() {
                    x = mix(x);
                    mine.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let mut latencies = Vec::new();
                for p in mine {
                    let addr = base + p * 4096;
                    let resident = is_resident(addr, page_size);
                    let t0 = Instant::now();
                    // SAFETY: inside the guest mapping; a missing page blocks until the
                    // library places it.
                    let word = unsafe { std::ptr::read_volatile(addr as *const u64) };
                    if p % 4 == 0 {
                        // SAFETY: as above; the page is present now.
                        unsafe {
                            std::ptr::write_volatile(addr as *mut u64, dest_marker(p as u64))
                        };
                    }
                    std::hint::black_box(word);
                    if !resident {
                        latencies.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                latencies
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("workload thread"))
        .collect()
}

/// Serves one migration on `stream`; returns the report.
pub fn run_dest(
    stream: TcpStream,
    urgent: TcpStream,
    opts: &DestOptions,
) -> Result<DestReport, String> {
    stream.set_nodelay(true).ok();
    let mem = Arc::new(
        GuestMemory::new(opts.kind, opts.size).map_err(|e| format!("mapping guest memory: {e}"))?,
    );
    let block = mem.block(BLOCK);
    let hooks = Arc::new(DestHooks {
        block: block.clone(),
        return_path: ReturnPathSender::new(StreamWriter(Mutex::new(
            stream.try_clone().map_err(|e| e.to_string())?,
        ))),
    });
    let incoming =
        Arc::new(Incoming::new(hooks, IncomingConfig::default()).map_err(|e| e.to_string())?);
    // Requested pages arrive on their own connection, ahead of the background stream.
    let urgent_reader = {
        let (incoming, mem) = (incoming.clone(), mem.clone());
        thread::spawn(move || serve_urgent(urgent, &incoming, &mem))
    };
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut data = Vec::new();
    let mut report = DestReport::default();
    let mut workload: Option<thread::JoinHandle<WorkloadResult>> = None;
    let host_page = opts.kind.page_size() as u64;
    let done = Arc::new(AtomicBool::new(false));
    let outcome: Result<(), String> = (|| loop {
        let item =
            read_item(&mut reader, &mut data).map_err(|e| format!("migration stream: {e}"))?;
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
                        incoming.enable_notify().map_err(|e| e.to_string())?
                    }
                    CommandMsg::PostcopyRun => {
                        incoming
                            .set_state(State::Running)
                            .map_err(|e| e.to_string())?;
                        report.t_run_ns = now_ns();
                        let mem = mem.clone();
                        let wl = opts.workload;
                        workload = Some(thread::spawn(move || match wl {
                            Workload::Threads(n) => Ok((thread_workload(&mem, n), None)),
                            Workload::Kvm => {
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
            } if name != BLOCK
                || offset % host_page != 0
                || length as u64 != host_page
                || offset + host_page > mem.len() as u64 =>
            {
                return Err(format!(
                    "bad page frame {name} +{offset:#x} ({length} bytes)"
                ));
            }
            Item::Page { offset, length, .. } => {
                let host = mem.addr() as usize + offset as usize;
                if incoming.state() < State::Listening {
                    // Precopy: plain copy.
                    // SAFETY: checked inside the mapping; not registered yet.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            data.as_ptr(),
                            host as *mut u8,
                            length as usize,
                        )
                    };
                } else {
                    // SAFETY: `data` holds `length` bytes.
                    match unsafe { incoming.place_page(host, data.as_ptr(), length as u64) } {
                        Ok(Placement::Placed) => report.pages_received_post += 1,
                        Ok(Placement::AlreadyPresent) => report.already_present += 1,
                        Err(e) => return Err(format!("placing a page: {e}")),
                    }
                }
            }
            Item::Zero { offset, length, .. } => {
                let host = mem.addr() as usize + offset as usize;
                if incoming.state() < State::Listening {
                    // SAFETY: checked inside the mapping; not registered yet.
                    let page =
                        unsafe { std::slice::from_raw_parts_mut(host as *mut u8, length as usize) };
                    if page.iter().any(|&b| b != 0) {
                        page.fill(0);
                    }
                } else {
                    match incoming.place_page_zero(host, length as u64) {
                        Ok(Placement::Placed) => report.zero_received_post += 1,
                        Ok(Placement::AlreadyPresent) => report.already_present += 1,
                        Err(e) => return Err(format!("placing a zero page: {e}")),
                    }
                }
            }
            Item::End => return Ok(()),
        }
    })();
    done.store(true, Ordering::Release);
    if let Err(e) = &outcome {
        eprintln!("[dest] migration failed: {e}");
    }
    // With a failed stream, cleanup unregisters memory: blocked workload threads wake up and
    // read whatever the kernel maps there (zero pages for anonymous memory).
    if outcome.is_err() {
        report.stats = incoming.stats();
        let _ = incoming.cleanup();
        eprintln!(
            "[dest] postcopy ended early (state {:?}, {} pages placed, {} request errors); threads \
             blocked on pages that never arrived were woken by cleanup and read zero-filled pages",
            incoming.state(),
            report.stats.pages_placed + report.stats.zero_pages_placed,
            report.stats.request_errors
        );
    }
    if let Some(handle) = workload {
        let (latencies, guest) = handle
            .join()
            .map_err(|_| "workload panicked".to_string())??;
        report.fault_latencies_ns = latencies;
        report.guest_checksum = guest;
    }
    report.t_end_ns = now_ns();
    if outcome.is_ok() {
        report.stats = incoming.stats();
        incoming.cleanup().map_err(|e| e.to_string())?;
    }
    match urgent_reader.join() {
        Ok(Ok(n)) => report.pages_received_urgent = n,
        Ok(Err(e)) => eprintln!("[dest] urgent page channel: {e}"),
        Err(_) => eprintln!("[dest] urgent page reader panicked"),
    }
    report.request_failed = report.stats.request_errors > 0;
    // SAFETY: every page has arrived (or the migration failed) and the workload is over.
    report.checksum = checksum(unsafe { mem.as_slice() });
    outcome.map(|()| report)
}
