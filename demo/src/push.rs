//! The postcopy phase of the demo's source: the pages the destination still lacks, sent
//! two ways at once. The return-path reader answers each page request itself, on the
//! urgent connection, as soon as the request arrives ([`serve_requests`]): a request never
//! waits behind the push. The main thread pushes everything else on the main connection in
//! runs of consecutive pages of one kind ([`Pusher`]), which the destination places with
//! one `place_pages` call each. Each page is claimed once in an atomic bitmap
//! ([`UnsentMap`]), so a page goes out on one connection only.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postcopy_ram::wire::{self, ReturnPathMsg};

use crate::dest::BLOCK;
use crate::memory::GuestMemory;
use crate::proto::{write_page_header, TAG_END};

/// Requests served so far, shared with the main thread (`--fail-channel-after` and
/// `--abort-postcopy-after` count them).
pub type RequestCount = Arc<AtomicU64>;

/// Most bytes in one background frame.
pub const MAX_RUN: usize = 256 << 10;

/// The target pages not yet sent, one bit each, claimed atomically by host page.
pub struct UnsentMap {
    words: Vec<AtomicU64>,
    ratio: usize,
}

impl UnsentMap {
    /// From a plain bitmap of target pages; `ratio` target pages a host page.
    pub fn new(bits: Vec<u64>, ratio: usize) -> UnsentMap {
        UnsentMap {
            words: bits.into_iter().map(AtomicU64::new).collect(),
            ratio,
        }
    }

    fn masks(&self, hp: usize) -> impl Iterator<Item = (usize, u64)> {
        let (first, last) = (hp * self.ratio, (hp + 1) * self.ratio);
        let mut p = first;
        std::iter::from_fn(move || {
            if p >= last {
                return None;
            }
            let (w, lo) = (p / 64, p % 64);
            let n = (64 - lo).min(last - p);
            p += n;
            Some((w, if n == 64 { !0 } else { ((1u64 << n) - 1) << lo }))
        })
    }

    /// Whether host page `hp` still has unsent target pages.
    pub fn is_unsent(&self, hp: usize) -> bool {
        self.masks(hp)
            .any(|(w, m)| self.words[w].load(Ordering::Acquire) & m != 0)
    }

    /// After a recovery: every host page the destination lacks (a target page of it not
    /// set in `received`) is unsent again, every other is sent. Returns how many it lacks.
    pub fn reset_from_received(&self, received: &[u64], host_pages: usize) -> u64 {
        let mut missing = 0;
        for hp in 0..host_pages {
            let lacks = self
                .masks(hp)
                .any(|(w, m)| received.get(w).copied().unwrap_or(0) & m != m);
            for (w, m) in self.masks(hp) {
                if lacks {
                    self.words[w].fetch_or(m, Ordering::AcqRel);
                } else {
                    self.words[w].fetch_and(!m, Ordering::AcqRel);
                }
            }
            missing += lacks as u64;
        }
        missing
    }

    /// Claims host page `hp` for sending: clears its bits; whether any was set (the caller
    /// must then send it).
    pub fn claim(&self, hp: usize) -> bool {
        let mut any = false;
        for (w, m) in self.masks(hp) {
            if self.words[w].load(Ordering::Acquire) & m != 0 {
                any |= self.words[w].fetch_and(!m, Ordering::AcqRel) & m != 0;
            }
        }
        any
    }
}

