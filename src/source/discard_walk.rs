//! Source-side discard walk: host-page canonicalisation plus run extraction.
//!
//! Before the source switches to postcopy it tells the destination which pages to drop:
//! every page that is dirty or not yet sent. The input is one RAM block's bitmap of such
//! target pages (bit `i` of word `w` is page `64 * w + i`; bits at and past `nbits` are
//! ignored and never changed). The destination places and discards whole host pages, so the
//! walk first canonicalises, as QEMU's `ram.c` does: a host page (`host_ratio` target pages,
//! a power of two) any of whose target pages is set becomes wholly set, and the bitmap is
//! updated so the source re-sends every page of it. Then every run of set bits is reported
//! as `(start_page, npages)`, in ascending order. Runs start on host-page boundaries and
//! cover whole host pages, except that the last run ends at `nbits` when `nbits` is not a
//! multiple of `host_ratio`.
//!
//! [`discard_walk`] / [`try_discard_walk`] are the fast versions (one pass, a word at a
//! time; all-zero and all-ones words cost a few instructions). [`discard_walk_reference`]
//! is the bit-by-bit reference implementation the tests compare them with.

use std::fmt;
use std::ops::ControlFlow;

/// Why a walk could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardWalkError {
    /// `host_ratio` is 0 or not a power of two.
    BadHostRatio(usize),
    /// The bitmap has fewer than `nbits.div_ceil(64)` words.
    BitmapTooShort {
        /// Pages asked for.
        nbits: usize,
        /// Words provided.
        words: usize,
    },
}

impl DiscardWalkError {
    /// The positive errno for this error (always `EINVAL`).
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

impl fmt::Display for DiscardWalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DiscardWalkError::BadHostRatio(r) => {
                write!(f, "host page ratio {r} is not a power of two >= 1")
            }
            DiscardWalkError::BitmapTooShort { nbits, words } => {
                write!(f, "bitmap of {words} words cannot hold {nbits} pages")
            }
        }
    }
}

impl std::error::Error for DiscardWalkError {}

/// Checks the arguments; returns the words that hold the `nbits` pages.
fn words_of(
    bitmap: &mut [u64],
    nbits: usize,
    host_ratio: usize,
) -> Result<&mut [u64], DiscardWalkError> {
    if !host_ratio.is_power_of_two() {
        return Err(DiscardWalkError::BadHostRatio(host_ratio));
    }
    let words = bitmap.len();
    bitmap
        .get_mut(..nbits.div_ceil(64))
        .ok_or(DiscardWalkError::BitmapTooShort { nbits, words })
}

/// Canonicalises `bitmap` to host pages and calls `emit(start_page, npages)` for every run of
/// set bits (see the module documentation). Returns the number of runs.
pub fn discard_walk(
    bitmap: &mut [u64],
    nbits: usize,
    host_ratio: usize,
    mut emit: impl FnMut(u64, u64),
) -> Result<u64, DiscardWalkError> {
    let flow = try_discard_walk(bitmap, nbits, host_ratio, |start, npages| {
        emit(start, npages);
        ControlFlow::<std::convert::Infallible>::Continue(())
    })?;
    match flow {
        ControlFlow::Continue(runs) => Ok(runs),
        ControlFlow::Break(never) => match never {},
    }
}

/// [`discard_walk`] with a callback that can stop the walk: `ControlFlow::Break(b)` stops it
/// at once and is returned. A stopped walk has canonicalised the bitmap only up to the
/// host page of the last reported run (and possibly a little further). Otherwise returns
/// `Continue(number of runs)`.
pub fn try_discard_walk<B>(
    bitmap: &mut [u64],
    nbits: usize,
    host_ratio: usize,
    mut emit: impl FnMut(u64, u64) -> ControlFlow<B>,
) -> Result<ControlFlow<B, u64>, DiscardWalkError> {
    let words = words_of(bitmap, nbits, host_ratio)?;
    let tail_mask = match nbits % 64 {
        0 => !0u64,
        bits => (1u64 << bits) - 1,
    };
    let flow = match host_ratio {
        1 => scan_words(words, nbits, tail_mask, |w| w, false, &mut emit),
        2 => scan_words(words, nbits, tail_mask, fill_lanes::<2>, true, &mut emit),
        4 => scan_words(words, nbits, tail_mask, fill_lanes::<4>, true, &mut emit),
        8 => scan_words(words, nbits, tail_mask, fill_lanes::<8>, true, &mut emit),
        16 => scan_words(words, nbits, tail_mask, fill_lanes::<16>, true, &mut emit),
        32 => scan_words(words, nbits, tail_mask, fill_lanes::<32>, true, &mut emit),
        _ => scan_groups(words, nbits, tail_mask, host_ratio / 64, &mut emit),
    };
    Ok(flow)
}

