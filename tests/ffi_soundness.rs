//! Soundness of the C entry points that take caller pointers (issue 9, item 15): typed
//! arrays must be aligned before they become slices, an output must not overlap another
//! argument (two `&mut`, or a `&mut` and a `&`, to the same bytes are undefined behaviour),
//! and the discard walk must hold no reference into the bitmap while the C callback runs
//! (the callback may read it). Each case is refused with -EINVAL, or, for the walk, is
//! sound: run these tests under Miri too (`cargo +nightly miri test --test ffi_soundness`),
//! which reports the undefined behaviour the plain run cannot see.

use std::ffi::{c_int, c_void};
use std::ptr;

use postcopy_ram::ffi::wire::{
    pcr_discard_walk, pcr_wire_decode_discard, pcr_wire_decode_recv_bitmap,
    pcr_wire_encode_discard, pcr_wire_encode_recv_bitmap,
};
use postcopy_ram::ffi::wire_types::PcrWireDiscard;

const EINVAL: isize = -(libc::EINVAL as isize);

/// A POSTCOPY_RAM_DISCARD for block "ram" with ranges (0x1000, 0x2000), (0x8000, 0x1000).
fn discard_bytes() -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let starts = [0x1000u64, 0x8000];
    let lengths = [0x2000u64, 0x1000];
    let n = pcr_wire_encode_discard(
        buf.as_mut_ptr(),
        buf.len(),
        c"ram".as_ptr(),
        starts.as_ptr(),
        lengths.as_ptr(),
        2,
    );
    assert!(n > 0, "{n}");
    buf.truncate(n as usize);
    buf
}

fn empty_discard() -> PcrWireDiscard {
    PcrWireDiscard {
        name: ptr::null(),
        name_len: 0,
        range_count: 0,
    }
}

/// A `u64` array of `n` elements starting one byte into a buffer: misaligned.
struct Misaligned(Vec<u64>);

impl Misaligned {
    fn new(n: usize) -> Misaligned {
        Misaligned(vec![0u64; n + 1])
    }
    fn ptr(&mut self) -> *mut u64 {
        // Deliberately misaligned, never dereferenced by a correct library.
        self.0
            .as_mut_ptr()
            .cast::<u8>()
            .wrapping_add(1)
            .cast::<u64>()
    }
}

#[test]
fn misaligned_u64_arrays_are_refused() {
    let wire = discard_bytes();
    let mut out = empty_discard();
    let (mut s, mut l) = (Misaligned::new(4), Misaligned::new(4));
    let mut good = [0u64; 4];
    let r = pcr_wire_decode_discard(
        wire.as_ptr(),
        wire.len(),
        &mut out,
        s.ptr(),
        good.as_mut_ptr(),
        4,
    );
    assert_eq!(r, EINVAL, "misaligned starts");
    let r = pcr_wire_decode_discard(
        wire.as_ptr(),
        wire.len(),
        &mut out,
        good.as_mut_ptr(),
        l.ptr(),
        4,
    );
    assert_eq!(r, EINVAL, "misaligned lengths");
    let mut buf = [0u8; 64];
    let r = pcr_wire_encode_discard(
        buf.as_mut_ptr(),
        64,
        c"ram".as_ptr(),
        s.ptr(),
        good.as_ptr(),
        1,
    );
    assert_eq!(r, EINVAL, "misaligned starts (encode)");
    let mut bm = Misaligned::new(2);
    let mut block = [0u8; 64];
    let r = pcr_wire_encode_recv_bitmap(block.as_mut_ptr(), 64, bm.ptr(), 128);
    assert_eq!(r, EINVAL, "misaligned bitmap (encode)");
    let mut words = [u64::MAX; 2];
    let n = pcr_wire_encode_recv_bitmap(block.as_mut_ptr(), 64, words.as_ptr(), 128);
    assert!(n > 0);
    let r = pcr_wire_decode_recv_bitmap(block.as_ptr(), n as usize, bm.ptr(), 128);
    assert_eq!(r, EINVAL, "misaligned bitmap (decode)");
    let r = pcr_wire_decode_recv_bitmap(block.as_ptr(), n as usize, words.as_mut_ptr(), 128);
    assert_eq!(r, n);
    let rc = pcr_discard_walk(bm.ptr(), 128, 1, Some(count_runs), ptr::null_mut());
    assert_eq!(rc, -libc::EINVAL, "misaligned bitmap (walk)");
}

