//! The C entry points that take caller pointers and lengths, called as C would call them
//! with pointers into buffers and lengths the input chooses: placement (`pcr_place_page*`)
//! on a live destination with hosts near, inside, between and past its two adjacent
//! blocks and lengths that are unaligned, too long or overflowing; the wire encoders and
//! decoders with short, NULL or misaligned buffers; and `pcr_discard_walk`.
//!
//! Every buffer the library may read or write is its own heap allocation of exactly the
//! size passed, so ASan sees any access past it. Placement is checked against the pages
//! the kernel reports present (mincore) before and after each call: a refused call places
//! nothing anywhere, an accepted one places exactly its range with the right bytes. The
//! wire calls must agree with the Rust codecs on the same bytes. Every failure returns a
//! negative errno with exactly one logged error line (-EEXIST from placement: none).
#![no_main]

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postcopy_ram::discard_walk::discard_walk;
use postcopy_ram::ffi::incoming::*;
use postcopy_ram::ffi::incoming_ops::PcrIncomingOps;
use postcopy_ram::ffi::misc::pcr_set_log_callback;
use postcopy_ram::ffi::placement::*;
use postcopy_ram::ffi::types::{PcrRamBlock, PcrRamBlockVisitor};
use postcopy_ram::ffi::wire::*;
use postcopy_ram::ffi::wire_types::*;
use postcopy_ram::wire;

const PAGE: usize = 4096;
/// Two adjacent 8-page blocks, "a" then "b", with a guard page mapped on each side.
const BLOCK_PAGES: usize = 8;
const MAP_PAGES: usize = 2 * BLOCK_PAGES + 2;

static ERROR_LINES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn log_line(_: *mut c_void, level: c_int, _: *const c_char) {
    if level == 1 {
        ERROR_LINES.fetch_add(1, SeqCst);
    }
}

/// Runs one C call and checks the logging convention for its return value `rc`.
fn logged<T: Copy + Into<i64>>(what: &str, call: impl FnOnce() -> T) -> T {
    ERROR_LINES.store(0, SeqCst);
    let rc = call();
    let lines = ERROR_LINES.load(SeqCst);
    let rc64: i64 = rc.into();
    let want = usize::from(rc64 < 0 && rc64 != -(libc::EEXIST as i64));
    assert_eq!(
        lines, want,
        "{what} returned {rc64} with {lines} error lines"
    );
    rc
}

struct Guest {
    map: usize,
    /// Source bytes for placements: 4 blocks' worth, so that any valid run fits.
    src: Vec<u8>,
}

fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        // SAFETY: log_line is a valid callback for the whole run; it touches no library state.
        pcr_set_log_callback(Some(log_line), std::ptr::null_mut(), 1);
        // SAFETY: a fresh private anonymous mapping kept for the whole run.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let src = (0..4 * BLOCK_PAGES * PAGE)
            .map(|i| (i / PAGE * 31 + i % 251) as u8 | 1)
            .collect();
        Guest {
            map: p as usize,
            src,
        }
    })
}

fn block_start(g: &Guest, b: usize) -> usize {
    g.map + PAGE + b * BLOCK_PAGES * PAGE
}

unsafe extern "C" fn foreach_block(
    opaque: *mut c_void,
    visit: PcrRamBlockVisitor,
    ctx: *mut c_void,
) -> c_int {
    // SAFETY: opaque is the &'static Guest given to pcr_incoming_new.
    let g = unsafe { &*(opaque as *const Guest) };
    for (b, name) in [c"a", c"b"].iter().enumerate() {
        let block = PcrRamBlock {
            name: name.as_ptr(),
            host: block_start(g, b) as *mut c_void,
            offset: (b * BLOCK_PAGES * PAGE) as u64,
            length: (BLOCK_PAGES * PAGE) as u64,
            page_size: PAGE as u64,
            fd: -1,
            fd_offset: 0,
            shared: false,
            opaque: std::ptr::null_mut(),
        };
        // SAFETY: the visitor and ctx the library passed, with a block valid during the call.
        let rc = unsafe { visit(&block, ctx) };
        if rc != 0 {
            return rc;
        }
    }
    0
}

unsafe extern "C" fn request_page(
    _: *mut c_void,
    _: *mut c_void,
    _: *const c_char,
    _: u64,
    _: u64,
) -> c_int {
    // Nothing here touches a missing page, so no fault can happen.
    -libc::EIO
}

