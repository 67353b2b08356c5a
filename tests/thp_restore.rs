//! Issue 17 item 11: cleanup set MADV_HUGEPAGE on every host-page block, whatever it had
//! before (a block the VMM had set MADV_NOHUGEPAGE on came back with THP on; a block without
//! a flag, which THP under the `madvise` setting never backs, got MADV_HUGEPAGE). Now only
//! what the library changed is put back.

mod common;

use common::*;
use postcopy_ram::IncomingConfig;

/// (VmFlags, THPeligible) of the mapping holding `addr`.
fn thp_state(addr: usize) -> (Vec<String>, bool) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut eligible = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
        }
        if !inside {
            continue;
        }
        if let Some(v) = line.strip_prefix("THPeligible:") {
            eligible = v.trim() == "1";
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            return (
                flags.split_whitespace().map(String::from).collect(),
                eligible,
            );
        }
    }
    panic!("no mapping at {addr:#x}");
}

/// "hg", "nh" or "-" (neither).
fn thp_flag(addr: usize) -> &'static str {
    let (flags, _) = thp_state(addr);
    match (
        flags.iter().any(|f| f == "hg"),
        flags.iter().any(|f| f == "nh"),
    ) {
        (true, _) => "hg",
        (_, true) => "nh",
        _ => "-",
    }
}

fn madvise(addr: usize, len: usize, advice: libc::c_int) {
    // SAFETY: advice on the test's own mapping.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
}

#[test]
fn cleanup_puts_back_only_the_thp_state_it_changed() {
    require_uffd!();
    let len = 32 * 4096;
    let huge = GuestMem::anon(len);
    madvise(huge.addr, len, libc::MADV_HUGEPAGE);
    let no_huge = GuestMem::anon(len);
    madvise(no_huge.addr, len, libc::MADV_NOHUGEPAGE);
    let plain = GuestMem::anon(len);
    let mixed = GuestMem::anon(len);
    madvise(mixed.addr, len / 2, libc::MADV_HUGEPAGE);
    madvise(mixed.addr + len / 2, len / 2, libc::MADV_NOHUGEPAGE);
    // Without a flag, THP backs a mapping only under the system setting `always`: then the
    // library must turn it off too, and can only give it MADV_HUGEPAGE back.
    let (_, plain_eligible) = thp_state(plain.addr);
    let plain_during = if plain_eligible { "nh" } else { "-" };
    let plain_after = if plain_eligible { "hg" } else { "-" };
    for enable in [false, true] {
        let server = Server::new(
            vec![
                huge.block("huge"),
                no_huge.block("no-huge"),
                plain.block("plain"),
                mixed.block("mixed"),
            ],
            false,
        );
        let incoming = server.incoming(IncomingConfig::default());
        incoming.init(0).unwrap();
        incoming.prepare_discard().unwrap();
        let during = [
            thp_flag(huge.addr),
            thp_flag(no_huge.addr),
            thp_flag(plain.addr),
            thp_flag(mixed.addr),
            thp_flag(mixed.addr + len / 2),
        ];
        assert_eq!(during, ["nh", "nh", plain_during, "nh", "nh"], "during");
        if enable {
            incoming.enable_notify().unwrap();
        }
        incoming.cleanup().unwrap();
        let after = [
            thp_flag(huge.addr),
            thp_flag(no_huge.addr),
            thp_flag(plain.addr),
            thp_flag(mixed.addr),
            thp_flag(mixed.addr + len / 2),
        ];
        assert_eq!(
            after,
            ["hg", "nh", plain_after, "hg", "nh"],
            "after cleanup (enable_notify: {enable})"
        );
    }
}
