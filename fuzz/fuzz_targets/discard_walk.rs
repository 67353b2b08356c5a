//! The source-side discard walk, fast version against the bit-by-bit reference: the same
//! runs and the same canonicalised bitmap, bits past `nbits` untouched, runs ascending,
//! disjoint, on host-page boundaries; and `try_discard_walk` stopped at any run reports
//! exactly the first runs and returns the break value.
//!
//! Input: byte 0 = host ratio (2^(b % 11), or a non-power-of-two when b >= 0xf0), byte 1 =
//! bits cut off the end of the bitmap, byte 2 = after how many runs the stoppable walk
//! stops, byte 3 = bitmap encoding (bit 0 set: one byte per word, 0x00 / 0xff giving empty
//! / full words and other bytes single bits or holes; else 8 bytes a word), then the bitmap.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use postcopy_ram::discard_walk::{
    discard_walk, discard_walk_reference, try_discard_walk, DiscardWalkError,
};

fn word_of_byte(b: u8) -> u64 {
    match b {
        0 => 0,
        0xff => !0,
        0x80..=0xfe => !(1u64 << (b & 63)),
        _ => 1u64 << (b & 63),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let [ratio_b, cut, stop_at, enc] = *head;
    let host_ratio = if ratio_b >= 0xf0 {
        usize::from(ratio_b & 0x0f) * 3
    } else {
        1usize << (ratio_b % 11)
    };
    let words: Vec<u64> = if enc & 1 == 1 {
        body.iter().map(|&b| word_of_byte(b)).collect()
    } else {
        body.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    // Sometimes ask for more bits than the bitmap holds.
    let nbits = (words.len() * 64 + usize::from(enc >> 7)).saturating_sub(usize::from(cut));

    let mut fast = words.clone();
    let mut fast_runs = Vec::new();
    let fast_result = discard_walk(&mut fast, nbits, host_ratio, |s, n| fast_runs.push((s, n)));
    let mut reference = words.clone();
    let mut ref_runs = Vec::new();
    let ref_result = discard_walk_reference(&mut reference, nbits, host_ratio, |s, n| {
        ref_runs.push((s, n))
    });
    assert_eq!(fast_result, ref_result);
    assert_eq!(fast_runs, ref_runs);
    assert_eq!(fast, reference, "canonicalised bitmaps differ");

    match fast_result {
        Err(e) => {
            assert_eq!(fast, words, "a refused walk changed the bitmap");
            assert!(fast_runs.is_empty());
            assert_eq!(e.errno(), libc::EINVAL);
            match e {
                DiscardWalkError::BadHostRatio(r) => assert!(!r.is_power_of_two()),
                DiscardWalkError::BitmapTooShort { .. } => {
                    assert!(words.len() < nbits.div_ceil(64))
                }
            }
            return;
        }
        Ok(n) => assert_eq!(n, fast_runs.len() as u64),
    }

    // Bits past nbits are never changed; set bits stay set.
    for (i, (&before, &after)) in words.iter().zip(&fast).enumerate() {
        let lo = i * 64;
        let mask = if lo + 64 <= nbits {
            !0
        } else if lo >= nbits {
            0
        } else {
            (1u64 << (nbits - lo)) - 1
        };
        assert_eq!(before & !mask, after & !mask, "word {i} changed past nbits");
        assert_eq!(before & after, before, "word {i} lost a bit");
    }
    let ratio = host_ratio as u64;
    let mut prev_end = None;
    for (k, &(start, npages)) in fast_runs.iter().enumerate() {
        assert!(npages > 0);
        assert_eq!(start % ratio, 0, "run {k} not on a host page");
        let end = start + npages;
        assert!(end <= nbits as u64);
        assert!(
            end % ratio == 0 || end == nbits as u64,
            "run {k} ends mid host page"
        );
        if let Some(p) = prev_end {
            assert!(start > p, "runs {k} and before touch or overlap");
        }
        prev_end = Some(end);
    }

    // The stoppable walk stops exactly where asked.
    let stop = usize::from(stop_at);
    let mut seen = Vec::new();
    let mut stopped = words.clone();
    let flow = try_discard_walk(&mut stopped, nbits, host_ratio, |s, n| {
        seen.push((s, n));
        if seen.len() > stop {
            ControlFlow::Break(seen.len())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("same arguments as above");
    if stop < fast_runs.len() {
        assert_eq!(flow, ControlFlow::Break(stop + 1));
        assert_eq!(seen[..], fast_runs[..=stop]);
    } else {
        assert_eq!(flow, ControlFlow::Continue(fast_runs.len() as u64));
        assert_eq!(seen, fast_runs);
        assert_eq!(stopped, fast);
    }
});
