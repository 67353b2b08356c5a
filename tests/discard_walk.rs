//! The discard walk: fixed cases, and the fast walk against the bit-by-bit reference over
//! seeded random bitmaps.

mod common;

use std::ops::ControlFlow;

use common::Rng;

use postcopy_ram::discard_walk::{
    discard_walk, discard_walk_reference, try_discard_walk, DiscardWalkError,
};

const RATIOS: [usize; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

fn fast(bitmap: &mut [u64], nbits: usize, ratio: usize) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let n = discard_walk(bitmap, nbits, ratio, |s, l| runs.push((s, l))).expect("walk");
    assert_eq!(n, runs.len() as u64, "returned run count");
    runs
}

fn reference(bitmap: &mut [u64], nbits: usize, ratio: usize) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let n = discard_walk_reference(bitmap, nbits, ratio, |s, l| runs.push((s, l)))
        .expect("reference walk");
    assert_eq!(n, runs.len() as u64, "reference run count");
    runs
}

fn bit(bitmap: &[u64], i: usize) -> bool {
    bitmap[i / 64] >> (i % 64) & 1 == 1
}

/// Fast and reference agree on runs and on the bitmap they leave; the runs are well formed.
fn check_against_reference(original: &[u64], nbits: usize, ratio: usize, what: &str) {
    let mut a = original.to_vec();
    let mut b = original.to_vec();
    let runs = fast(&mut a, nbits, ratio);
    let expected = reference(&mut b, nbits, ratio);
    assert_eq!(
        runs, expected,
        "{what}: runs differ (nbits {nbits}, ratio {ratio})"
    );
    assert_eq!(
        a, b,
        "{what}: canonicalised bitmaps differ (nbits {nbits}, ratio {ratio})"
    );
    check_runs(&a, original, &runs, nbits, ratio, what);
    // Canonical bitmaps are a fixed point: a second walk changes nothing.
    let mut again = a.clone();
    assert_eq!(fast(&mut again, nbits, ratio), runs, "{what}: second walk");
    assert_eq!(again, a, "{what}: second walk changed the bitmap");
}

fn check_runs(
    after: &[u64],
    before: &[u64],
    runs: &[(u64, u64)],
    nbits: usize,
    ratio: usize,
    what: &str,
) {
    let mut prev_end: Option<u64> = None;
    for &(start, len) in runs {
        assert!(len > 0, "{what}: empty run");
        let end = start + len;
        assert!(end <= nbits as u64, "{what}: run past nbits");
        if let Some(p) = prev_end {
            assert!(start > p, "{what}: runs overlap or touch");
        }
        assert_eq!(
            start % ratio as u64,
            0,
            "{what}: run start {start} not host aligned"
        );
        assert!(
            end % ratio as u64 == 0 || end == nbits as u64,
            "{what}: run end {end} not host aligned"
        );
        prev_end = Some(end);
    }
    // Every set bit below nbits is in a run and vice versa; bits at and past nbits are kept.
    let mut covered = vec![false; nbits];
    for &(start, len) in runs {
        for c in &mut covered[start as usize..(start + len) as usize] {
            *c = true;
        }
    }
    for (i, &c) in covered.iter().enumerate() {
        assert_eq!(bit(after, i), c, "{what}: bit {i}");
        if bit(before, i) {
            assert!(c, "{what}: set bit {i} not discarded");
        }
    }
    for i in nbits..after.len() * 64 {
        assert_eq!(
            bit(after, i),
            bit(before, i),
            "{what}: bit {i} past nbits changed"
        );
    }
}

#[test]
fn empty_bitmap() {
    for ratio in RATIOS {
        let mut bm: Vec<u64> = Vec::new();
        assert_eq!(fast(&mut bm, 0, ratio), vec![]);
        let mut bm = vec![u64::MAX; 2];
        assert_eq!(fast(&mut bm, 0, ratio), vec![], "nbits 0 ignores every bit");
        assert_eq!(bm, vec![u64::MAX; 2]);
    }
}

#[test]
fn all_clear_and_all_set() {
    for ratio in RATIOS {
        for nbits in [1usize, 63, 64, 65, 640, 1000, 4096, 5000] {
            let zero = vec![0u64; nbits.div_ceil(64)];
            check_against_reference(&zero, nbits, ratio, "all clear");
            let mut z = zero.clone();
            assert_eq!(fast(&mut z, nbits, ratio), vec![]);
            let ones = vec![u64::MAX; nbits.div_ceil(64)];
            check_against_reference(&ones, nbits, ratio, "all set");
            let mut o = ones.clone();
            assert_eq!(fast(&mut o, nbits, ratio), vec![(0, nbits as u64)]);
        }
    }
}

