//! `Incoming::handle_discard_command` on a real destination (ADVISE or DISCARD state) whose
//! two RAM blocks are private anonymous memory. Before each command every page gets a
//! marker byte; afterwards a page must have lost it exactly when a range the library
//! dropped covers it. An accepted command drops exactly its decoded ranges (checked
//! against the block), a refused one touches no page and leaves the state alone.
//!
//! Input: byte 0 chooses the starting state (bit 0: DISCARD, else ADVISE); the rest is the
//! command, with its 0x08 envelope or as a bare payload.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use postcopy_ram::wire::{self, CommandMsg, DiscardRange};
use postcopy_ram::{Backing, BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock};

const PAGE: u64 = 4096;
/// (name, pages): the seeds name these blocks.
const BLOCKS: [(&str, u64); 2] = [("pc.ram", 32), ("vga.vram", 8)];

struct Guest {
    blocks: Vec<RamBlock>,
}

fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let blocks = BLOCKS
            .iter()
            .map(|&(name, pages)| {
                let len = (pages * PAGE) as usize;
                // SAFETY: a fresh private anonymous mapping, kept for the whole run.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert_ne!(p, libc::MAP_FAILED);
                RamBlock {
                    name: name.into(),
                    host: p as usize,
                    offset: 0,
                    length: pages * PAGE,
                    page_size: PAGE,
                    backing: Backing::Anonymous { shared: false },
                    opaque: 0,
                }
            })
            .collect();
        Guest { blocks }
    })
}

/// Records every drop the library asks for, then lets the library do it.
#[derive(Default)]
struct Hooks {
    dropped: Mutex<Vec<(String, u64, u64)>>,
}

impl IncomingHooks for Hooks {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(guest().blocks.clone())
    }

    fn request_page(&self, _: Option<&BlockName>, _: u64, _: u64) -> Result<(), i32> {
        unreachable!("no fault thread runs in this target")
    }

    fn discard_range(
        &self,
        block: &RamBlock,
        start: u64,
        length: u64,
    ) -> Option<postcopy_ram::Result<()>> {
        self.dropped
            .lock()
            .unwrap()
            .push((block.name.clone(), start, length));
        None
    }
}

fn marker(block: usize, page: u64) -> u8 {
    (block as u8 * 64 + page as u8) | 0x80
}

fn page_ptr(b: &RamBlock, page: u64) -> *mut u8 {
    (b.host + (page * PAGE) as usize) as *mut u8
}

fn write_markers(g: &Guest) {
    for (i, b) in g.blocks.iter().enumerate() {
        for page in 0..b.length / PAGE {
            // SAFETY: inside our own mapping; no userfaultfd is registered on it.
            unsafe { page_ptr(b, page).write_volatile(marker(i, page)) };
        }
    }
}

/// What the wire says the command is: its block name and ranges, if it decodes.
fn decoded(cmd: &[u8]) -> Option<(Vec<u8>, Vec<DiscardRange>)> {
    let d = if cmd.first() == Some(&wire::QEMU_VM_COMMAND) {
        match wire::decode_command(cmd) {
            Ok((CommandMsg::PostcopyRamDiscard(d), used)) if used == cmd.len() => d,
            _ => return None,
        }
    } else {
        wire::decode_discard_payload(cmd).ok()?
    };
    Some((d.name().to_vec(), d.ranges().collect()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, cmd)) = data.split_first() else {
        return;
    };
    let g = guest();
    let hooks = Arc::new(Hooks::default());
    let inc = Incoming::new(hooks.clone(), IncomingConfig::default()).expect("a valid config");
    inc.init(0).expect("incoming_init");
    if flags & 1 == 1 {
        inc.prepare_discard().expect("prepare_discard");
    }
    let state_before = inc.state();
    hooks.dropped.lock().unwrap().clear();
    write_markers(g);

    let result = inc.handle_discard_command(cmd);
    let dropped = std::mem::take(&mut *hooks.dropped.lock().unwrap());

    // What the outcome must be, from the wire and the blocks alone. Empty ranges are left
    // open (accepted and skipped, or refused whole: both are consistent below).
    let expect = decoded(cmd).map(|(name, ranges)| {
        let block = g.blocks.iter().position(|b| b.name.as_bytes() == name);
        let all_ok = block.is_some_and(|i| {
            let b = &g.blocks[i];
            ranges.iter().all(|r| {
                r.length == 0 || wire::check_range(r.start, r.length, PAGE, b.length).is_ok()
            })
        });
        let has_empty = ranges.iter().any(|r| r.length == 0);
        (block, ranges, all_ok, has_empty)
    });

    match result {
        Ok(n) => {
            let Some((Some(bi), ranges, true, _)) = expect else {
                panic!("accepted a command that should be refused: {expect:?} -> {n}");
            };
            let b = &g.blocks[bi];
            let nonempty: Vec<(String, u64, u64)> = ranges
                .iter()
                .filter(|r| r.length != 0)
                .map(|r| (b.name.clone(), r.start, r.length))
                .collect();
            assert_eq!(dropped, nonempty, "dropped exactly the decoded ranges");
            assert!(n == ranges.len() || n == nonempty.len(), "count {n}");
            assert_eq!(inc.state(), postcopy_ram::State::Discard);
            for (i, blk) in g.blocks.iter().enumerate() {
                for page in 0..blk.length / PAGE {
                    let at = page * PAGE;
                    let covered = i == bi
                        && ranges
                            .iter()
                            .any(|r| r.start <= at && at < r.start + r.length);
                    // SAFETY: inside our own mapping.
                    let v = unsafe { page_ptr(blk, page).read_volatile() };
                    let want = if covered { 0 } else { marker(i, page) };
                    assert_eq!(v, want, "block {} page {page}", blk.name);
                }
            }
        }
        Err(e) => {
            if let Some((Some(_), _, true, false)) = &expect {
                panic!("refused a valid command: {e}");
            }
            assert!(e.errno() > 0, "{e}");
            assert!(dropped.is_empty(), "refused command dropped {dropped:?}");
            assert_eq!(inc.state(), state_before);
            for (i, blk) in g.blocks.iter().enumerate() {
                for page in 0..blk.length / PAGE {
                    // SAFETY: inside our own mapping.
                    let v = unsafe { page_ptr(blk, page).read_volatile() };
                    assert_eq!(v, marker(i, page), "block {} page {page}", blk.name);
                }
            }
        }
    }
    inc.cleanup().expect("cleanup");
});