/// Which pages of the whole mapping are present.
fn present(g: &Guest) -> Vec<bool> {
    let mut v = vec![0u8; MAP_PAGES];
    // SAFETY: our own mapping; `v` has one byte per page.
    let rc = unsafe { libc::mincore(g.map as *mut c_void, MAP_PAGES * PAGE, v.as_mut_ptr()) };
    assert_eq!(rc, 0);
    v.iter().map(|b| b & 1 == 1).collect()
}

/// A cursor over the fuzz input; reads past its end give zeros.
struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| v << 8 | u64::from(self.u8()))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

/// A host address: near block a, block b, the end of b, or anywhere; plus pages and bytes.
fn pick_host(g: &Guest, inp: &mut In) -> usize {
    let base = match inp.u8() % 5 {
        0 => block_start(g, 0),
        1 => block_start(g, 1),
        2 => block_start(g, 2),
        3 => 0,
        _ => inp.u64() as usize,
    };
    let pages = (inp.u8() as i8) as isize;
    let bytes = if inp.u8() % 8 == 0 {
        usize::from(inp.u8())
    } else {
        0
    };
    base.wrapping_add_signed(pages * PAGE as isize)
        .wrapping_add(bytes)
}

/// A length: some pages, a page less than 2^64 wraps, or anything.
fn pick_len(inp: &mut In) -> usize {
    match inp.u8() % 4 {
        0 | 1 => usize::from(inp.u8() % 20) * PAGE,
        2 => 0usize.wrapping_sub(usize::from(inp.u8()) * PAGE),
        _ => inp.u64() as usize,
    }
}

/// Which block holds `[host, host + len)` whole and aligned, if any.
fn valid_run(g: &Guest, host: usize, len: usize) -> Option<usize> {
    let end = host.checked_add(len)?;
    (0..2).find(|&b| {
        let (s, e) = (block_start(g, b), block_start(g, b) + BLOCK_PAGES * PAGE);
        host >= s && end <= e && host % PAGE == 0 && len % PAGE == 0 && len != 0
    })
}

fn placement(g: &Guest, mis: *mut PcrIncoming, op: u8, inp: &mut In) {
    let host = pick_host(g, inp);
    let len = pick_len(inp);
    let from_off = usize::from(inp.u8()) * 64 % (2 * BLOCK_PAGES * PAGE);
    let from_null = inp.u8() % 16 == 0;
    let from = if from_null {
        std::ptr::null()
    } else {
        g.src[from_off..].as_ptr() as *const c_void
    };
    let zero = op % 2 == 1;
    let single = op % 4 < 2;
    let before = present(g);
    let rc: i64 = match (single, zero) {
        (true, false) => logged("pcr_place_page", || {
            pcr_place_page(mis, host as *mut c_void, from, len)
        })
        .into(),
        (true, true) => logged("pcr_place_page_zero", || {
            pcr_place_page_zero(mis, host as *mut c_void, len)
        })
        .into(),
        (false, false) => logged("pcr_place_pages", || {
            pcr_place_pages(mis, host as *mut c_void, from, len) as i64
        }),
        (false, true) => logged("pcr_place_pages_zero", || {
            pcr_place_pages_zero(mis, host as *mut c_void, len) as i64
        }),
    };
    let after = present(g);
    let valid = valid_run(g, host, len)
        .filter(|_| !mis.is_null() && (!single || len == PAGE) && (zero || !from_null));
    let Some(_) = valid else {
        assert_eq!(rc, -(libc::EINVAL as i64), "refused {host:#x}+{len:#x}");
        assert_eq!(
            before, after,
            "a refused placement {host:#x}+{len:#x} placed pages"
        );
        return;
    };
    let first = (host - g.map) / PAGE;
    let n = len / PAGE;
    let newly = (first..first + n).filter(|&p| !before[p]).count() as i64;
    for (p, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if (first..first + n).contains(&p) {
            assert!(a, "page {p} not present after placing it");
            if !b {
                // SAFETY: present now, inside our mapping.
                let got =
                    unsafe { std::slice::from_raw_parts((g.map + p * PAGE) as *const u8, PAGE) };
                let want_off = from_off + (p - first) * PAGE;
                if zero {
                    assert!(got.iter().all(|&x| x == 0), "page {p} not zero");
                } else {
                    assert_eq!(got, &g.src[want_off..want_off + PAGE], "page {p} bytes");
                }
            }
        } else {
            assert_eq!(b, a, "page {p} outside {host:#x}+{len:#x} changed");
        }
    }
    if single {
        assert_eq!(
            rc,
            if newly == 1 {
                0
            } else {
                -(libc::EEXIST as i64)
            }
        );
    } else {
        assert_eq!(rc, newly);
    }
}