fn page_slice(mem: &GuestMemory, off: usize, len: usize) -> &[u8] {
    // SAFETY: inside the source mapping, which nothing writes during postcopy.
    unsafe { std::slice::from_raw_parts(mem.addr().add(off), len) }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Frame header bytes on the wire.
const HEADER: u64 = (2 + BLOCK.len() + 12) as u64;

/// Writes host pages `[first, end)` (all of one kind) as one frame; returns the bytes.
fn write_run(
    out: &mut impl Write,
    mem: &GuestMemory,
    page_size: usize,
    first: usize,
    end: usize,
    zero: bool,
) -> std::io::Result<u64> {
    let (off, len) = (first * page_size, (end - first) * page_size);
    write_page_header(out, zero, BLOCK, off as u64, len as u32)?;
    if zero {
        return Ok(HEADER);
    }
    out.write_all(page_slice(mem, off, len))?;
    Ok(HEADER + len as u64)
}

/// The background push: a cursor over the host pages, sending every unsent page in runs
/// of up to [`MAX_RUN`] bytes of consecutive data pages or consecutive zero pages.
pub struct Pusher {
    page_size: usize,
    bandwidth: u64,
    clock: Instant,
    cursor: usize,
    /// Host pages pushed (re-sent ones included).
    pub pages: u64,
    /// Bytes pushed.
    pub bytes: u64,
}

impl Pusher {
    /// A push of host pages of `page_size` bytes at most `bandwidth` bytes a second (0: no
    /// limit).
    pub fn new(page_size: usize, bandwidth: u64) -> Pusher {
        Pusher {
            page_size,
            bandwidth,
            clock: Instant::now(),
            cursor: 0,
            pages: 0,
            bytes: 0,
        }
    }

    /// Starts again from the first page (after a recovery marked pages unsent again).
    pub fn restart(&mut self) {
        self.cursor = 0;
    }

    /// Pushes unsent pages on `out` until none is left (returns `true`) or `stop(pages
    /// pushed)` says so after a frame (`false`; the cursor stays where it is).
    pub fn push(
        &mut self,
        out: &mut impl Write,
        mem: &GuestMemory,
        unsent: &UnsentMap,
        stop: &mut dyn FnMut(u64) -> bool,
    ) -> std::io::Result<bool> {
        let page_size = self.page_size;
        let host_pages = mem.len() / page_size;
        let max_pages = (MAX_RUN / page_size).max(1);
        while self.cursor < host_pages {
            let first = self.cursor;
            self.cursor += 1;
            if !unsent.claim(first) {
                continue;
            }
            let zero = is_zero(page_slice(mem, first * page_size, page_size));
            while self.cursor < host_pages
                && self.cursor - first < max_pages
                && unsent.is_unsent(self.cursor)
                && is_zero(page_slice(mem, self.cursor * page_size, page_size)) == zero
                && unsent.claim(self.cursor)
            {
                self.cursor += 1;
            }
            self.bytes += write_run(out, mem, page_size, first, self.cursor, zero)?;
            self.pages += (self.cursor - first) as u64;
            if self.bandwidth > 0 {
                while self.bytes as f64 > self.clock.elapsed().as_secs_f64() * self.bandwidth as f64
                {
                    // Over budget: let the socket drain (requests are served meanwhile).
                    out.flush()?;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            if stop(self.pages) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What [`serve_requests`] did (host pages sent because they were requested are counted in
/// the shared [`RequestCount`]).
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Requested host pages that had already gone out.
    pub requests_already_sent: u64,
    /// Bytes sent on the urgent connection.
    pub bytes: u64,
    /// The destination's SHUT (`Some(failed)`), if it came.
    pub shut_failed: Option<bool>,
}

/// The return-path reader: answers each page request at once on `urgent` (shared with
/// the main thread, which ends it with `E`), until SHUT or the connection closes.
pub fn serve_requests(
    rp: TcpStream,
    urgent: Arc<Mutex<BufWriter<TcpStream>>>,
    mem: Arc<GuestMemory>,
    page_size: usize,
    unsent: Arc<UnsentMap>,
    requested: RequestCount,
) -> ServeReport {
    crate::sched::raise_request_path();
    // Buffered: a request's header and body (and requests sent back to back) in one recv.
    let mut rp = BufReader::with_capacity(4096, rp);
    let mut report = ServeReport::default();
    let host_pages = mem.len() / page_size;
    let mut buf = vec![0u8; 4 + 512];
    let mut named = false;
    loop {
        if rp.read_exact(&mut buf[..4]).is_err() {
            return report;
        }
        let total = match wire::decode_return_path_header(&buf[..4]) {
            Ok(h) => h.total_len(),
            Err(e) => {
                eprintln!("[source] bad return-path message: {e}");
                return report;
            }
        };
        if rp.read_exact(&mut buf[4..total]).is_err() {
            return report;
        }
        let (start, len) = match wire::decode_return_path(&buf[..total]) {
            Ok((ReturnPathMsg::ReqPagesId { start, len, id }, _)) => {
                if id != BLOCK.as_bytes() {
                    eprintln!(
                        "[source] request for unknown block {:?}",
                        String::from_utf8_lossy(id)
                    );
                    continue;
                }
                named = true;
                (start, len as u64)
            }
            Ok((ReturnPathMsg::ReqPages { start, len }, _)) => {
                if !named {
                    eprintln!("[source] REQ_PAGES before any block was named");
                    continue;
                }
                (start, len as u64)
            }
            Ok((ReturnPathMsg::Shut { failed }, _)) => {
                report.shut_failed = Some(failed != 0);
                return report;
            }
            Ok((other, _)) => {
                eprintln!("[source] ignoring return-path {:?}", other.rp_type());
                continue;
            }
            Err(e) => {
                eprintln!("[source] bad return-path message: {e}");
                return report;
            }
        };
        let first = (start / page_size as u64) as usize;
        let last = ((start + len).div_ceil(page_size as u64) as usize).min(host_pages);
        let mut out = urgent.lock();
        let mut sent = false;
        for hp in first..last {
            if !unsent.claim(hp) {
                report.requests_already_sent += 1;
                continue;
            }
            let zero = is_zero(page_slice(&mem, hp * page_size, page_size));
            match write_run(&mut *out, &mem, page_size, hp, hp + 1, zero) {
                Ok(n) => report.bytes += n,
                Err(_) => return report,
            }
            requested.fetch_add(1, Ordering::Relaxed);
            sent = true;
        }
        if sent && out.flush().is_err() {
            return report;
        }
    }
}

/// Ends the urgent connection's stream of pages.
pub fn end_urgent(urgent: &Mutex<BufWriter<TcpStream>>) -> std::io::Result<()> {
    let mut out = urgent.lock();
    out.write_all(&[TAG_END])?;
    out.flush()
}