/// Sets every `R`-bit lane of `v` (R = 2..=32, a power of two) that has any bit set.
#[inline(always)]
fn fill_lanes<const R: u32>(v: u64) -> u64 {
    if v == 0 || v == !0 {
        return v;
    }
    // After the folds, bit `k * R` of `y` is the OR of bits `k * R .. k * R + R` of `v`
    // (bits shifted down from the lane above only reach positions above the lane's lowest).
    let mut y = v;
    let mut s = 1;
    while s < R {
        y |= y >> s;
        s <<= 1;
    }
    // Bit 0 of every lane.
    let lowest = !0u64 / ((1u64 << R) - 1);
    // Each lowest bit times a full lane fills that lane; lanes do not overlap, so no carries.
    (y & lowest).wrapping_mul((1u64 << R) - 1)
}

/// Walk for host pages of at most 64 target pages: each word is canonicalised on its own by
/// `canon` (written back when `write` and changed), then its run boundaries are found as the
/// set bits of `w ^ (w << 1 | carry)`.
#[inline(always)]
fn scan_words<B>(
    words: &mut [u64],
    nbits: usize,
    tail_mask: u64,
    canon: impl Fn(u64) -> u64,
    write: bool,
    emit: &mut impl FnMut(u64, u64) -> ControlFlow<B>,
) -> ControlFlow<B, u64> {
    let mut runs = 0u64;
    let mut carry = 0u64; // bit 63 of the previous word: 1 while inside a run
    let mut start = 0u64;
    let Some((last, body)) = words.split_last_mut() else {
        return ControlFlow::Continue(0);
    };
    let mut base = 0u64;
    {
        let mut step = |word: &mut u64, base: u64, carry: &mut u64| -> ControlFlow<B> {
            let orig = *word;
            let w = canon(orig);
            if write && w != orig {
                *word = w;
            }
            let edges = w ^ ((w << 1) | *carry);
            *carry = w >> 63;
            if edges != 0 {
                emit_edges(w, edges, base, &mut start, &mut runs, emit)?;
            }
            ControlFlow::Continue(())
        };
        // Blocks of SKIP words that all continue the current state (all clear outside a run,
        // all set inside one) have no edge and need no canonicalisation: one test skips them.
        const SKIP: usize = 8;
        let mut blocks = body.chunks_exact_mut(SKIP);
        for block in &mut blocks {
            let fill = 0u64.wrapping_sub(carry);
            if block.iter().fold(0, |acc, &w| acc | (w ^ fill)) == 0 {
                base += 64 * SKIP as u64;
                continue;
            }
            for word in block.iter_mut() {
                step(word, base, &mut carry)?;
                base += 64;
            }
        }
        for word in blocks.into_remainder() {
            step(word, base, &mut carry)?;
            base += 64;
        }
    }
    // Last word: only the bits below nbits take part, the others are left untouched. A run
    // reaching nbits inside this word ends with a fall edge at nbits itself.
    let orig = *last;
    let w = canon(orig & tail_mask) & tail_mask;
    if write && w != orig & tail_mask {
        *last = (orig & !tail_mask) | w;
    }
    let edges = w ^ ((w << 1) | carry);
    emit_edges(w, edges, base, &mut start, &mut runs, emit)?;
    if w >> 63 == 1 {
        // Only for a full last word: the run goes on to nbits.
        runs += 1;
        emit(start, nbits as u64 - start)?;
    }
    ControlFlow::Continue(runs)
}