#[test]
fn runs_crossing_words() {
    let mut bm = vec![0u64; 4];
    for i in 60..70 {
        bm[i / 64] |= 1 << (i % 64);
    }
    for i in 127..=192 {
        bm[i / 64] |= 1 << (i % 64);
    }
    let orig = bm.clone();
    assert_eq!(fast(&mut bm.clone(), 256, 1), vec![(60, 10), (127, 66)]);
    assert_eq!(fast(&mut bm.clone(), 256, 4), vec![(60, 12), (124, 72)]);
    assert_eq!(fast(&mut bm, 256, 64), vec![(0, 256)]);
    for ratio in RATIOS {
        check_against_reference(&orig, 256, ratio, "crossing words");
    }
}

#[test]
fn canonicalises_into_the_bitmap() {
    // Page 5 with host pages of 4: host page 4..8 becomes wholly set.
    let mut bm = vec![1u64 << 5];
    assert_eq!(fast(&mut bm, 64, 4), vec![(4, 4)]);
    assert_eq!(bm, vec![0xf0]);
    // Page 600 with host pages of 512: pages 512..1024 become set.
    let mut bm = vec![0u64; 16];
    bm[600 / 64] |= 1 << (600 % 64);
    assert_eq!(fast(&mut bm, 1024, 512), vec![(512, 512)]);
    assert!(bm[..8].iter().all(|&w| w == 0));
    assert!(bm[8..].iter().all(|&w| w == u64::MAX));
}

#[test]
fn partial_last_word_ignores_and_keeps_tail_bits() {
    // nbits = 100: bits 95..100 set, and garbage set at 100.. in the same word.
    let mut bm = vec![0u64; 2];
    bm[1] = 0xffff_fff0_0000_0000 | (0x1f << 31);
    let orig = bm.clone();
    assert_eq!(fast(&mut bm.clone(), 100, 1), vec![(95, 5)]);
    assert_eq!(fast(&mut bm.clone(), 100, 8), vec![(88, 12)]);
    assert_eq!(fast(&mut bm.clone(), 100, 64), vec![(64, 36)]);
    assert_eq!(fast(&mut bm, 100, 512), vec![(0, 100)]);
    assert_eq!(
        bm[1] & !0xf_ffff_ffff,
        orig[1] & !0xf_ffff_ffff,
        "tail bits untouched"
    );
    for ratio in RATIOS {
        check_against_reference(&orig, 100, ratio, "partial last word");
    }
    // A last partial host page with only a page past nbits set: nothing to discard.
    let mut bm = vec![0u64, 1 << 40];
    assert_eq!(fast(&mut bm, 100, 32), vec![]);
    assert_eq!(bm, vec![0, 1 << 40]);
}

#[test]
fn words_past_nbits_are_not_touched() {
    let mut bm = vec![0u64, 1, u64::MAX, 0x5555];
    assert_eq!(fast(&mut bm, 64, 512), vec![]);
    assert_eq!(bm, vec![0, 1, u64::MAX, 0x5555]);
    assert_eq!(fast(&mut bm, 65, 512), vec![(0, 65)]);
    assert_eq!(bm, vec![u64::MAX, 1, u64::MAX, 0x5555]);
}

#[test]
fn bad_arguments() {
    let mut bm = vec![0u64; 2];
    for ratio in [0usize, 3, 6, 96, 513] {
        assert_eq!(
            discard_walk(&mut bm, 128, ratio, |_, _| {}),
            Err(DiscardWalkError::BadHostRatio(ratio))
        );
        assert_eq!(
            discard_walk_reference(&mut bm, 128, ratio, |_, _| {}),
            Err(DiscardWalkError::BadHostRatio(ratio))
        );
    }
    let err = discard_walk(&mut bm, 129, 1, |_, _| {}).unwrap_err();
    assert_eq!(
        err,
        DiscardWalkError::BitmapTooShort {
            nbits: 129,
            words: 2
        }
    );
    assert_eq!(err.errno(), libc::EINVAL);
    assert!(err.to_string().contains("129"), "{err}");
    assert!(DiscardWalkError::BadHostRatio(3)
        .to_string()
        .contains("power of two"));
}

