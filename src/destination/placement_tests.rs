//! Unit tests of placement.rs: the placement checks and the bookkeeping of a run.
use std::sync::Arc;

use super::*;
use crate::destination::block::{host_page_size, Backing, BlockName, RamBlock};
use crate::destination::incoming::{IncomingConfig, IncomingHooks};

struct NoHooks;

impl IncomingHooks for NoHooks {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(Vec::new())
    }

    fn request_page(&self, _: Option<&BlockName>, _: u64, _: u64) -> std::result::Result<(), i32> {
        Ok(())
    }
}

fn page() -> usize {
    host_page_size() as usize
}

const HOST: usize = 0x40_0000_0000;

/// One block of 16 host pages at HOST.
fn table() -> BlockTable {
    BlockTable::new(vec![RamBlock {
        name: "pc.ram".into(),
        host: HOST,
        offset: 0,
        length: 16 * page() as u64,
        page_size: page() as u64,
        backing: Backing::Anonymous { shared: false },
        opaque: 0,
    }])
    .unwrap()
}

fn incoming() -> Incoming {
    Incoming::new(Arc::new(NoHooks), IncomingConfig::default()).unwrap()
}

#[test]
fn a_placement_must_be_whole_pages_inside_one_block() {
    let t = table();
    let p = page() as u64;
    let check = |host: usize, len: u64, single: bool| {
        Incoming::check_place(&t, "place", host, len, single).map(|e| e.block.host)
    };
    assert_eq!(check(HOST, p, true), Ok(HOST));
    assert_eq!(check(HOST + 15 * page(), p, true), Ok(HOST));
    assert_eq!(check(HOST, 16 * p, false), Ok(HOST));
    let err = |r: Result<usize>| r.unwrap_err().to_string();
    assert!(err(check(HOST - page(), p, true)).contains("outside every RAM block"));
    assert!(err(check(HOST + 16 * page(), p, true)).contains("outside every RAM block"));
    assert!(err(check(HOST + 8, p, true)).contains("not aligned"));
    assert!(err(check(HOST, 2 * p, true)).contains("does not match"));
    assert!(err(check(HOST, 0, false)).contains("does not match"));
    assert!(err(check(HOST, p + 8, false)).contains("does not match"));
    assert!(err(check(HOST + 15 * page(), 2 * p, false)).contains("run past"));
    assert_eq!(check(HOST + 8, p, true).unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn a_run_skips_present_pages_and_counts_what_it_placed() {
    let t = table();
    let entry = &t.entries()[0];
    let inc = incoming();
    let pg = page();
    // The kernel places 2.5 pages' worth before finding page 2 present (it reports the
    // bytes done), then the rest in one go.
    let mut calls = Vec::new();
    let run = inc
        .place_run("place_pages", entry, HOST, 6 * pg, false, |off, len| {
            calls.push((off, len));
            if off == 0 {
                Err(PlaceError::AlreadyPresent {
                    placed: 2 * pg + pg / 2,
                })
            } else {
                Ok(len)
            }
        })
        .unwrap();
    assert_eq!(calls, vec![(0, 6 * pg), (3 * pg, 3 * pg)]);
    assert_eq!(
        run,
        RunPlacement {
            placed: 5,
            already_present: 1
        }
    );
    for page in 0..6 {
        assert!(entry.is_received(page * pg as u64), "page {page}");
    }
    assert!(!entry.is_received(6 * pg as u64));
    let s = inc.stats();
    assert_eq!(
        (s.pages_placed, s.zero_pages_placed, s.already_present),
        (5, 0, 1)
    );
}

#[test]
fn pages_placed_by_the_failing_call_itself_are_kept() {
    // Issue 9 item 9: a partial UFFDIO_COPY, then EFAULT: the ioctl placed two pages.
    let t = table();
    let entry = &t.entries()[0];
    entry.requested.test_and_set(1);
    let inc = incoming();
    let pg = page();
    let err = inc
        .place_run("place_pages", entry, HOST, 4 * pg, false, |_, _| {
            Err(PlaceError::Os {
                errno: libc::EFAULT,
                placed: 2 * pg,
            })
        })
        .unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(entry.is_received(0) && entry.is_received(pg as u64));
    assert!(!entry.is_received(2 * pg as u64));
    assert_eq!(
        entry.requested.word_bits(0) & 2,
        0,
        "page 1 no longer pending"
    );
    let s = inc.stats();
    assert_eq!((s.pages_placed, s.placement_errors), (2, 1));
    assert_eq!(s.last_placement_errno, libc::EFAULT);
}

#[test]
fn an_os_error_stops_the_run_and_keeps_what_was_placed() {
    let t = table();
    let entry = &t.entries()[0];
    let inc = incoming();
    let pg = page();
    let mut first = true;
    let err = inc
        .place_run("place_pages_zero", entry, HOST, 4 * pg, true, |_, _| {
            if std::mem::take(&mut first) {
                Ok(pg)
            } else {
                Err(PlaceError::Os {
                    errno: libc::ENOMEM,
                    placed: 0,
                })
            }
        })
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOMEM);
    assert!(err.to_string().contains("place_pages_zero"));
    assert!(entry.is_received(0));
    assert!(!entry.is_received(pg as u64));
    assert_eq!(inc.stats().zero_pages_placed, 1);
    assert_eq!(
        Incoming::single(RunPlacement {
            placed: 1,
            already_present: 0
        }),
        Placement::Placed
    );
    assert_eq!(
        Incoming::single(RunPlacement {
            placed: 0,
            already_present: 1
        }),
        Placement::AlreadyPresent
    );
}

#[test]
fn a_discard_between_the_ioctl_and_the_bookkeeping_leaves_the_page_not_received() {
    // Issue 17 item 7: the ioctl placed page 2, then a discard cleared it and dropped
    // it, all before the placer's bookkeeping.
    let t = table();
    let entry = &t.entries()[0];
    let inc = incoming();
    let pg = page();
    let run = inc
        .place_run("place_page", entry, HOST + 2 * pg, pg, false, |_, len| {
            entry.received.discard(2, 1, || ());
            Ok(len)
        })
        .unwrap();
    assert_eq!(run.placed, 1);
    assert!(
        !entry.is_received(2 * pg as u64),
        "dropped: must fault again"
    );
    // Without a discard the page stays received.
    inc.place_run("place_page", entry, HOST + 3 * pg, pg, false, |_, len| {
        Ok(len)
    })
    .unwrap();
    assert!(entry.is_received(3 * pg as u64));
}