#[test]
fn overlapping_outputs_are_refused() {
    let wire = discard_bytes();
    let mut out = empty_discard();
    let mut both = [0u64; 8];
    let p = both.as_mut_ptr();
    // starts == lengths: two &mut slices over the same words.
    let r = pcr_wire_decode_discard(wire.as_ptr(), wire.len(), &mut out, p, p, 4);
    assert_eq!(r, EINVAL, "starts == lengths");
    // Partial overlap.
    let r = pcr_wire_decode_discard(wire.as_ptr(), wire.len(), &mut out, p, p.wrapping_add(2), 4);
    assert_eq!(r, EINVAL, "lengths inside starts");
    // Disjoint halves of one array are fine.
    let r = pcr_wire_decode_discard(wire.as_ptr(), wire.len(), &mut out, p, p.wrapping_add(4), 4);
    assert_eq!(r, wire.len() as isize);
    assert_eq!(both, [0x1000, 0x8000, 0, 0, 0x2000, 0x1000, 0, 0]);
    // An output over the input bytes.
    let mut inplace = [0u64; 16];
    let bytes = inplace.as_mut_ptr().cast::<u8>();
    // SAFETY: the encoded message fits the 128 bytes of `inplace`.
    unsafe { ptr::copy_nonoverlapping(wire.as_ptr(), bytes, wire.len()) };
    let mut lengths = [0u64; 4];
    let r = pcr_wire_decode_discard(
        bytes,
        wire.len(),
        &mut out,
        inplace.as_mut_ptr(),
        lengths.as_mut_ptr(),
        4,
    );
    assert_eq!(r, EINVAL, "starts over the input");
    // Encoders: the output buffer over an input array.
    let mut arr = [0x1000u64, 0x1000, 0, 0, 0, 0, 0, 0];
    let r = pcr_wire_encode_discard(
        arr.as_mut_ptr().cast::<u8>(),
        64,
        c"ram".as_ptr(),
        arr.as_ptr(),
        arr.as_ptr().wrapping_add(1),
        1,
    );
    assert_eq!(r, EINVAL, "buf over starts");
    // Two inputs may alias: starts == lengths is fine for the encoder.
    let mut buf = [0u8; 64];
    let same = [0x1000u64];
    let r = pcr_wire_encode_discard(
        buf.as_mut_ptr(),
        64,
        c"ram".as_ptr(),
        same.as_ptr(),
        same.as_ptr(),
        1,
    );
    assert!(r > 0, "{r}");
    let mut words = [u64::MAX; 8];
    let r = pcr_wire_encode_recv_bitmap(words.as_mut_ptr().cast::<u8>(), 64, words.as_ptr(), 64);
    assert_eq!(r, EINVAL, "recv bitmap: buf over bitmap");
    let mut block = [0u64; 8];
    let n = pcr_wire_encode_recv_bitmap(block.as_mut_ptr().cast::<u8>(), 64, [1u64].as_ptr(), 64);
    assert!(n > 0);
    let r = pcr_wire_decode_recv_bitmap(
        block.as_ptr().cast::<u8>(),
        n as usize,
        block.as_mut_ptr(),
        64,
    );
    assert_eq!(r, EINVAL, "recv bitmap: bitmap over buf");
}

unsafe extern "C" fn count_runs(opaque: *mut c_void, _start: u64, _npages: u64) -> c_int {
    if !opaque.is_null() {
        // SAFETY: the tests pass a u64 counter.
        unsafe { *opaque.cast::<u64>() += 1 };
    }
    0
}

/// What the walk callback below sees.
struct Reader {
    bitmap: *const u64,
    words: usize,
    runs: Vec<(u64, u64)>,
    snapshot_sum: u64,
}

/// Reads the whole bitmap through the caller's pointer on every call, as a C callback may.
unsafe extern "C" fn read_bitmap(opaque: *mut c_void, start: u64, npages: u64) -> c_int {
    // SAFETY: the test passes its Reader.
    let r = unsafe { &mut *opaque.cast::<Reader>() };
    for i in 0..r.words {
        // SAFETY: `bitmap` holds `words` words; the library holds no reference into it now.
        r.snapshot_sum = r
            .snapshot_sum
            .wrapping_add(unsafe { r.bitmap.add(i).read() });
    }
    r.runs.push((start, npages));
    0
}