/// An exact-size heap copy of `bytes` (ASan catches reads past it).
fn boxed(bytes: &[u8]) -> Box<[u8]> {
    bytes.to_vec().into_boxed_slice()
}

fn decoders(op: u8, inp: &mut In) {
    let n = usize::from(inp.u8()) * 2;
    let bytes = boxed(inp.bytes(n));
    let len = bytes.len();
    let buf = if op & 0x10 != 0 {
        std::ptr::null()
    } else {
        bytes.as_ptr()
    };
    let null = buf.is_null();
    let expect = |r: Result<usize, wire::WireError>| -> i64 {
        if null {
            return -(libc::EINVAL as i64);
        }
        match r {
            Ok(n) => n as i64,
            Err(e) => -(e.errno() as i64),
        }
    };
    match op % 6 {
        0 => {
            let mut out = std::mem::MaybeUninit::<PcrWireCommand>::uninit();
            let rc = logged("pcr_wire_decode_command", || {
                pcr_wire_decode_command(buf, len, out.as_mut_ptr()) as i64
            });
            assert_eq!(rc, expect(wire::decode_command(&bytes).map(|(_, n)| n)));
        }
        1 => {
            let mut out = std::mem::MaybeUninit::<PcrWireHeader>::uninit();
            let rc = logged("pcr_wire_decode_command_header", || {
                i64::from(pcr_wire_decode_command_header(buf, len, out.as_mut_ptr()))
            });
            assert_eq!(rc, expect(wire::decode_command_header(&bytes).map(|_| 0)));
        }
        2 => {
            let mut out = std::mem::MaybeUninit::<PcrWireRpMessage>::uninit();
            let rc = logged("pcr_wire_decode_return_path", || {
                pcr_wire_decode_return_path(buf, len, out.as_mut_ptr()) as i64
            });
            assert_eq!(rc, expect(wire::decode_return_path(&bytes).map(|(_, n)| n)));
        }
        3 => {
            let mut out = std::mem::MaybeUninit::<PcrWireHeader>::uninit();
            let rc = logged("pcr_wire_decode_return_path_header", || {
                i64::from(pcr_wire_decode_return_path_header(
                    buf,
                    len,
                    out.as_mut_ptr(),
                ))
            });
            assert_eq!(
                rc,
                expect(wire::decode_return_path_header(&bytes).map(|_| 0))
            );
        }
        4 => {
            // Output arrays of `capacity` words, exactly; sometimes misaligned by a byte.
            let capacity = usize::from(inp.u8() % 16);
            let misalign = inp.u8() % 8 == 0 && capacity > 0;
            let alias = !misalign && inp.u8() % 8 == 0 && capacity > 0;
            let mut starts = vec![0u64; capacity + 1].into_boxed_slice();
            let mut lengths = vec![0u64; capacity].into_boxed_slice();
            let sp = if misalign {
                // SAFETY: one byte into an allocation of capacity + 1 words.
                unsafe { (starts.as_mut_ptr() as *mut u8).add(1) as *mut u64 }
            } else {
                starts.as_mut_ptr()
            };
            // starts == lengths would make two outputs alias: refused.
            let lp = if alias { sp } else { lengths.as_mut_ptr() };
            let mut out = std::mem::MaybeUninit::<PcrWireDiscard>::uninit();
            let rc = logged("pcr_wire_decode_discard", || {
                pcr_wire_decode_discard(buf, len, out.as_mut_ptr(), sp, lp, capacity) as i64
            });
            if misalign || alias || null {
                assert_eq!(rc, -(libc::EINVAL as i64), "misaligned or aliased outputs");
                return;
            }
            let want = match wire::decode_command(&bytes) {
                Ok((wire::CommandMsg::PostcopyRamDiscard(d), used)) => {
                    for (i, r) in d.ranges().take(capacity).enumerate() {
                        assert_eq!((starts[i], lengths[i]), (r.start, r.length));
                    }
                    if d.range_count() > capacity {
                        -(libc::ENOSPC as i64)
                    } else {
                        used as i64
                    }
                }
                Ok(_) => -(libc::EBADMSG as i64),
                Err(e) => -(e.errno() as i64),
            };
            assert_eq!(rc, want);
        }
        _ => {
            // Received bitmap into exactly nbits.div_ceil(64) words.
            let nbits = usize::from(inp.u8()) * 8 + usize::from(inp.u8() % 8);
            let mut words = vec![0u64; nbits.div_ceil(64)].into_boxed_slice();
            let wp = if words.is_empty() {
                std::ptr::NonNull::dangling().as_ptr()
            } else {
                words.as_mut_ptr()
            };
            let rc = logged("pcr_wire_decode_recv_bitmap", || {
                pcr_wire_decode_recv_bitmap(buf, len, wp, nbits) as i64
            });
            let mut check = vec![0u64; nbits.div_ceil(64)];
            let want = wire::decode_recv_bitmap(&bytes)
                .and_then(|(bm, used)| bm.copy_to_words(&mut check, nbits).map(|()| used));
            assert_eq!(rc, expect(want));
            if rc >= 0 {
                assert_eq!(&words[..], &check[..]);
            }
        }
    }
}

