//! The destination's thread workload: threads that stand for vCPUs and touch every page
//! of guest memory once while postcopy runs, timing the touches that fault.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use postcopy_ram::Incoming;

use crate::checksum::{dest_marker, mix};
use crate::dest::now_ns;
use crate::latency_split::LatencySplit;
use crate::memory::GuestMemory;

/// Whether the 4 KiB page at `addr` is in memory (`mincore`), before a timed touch.
fn is_resident(addr: usize, page_size: usize) -> bool {
    let base = addr & !(page_size - 1);
    let mut vec = [0u8; 1];
    // SAFETY: one page of our own mapping; mincore writes one byte per 4 KiB page, and we
    // ask for 4 KiB only.
    let rc = unsafe { libc::mincore(base as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
    rc == 0 && vec[0] & 1 != 0
}

/// Starts `threads` threads that each touch their share of the pages (every `threads`-th
/// page, in a fixed random order), write a marker into every 4th page, and time the touches
/// of pages that were not resident; returns those latencies (ns) once all have finished.
/// With `split`, each timed touch is also split at its page's placement.
pub fn thread_workload(
    mem: &GuestMemory,
    incoming: &Arc<Incoming>,
    threads: usize,
    split: Option<Arc<LatencySplit>>,
) -> Vec<u64> {
    let pages = mem.len() / 4096;
    let page_size = mem.kind().page_size();
    let base = mem.addr() as usize;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let incoming = incoming.clone();
            let split = split.clone();
            let spawn = thread::Builder::new().name(format!("workload-{t}"));
            spawn
                .spawn(move || {
                    // The workload threads stand for vCPUs: blocktime is accounted per thread.
                    // SAFETY: gettid has no preconditions.
                    let _ = incoming.register_vcpu(t as u32, unsafe { libc::gettid() });
                    drop(incoming);
                    let mut mine: Vec<usize> = (t..pages).step_by(threads).collect();
                    // Fisher-Yates with a fixed seed per thread.
                    let mut x = mix(t as u64 + 1);
                    for i in (1..mine.len()).rev() {
                        x = mix(x);
                        mine.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    let mut latencies = Vec::new();
                    let mut samples = Vec::new();
                    for p in mine {
                        let addr = base + p * 4096;
                        let resident = is_resident(addr, page_size);
                        let t0_ns = if split.is_some() && !resident {
                            now_ns()
                        } else {
                            0
                        };
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
                            if let Some(split) = &split {
                                samples.extend(split.split(p * 4096, t0_ns, now_ns()));
                            }
                        }
                    }
                    if let Some(split) = &split {
                        split.add(&samples);
                    }
                    latencies
                })
                .expect("starting a workload thread")
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("workload thread"))
        .collect()
}
