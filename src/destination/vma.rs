//! What the kernel says about the mappings under guest RAM (`/proc/self/smaps`): whether a
//! range is mlocked and its transparent-huge-page state, so that the library changes only
//! what it must and puts back only what it changed (issue 17 item 11).
//!
//! Reading smaps walks the page tables of every mapping of the process, so it is done at
//! init and prepare_discard only, never on the fault path.

/// The part of one mapping (VMA) that lies inside a range asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmaPart {
    /// First byte.
    pub start: usize,
    /// First byte past the part.
    pub end: usize,
    /// `lo`: mlocked (VM_LOCKED).
    pub locked: bool,
    /// `lf`: locked on fault (mlock2(MLOCK_ONFAULT), MCL_ONFAULT): pages are locked as they
    /// fault in, not populated by the lock.
    pub lock_on_fault: bool,
    /// `hg`: MADV_HUGEPAGE.
    pub hugepage: bool,
    /// `nh`: MADV_NOHUGEPAGE.
    pub nohugepage: bool,
    /// `THPeligible: 1`: the kernel may back it with transparent huge pages (its
    /// flags, the system's THP settings and the process's prctl taken together).
    pub thp_eligible: bool,
}

impl VmaPart {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The parts of the mappings inside `ranges` (`(start, length)` each), in smaps order
/// (ascending addresses), read from `/proc/self/smaps`. Holes (nothing mapped) are left
/// out.
pub(crate) fn parts_of(ranges: &[(usize, usize)]) -> std::io::Result<Vec<VmaPart>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(parse(&smaps, ranges))
}

/// [`parts_of`] on the text of an smaps file.
pub(crate) fn parse(smaps: &str, ranges: &[(usize, usize)]) -> Vec<VmaPart> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut eligible = false;
    for line in smaps.lines() {
        if let Some(vma) = vma_header(line) {
            current = Some(vma);
            eligible = false;
            continue;
        }
        let Some((lo, hi)) = current else { continue };
        if let Some(value) = line.strip_prefix("THPeligible:") {
            eligible = value.trim() == "1";
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let has = |f: &str| flags.split_whitespace().any(|x| x == f);
            for &(start, len) in ranges {
                let (s, e) = (lo.max(start), hi.min(start.saturating_add(len)));
                if s < e {
                    out.push(VmaPart {
                        start: s,
                        end: e,
                        locked: has("lo"),
                        lock_on_fault: has("lf"),
                        hugepage: has("hg"),
                        nohugepage: has("nh"),
                        thp_eligible: eligible,
                    });
                }
            }
            current = None;
        }
    }
    out.sort_by_key(|p| p.start);
    out
}

/// `lo-hi perms ...`: the bounds of a mapping's first smaps line.
fn vma_header(line: &str) -> Option<(usize, usize)> {
    // Field lines ("Rss:   4 kB") have no '-' in their first word.
    let (range, _) = line.split_once(' ')?;
    let (lo, hi) = range.split_once('-')?;
    Some((
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
THPeligible:    1
VmFlags: rd wr mr mw me ac sd lo hg 
7f0000004000-7f0000008000 rw-p 00000000 00:00 0 
Size:                 16 kB
THPeligible:    0
VmFlags: rd wr mr mw me ac sd nh 
7f0000010000-7f0000011000 rw-s 00000000 00:01 42                         /memfd:x (deleted)
THPeligible:    0
VmFlags: rd wr sh mr mw me ms sd lo lf 
";

    #[test]
    fn parts_are_clipped_to_the_ranges() {
        let parts = parse(SMAPS, &[(0x7f00_0000_2000, 0x10000)]);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].start, parts[0].end),
            (0x7f00_0000_2000, 0x7f00_0000_4000)
        );
        assert!(parts[0].locked && parts[0].hugepage && parts[0].thp_eligible);
        assert!(!parts[0].nohugepage && !parts[0].lock_on_fault);
        assert!(parts[1].nohugepage && !parts[1].locked && !parts[1].thp_eligible);
        assert_eq!(
            (parts[2].start, parts[2].end),
            (0x7f00_0001_0000, 0x7f00_0001_1000)
        );
        assert!(parts[2].locked && parts[2].lock_on_fault);
        assert!(
            parse(SMAPS, &[(0x7f00_0000_8000, 0x8000)]).is_empty(),
            "a hole"
        );
    }

    #[test]
    fn this_process_is_readable() {
        static HERE: u8 = 0;
        let here = &HERE as *const u8 as usize;
        let parts = parts_of(&[(here, 1)]).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].start, here);
    }
}