fn encoders(op: u8, inp: &mut In) {
    // Output buffers of exactly `buf_len` bytes.
    let buf_len = usize::from(inp.u8() % 64);
    let mut out = vec![0u8; buf_len].into_boxed_slice();
    let bp = if buf_len == 0 {
        std::ptr::NonNull::dangling().as_ptr()
    } else {
        out.as_mut_ptr()
    };
    let name_len = usize::from(inp.u8() % 12);
    let name = boxed(inp.bytes(name_len));
    match op % 4 {
        0 => {
            let msg = PcrWireCommand {
                cmd: u16::from(inp.u8() % 14),
                value: inp.u64() as u32,
                has_page_sizes: inp.u8() % 2,
                ram_pagesize_summary: inp.u64(),
                target_page_size: inp.u64(),
                name: name.as_ptr().cast(),
                name_len: name.len(),
                range_count: 0,
            };
            let rc = logged("pcr_wire_encode_command", || {
                pcr_wire_encode_command(bp, buf_len, &msg) as i64
            });
            if rc > 0 {
                let (m, used) =
                    wire::decode_command(&out[..rc as usize]).expect("encoded command decodes");
                assert_eq!((m.command().as_u16(), used), (msg.cmd, rc as usize));
            }
        }
        1 => {
            let count = usize::from(inp.u8() % 6);
            let starts: Box<[u64]> = (0..count).map(|_| inp.u64() >> (inp.u8() % 64)).collect();
            let lengths: Box<[u64]> = (0..count).map(|_| inp.u64() >> (inp.u8() % 64)).collect();
            let mut cname = name.to_vec();
            cname.push(0);
            let rc = logged("pcr_wire_encode_discard", || {
                pcr_wire_encode_discard(
                    bp,
                    buf_len,
                    cname.as_ptr().cast(),
                    starts.as_ptr(),
                    lengths.as_ptr(),
                    count,
                ) as i64
            });
            if rc > 0 {
                let (m, _) =
                    wire::decode_command(&out[..rc as usize]).expect("encoded discard decodes");
                let wire::CommandMsg::PostcopyRamDiscard(d) = m else {
                    panic!("{m:?}")
                };
                assert!(d
                    .ranges()
                    .map(|r| (r.start, r.length))
                    .eq(starts.iter().copied().zip(lengths.iter().copied())));
            }
        }
        2 => {
            let msg = PcrWireRpMessage {
                rp_type: u16::from(inp.u8() % 10),
                value: inp.u64() as u32,
                start: inp.u64(),
                len: inp.u64() as u32,
                name: name.as_ptr().cast(),
                name_len: name.len(),
            };
            let rc = logged("pcr_wire_encode_return_path", || {
                pcr_wire_encode_return_path(bp, buf_len, &msg) as i64
            });
            if rc > 0 {
                let (m, used) =
                    wire::decode_return_path(&out[..rc as usize]).expect("encoded message decodes");
                assert_eq!((m.rp_type().as_u16(), used), (msg.rp_type, rc as usize));
            }
        }
        _ => {
            let nbits = usize::from(inp.u8()) * 3;
            let words: Box<[u64]> = (0..nbits.div_ceil(64)).map(|_| inp.u64()).collect();
            let wp = if words.is_empty() {
                std::ptr::NonNull::dangling().as_ptr()
            } else {
                words.as_ptr()
            };
            let rc = logged("pcr_wire_encode_recv_bitmap", || {
                pcr_wire_encode_recv_bitmap(bp, buf_len, wp, nbits) as i64
            });
            let need = pcr_wire_recv_bitmap_len(nbits) as i64;
            assert_eq!(
                rc,
                if need <= buf_len as i64 {
                    need
                } else {
                    -(libc::ENOSPC as i64)
                }
            );
        }
    }
}