#[test]
fn discard_walk_callback_may_read_the_bitmap() {
    // Host pages of 2 target pages, half set everywhere: every word is canonicalised, and
    // runs end in every word, so the walk writes the bitmap after each callback.
    let mut bitmap = vec![0x1111_1111_1111_1111u64; 8];
    bitmap.extend([0u64; 4]);
    bitmap.extend([0x1111_1111_1111_1111u64; 4]);
    let mut reader = Reader {
        bitmap: bitmap.as_ptr(),
        words: bitmap.len(),
        runs: Vec::new(),
        snapshot_sum: 0,
    };
    let nbits = bitmap.len() * 64;
    let rc = pcr_discard_walk(
        bitmap.as_mut_ptr(),
        nbits,
        2,
        Some(read_bitmap),
        (&mut reader as *mut Reader).cast(),
    );
    assert_eq!(rc, 0);
    assert_eq!(reader.runs.len(), 8 * 16 + 4 * 16);
    assert_eq!(reader.runs[0], (0, 2));
    assert!(bitmap[..8].iter().all(|&w| w == 0x3333_3333_3333_3333));
    assert_ne!(reader.snapshot_sum, 0);
}

unsafe extern "C" fn collect(opaque: *mut c_void, start: u64, npages: u64) -> c_int {
    // SAFETY: the test passes a (runs, stop_after) pair.
    let (runs, stop) = unsafe { &mut *opaque.cast::<(Vec<(u64, u64)>, usize)>() };
    runs.push((start, npages));
    if runs.len() == *stop {
        7
    } else {
        0
    }
}

/// The C walk goes a chunk at a time (so that it holds no reference while calling back):
/// its runs and canonicalised bitmap are exactly the core walk's, across chunk boundaries,
/// for every host ratio, and a callback's nonzero value stops it.
#[test]
fn discard_walk_in_chunks_matches_the_core_walk() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Under Miri: still more than two 64 Ki-page chunks, fewer host ratios.
    let nbits: usize = if cfg!(miri) { 140_001 } else { 300_017 };
    let ratios: &[usize] = if cfg!(miri) {
        &[2, 1 << 17]
    } else {
        &[1, 2, 8, 64, 128, 1 << 17]
    };
    for &ratio in ratios {
        // Long runs and long gaps, so that runs cross chunk boundaries.
        let mut bitmap = vec![0u64; nbits.div_ceil(64)];
        let mut set = false;
        let mut i = 0;
        while i < nbits {
            let len = (next() % 5000) as usize + 1;
            if set {
                for b in i..(i + len).min(nbits) {
                    bitmap[b / 64] |= 1 << (b % 64);
                }
            }
            set = !set;
            i += len;
        }
        let mut expected_map = bitmap.clone();
        let mut expected = Vec::new();
        postcopy_ram::discard_walk::discard_walk(&mut expected_map, nbits, ratio, |s, n| {
            expected.push((s, n))
        })
        .unwrap();
        let mut got: (Vec<(u64, u64)>, usize) = (Vec::new(), usize::MAX);
        let rc = pcr_discard_walk(
            bitmap.as_mut_ptr(),
            nbits,
            ratio,
            Some(collect),
            (&mut got as *mut (Vec<(u64, u64)>, usize)).cast(),
        );
        assert_eq!(rc, 0);
        assert_eq!(got.0, expected, "host ratio {ratio}");
        assert_eq!(bitmap, expected_map, "host ratio {ratio}");
        if expected.len() > 3 {
            let mut stopped: (Vec<(u64, u64)>, usize) = (Vec::new(), 3);
            let rc = pcr_discard_walk(
                bitmap.as_mut_ptr(),
                nbits,
                ratio,
                Some(collect),
                (&mut stopped as *mut (Vec<(u64, u64)>, usize)).cast(),
            );
            assert_eq!(rc, 7);
            assert_eq!(stopped.0, expected[..3]);
        }
    }
}