#[test]
fn early_stop() {
    // Pages 0, 2, 4, ... set: 32 runs per word.
    for ratio in [1usize, 2, 64] {
        let mut bm = vec![0x5555_5555_5555_5555u64; 8];
        let mut seen = Vec::new();
        let flow = try_discard_walk(&mut bm, 512, ratio, |s, l| {
            seen.push((s, l));
            if seen.len() == 3 {
                ControlFlow::Break(42)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        let expected_runs = if ratio == 1 { 3 } else { 1 };
        if ratio == 1 {
            assert_eq!(flow, ControlFlow::Break(42));
            assert_eq!(seen, vec![(0, 1), (2, 1), (4, 1)]);
        } else {
            assert_eq!(flow, ControlFlow::Continue(1));
        }
        assert_eq!(seen.len(), expected_runs);
    }
    let mut bm = vec![u64::MAX; 8];
    let flow = try_discard_walk(&mut bm, 512, 1, |_, _| ControlFlow::Break("stop")).unwrap();
    assert_eq!(flow, ControlFlow::Break("stop"));
}

/// Bitmaps of several shapes from one generator.
fn random_bitmap(rng: &mut Rng, nbits: usize, shape: u64) -> Vec<u64> {
    // One or two spare words past nbits, with garbage, to check they stay untouched.
    let nwords = nbits.div_ceil(64) + rng.below(2) as usize;
    let mut bm: Vec<u64> = (0..nwords).map(|_| rng.next()).collect();
    let limit = nwords * 64;
    match shape {
        // Uniform random words (dense, every word mixed).
        0 => {}
        // Sparse single bits.
        1 => {
            let density = 1 + rng.below(500);
            for w in bm.iter_mut().take(nbits.div_ceil(64)) {
                *w = 0;
            }
            for i in 0..nbits {
                if rng.below(density * 10) == 0 {
                    bm[i / 64] |= 1 << (i % 64);
                }
            }
        }
        // Dense: almost all ones with a few holes.
        2 => {
            for w in bm.iter_mut() {
                *w = u64::MAX;
            }
            let holes = rng.below(1 + nbits as u64 / 50);
            for _ in 0..holes {
                let i = rng.below(limit as u64) as usize;
                bm[i / 64] &= !(1 << (i % 64));
            }
        }
        // Runs of random lengths, often crossing words.
        _ => {
            let mut i = 0usize;
            let mut set = rng.below(2) == 0;
            for w in bm.iter_mut() {
                *w = 0;
            }
            while i < limit {
                let max = if rng.below(4) == 0 { 700 } else { 90 };
                let len = 1 + rng.below(max) as usize;
                if set {
                    for j in i..(i + len).min(limit) {
                        bm[j / 64] |= 1 << (j % 64);
                    }
                }
                set = !set;
                i += len;
            }
        }
    }
    bm
}

#[test]
fn random_bitmaps_match_reference() {
    let mut rng = Rng::new(0x5eed);
    for case in 0..1500u64 {
        let nbits = match case % 5 {
            0 => rng.below(130) as usize,
            1 => 64 * (1 + rng.below(40) as usize),
            _ => rng.below(4000) as usize,
        };
        let ratio = RATIOS[rng.below(RATIOS.len() as u64) as usize];
        let bm = random_bitmap(&mut rng, nbits, case % 4);
        check_against_reference(
            &bm,
            nbits,
            ratio,
            &format!("case {case} shape {}", case % 4),
        );
    }
}

#[test]
fn large_bitmap_matches_reference() {
    // 1 Mi pages (a 4 GiB block of 4 KiB pages), runs crossing words, ratios 1 and 512.
    let mut rng = Rng::new(7);
    let nbits = 1 << 20;
    let bm = random_bitmap(&mut rng, nbits, 3);
    for ratio in [1usize, 512] {
        let mut a = bm.clone();
        let mut b = bm.clone();
        assert_eq!(
            fast(&mut a, nbits, ratio),
            reference(&mut b, nbits, ratio),
            "ratio {ratio}"
        );
        assert_eq!(a, b);
    }
}

#[test]
fn long_runs_and_gaps_match_reference() {
    // Runs and gaps of up to thousands of pages: whole blocks of all-clear and all-set words.
    let mut rng = Rng::new(31);
    for case in 0..40 {
        let nbits = 20_000 + rng.below(20_000) as usize;
        let mut bm = vec![0u64; nbits.div_ceil(64)];
        let mut i = rng.below(100) as usize;
        while i < nbits {
            let len = 1 + rng.below(5000) as usize;
            for j in i..(i + len).min(nbits) {
                bm[j / 64] |= 1 << (j % 64);
            }
            i += len + 1 + rng.below(5000) as usize;
        }
        for ratio in [1usize, 2, 8, 32, 64, 512] {
            check_against_reference(&bm, nbits, ratio, &format!("long runs case {case}"));
        }
    }
}