unsafe extern "C" fn walk_cb(opaque: *mut c_void, start: u64, npages: u64) -> c_int {
    // SAFETY: opaque is the (runs, stop_after) pair of walk() below, alive during the walk.
    let (runs, stop) = unsafe { &mut *(opaque as *mut (Vec<(u64, u64)>, usize)) };
    runs.push((start, npages));
    if runs.len() > *stop {
        7
    } else {
        0
    }
}

fn walk(inp: &mut In) {
    let host_ratio = 1usize << (inp.u8() % 10);
    let stop = usize::from(inp.u8());
    let nwords = usize::from(inp.u8() % 64);
    let nbits = (nwords * 64).saturating_sub(usize::from(inp.u8() % 64));
    let words: Vec<u64> = (0..nwords).map(|_| inp.u64()).collect();
    let misalign = inp.u8() % 8 == 0 && nwords > 0;
    // Exactly nwords words, or the same words one byte off in a larger allocation.
    let mut exact = words.clone().into_boxed_slice();
    let mut spare = vec![0u8; nwords * 8 + 8].into_boxed_slice();
    let ptr = if misalign {
        spare[1..1 + nwords * 8].copy_from_slice(
            &words
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect::<Vec<_>>(),
        );
        spare[1..].as_mut_ptr() as *mut u64
    } else if nwords == 0 {
        std::ptr::NonNull::dangling().as_ptr()
    } else {
        exact.as_mut_ptr()
    };
    let mut ctx: (Vec<(u64, u64)>, usize) = (Vec::new(), stop);
    let rc = logged("pcr_discard_walk", || {
        i64::from(pcr_discard_walk(
            ptr,
            nbits,
            host_ratio,
            Some(walk_cb),
            &mut ctx as *mut _ as *mut c_void,
        ))
    });
    if misalign {
        assert_eq!(rc, -(libc::EINVAL as i64), "misaligned bitmap");
        return;
    }
    let mut want = Vec::new();
    let mut copy = words.clone();
    discard_walk(&mut copy, nbits, host_ratio, |s, n| want.push((s, n))).unwrap();
    if stop < want.len() {
        assert_eq!(rc, 7);
        assert_eq!(ctx.0[..], want[..=stop]);
    } else {
        assert_eq!(rc, 0);
        assert_eq!(ctx.0, want);
        assert_eq!(&exact[..], &copy[..]);
    }
}

fuzz_target!(|data: &[u8]| {
    let g = guest();
    let mut inp = In(data);
    let mut mis: *mut PcrIncoming = std::ptr::null_mut();
    for _ in 0..16 {
        if inp.0.is_empty() {
            break;
        }
        let op = inp.u8();
        match op >> 6 {
            0 => {
                if mis.is_null() {
                    let ops = PcrIncomingOps {
                        foreach_ram_block: Some(foreach_block),
                        request_page: Some(request_page),
                        discard_range: None,
                        state_changed: None,
                        shut: None,
                        balloon_inhibit: None,
                        mlock: None,
                        write_return_path: None,
                        target_page_size: 0,
                        enable_mlock: false,
                        spin_wait_us: 0,
                        fault_thread_started: None,
                        fault_thread_stopping: None,
                        never_send_shut: false,
                        track_remove: false,
                        blocktime: false,
                    };
                    mis = pcr_incoming_new(&ops, g as *const Guest as *mut c_void);
                    assert!(!mis.is_null());
                    assert_eq!(pcr_incoming_init(mis, 0), 0);
                    assert_eq!(pcr_incoming_enable_notify(mis), 0);
                    assert!(present(g).iter().all(|&p| !p), "init left pages present");
                }
                // Now and then a NULL handle, which every export refuses.
                let m = if op & 0x30 == 0x30 {
                    std::ptr::null_mut()
                } else {
                    mis
                };
                placement(g, m, op, &mut inp);
            }
            1 => decoders(op, &mut inp),
            2 => encoders(op, &mut inp),
            _ => walk(&mut inp),
        }
    }
    if !mis.is_null() {
        assert_eq!(pcr_incoming_cleanup(mis), 0);
        pcr_incoming_free(mis);
    }
});