/// Reports the runs that end in word `w` (at page `base`), given its `edges` (bit `p` set
/// where page `base + p` differs from the page before it).
#[inline(always)]
fn emit_edges<B>(
    w: u64,
    mut edges: u64,
    base: u64,
    start: &mut u64,
    runs: &mut u64,
    emit: &mut impl FnMut(u64, u64) -> ControlFlow<B>,
) -> ControlFlow<B> {
    while edges != 0 {
        let bit = edges.trailing_zeros();
        let at = base + u64::from(bit);
        if (w >> bit) & 1 == 1 {
            // Rise: a run starts here.
            *start = at;
        } else {
            // Fall: the run started at `start` ends here.
            *runs += 1;
            emit(*start, at - *start)?;
        }
        edges &= edges - 1;
    }
    ControlFlow::Continue(())
}

/// Walk for host pages of `group` (>= 1) whole words: a group is all clear or, after
/// canonicalisation, all set; runs are sequences of set groups.
fn scan_groups<B>(
    words: &mut [u64],
    nbits: usize,
    tail_mask: u64,
    group: usize,
    emit: &mut impl FnMut(u64, u64) -> ControlFlow<B>,
) -> ControlFlow<B, u64> {
    let mut runs = 0u64;
    let mut in_run = false;
    let mut start = 0u64;
    let group_bits = (group as u64) * 64;
    let nwords = words.len();
    let mut chunks = words.chunks_mut(group);
    let mut base = 0u64;
    let mut first_word = 0usize;
    for chunk in chunks.by_ref() {
        let is_last = first_word + chunk.len() == nwords;
        let (any, all) = if is_last {
            group_any_all_tail(chunk, tail_mask)
        } else {
            let (any, all) = chunk
                .iter()
                .fold((0u64, !0u64), |(o, a), &w| (o | w, a & w));
            (any != 0, all == !0)
        };
        if any {
            if !all {
                fill_group(chunk, is_last, tail_mask);
            }
            if !in_run {
                start = base;
                in_run = true;
            }
        } else if in_run {
            in_run = false;
            runs += 1;
            emit(start, base - start)?;
        }
        first_word += chunk.len();
        base += group_bits;
    }
    if in_run {
        runs += 1;
        emit(start, nbits as u64 - start)?;
    }
    ControlFlow::Continue(runs)
}

/// (any bit set, all bits set) of the last group, whose last word only counts below
/// `tail_mask`.
fn group_any_all_tail(chunk: &[u64], tail_mask: u64) -> (bool, bool) {
    let Some((last, body)) = chunk.split_last() else {
        return (false, true);
    };
    let (any, all) = body.iter().fold((0u64, !0u64), |(o, a), &w| (o | w, a & w));
    let l = last & tail_mask;
    (any | l != 0, all == !0 && l == tail_mask)
}

/// Sets every page of a group (in the last group, only those below `tail_mask`).
fn fill_group(chunk: &mut [u64], is_last: bool, tail_mask: u64) {
    let n = chunk.len();
    for (i, w) in chunk.iter_mut().enumerate() {
        if is_last && i + 1 == n {
            *w |= tail_mask;
        } else {
            *w = !0;
        }
    }
}

/// The reference implementation: the same contract as [`discard_walk`], written plainly bit
/// by bit (first canonicalise every host page, then extract runs). Slow; for tests and as
/// the specification of the fast version.
pub fn discard_walk_reference(
    bitmap: &mut [u64],
    nbits: usize,
    host_ratio: usize,
    mut emit: impl FnMut(u64, u64),
) -> Result<u64, DiscardWalkError> {
    let words = words_of(bitmap, nbits, host_ratio)?;
    let get = |words: &[u64], i: usize| words[i / 64] >> (i % 64) & 1 == 1;
    // Pass 1: a host page with any page set becomes wholly set.
    let mut hp_start = 0usize;
    while hp_start < nbits {
        let hp_end = hp_start.saturating_add(host_ratio).min(nbits);
        if (hp_start..hp_end).any(|i| get(words, i)) {
            for i in hp_start..hp_end {
                words[i / 64] |= 1u64 << (i % 64);
            }
        }
        hp_start = hp_end;
    }
    // Pass 2: runs of set bits.
    let mut runs = 0u64;
    let mut run_start: Option<usize> = None;
    for i in 0..nbits {
        match (get(words, i), run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                emit(s as u64, (i - s) as u64);
                runs += 1;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        emit(s as u64, (nbits - s) as u64);
        runs += 1;
    }
    Ok(runs)
}
