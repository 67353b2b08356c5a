//! Writes the seed corpus of every fuzz target from valid messages (the golden vectors of
//! tests/wire_codecs.rs and c-tests/test_wire_golden.c, encoded here with the library's own
//! encoders) plus a few near misses. Deterministic; re-run after changing it:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --bin gen_corpus
//!
//! Files are named `seed-*`, so that inputs the fuzzer adds can be told apart.

use std::fs;
use std::path::{Path, PathBuf};

use postcopy_ram::wire::*;

fn out_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    fs::write(out_dir(target).join(format!("seed-{name}")), bytes).expect("write seed");
}

fn cmd(msg: &CommandMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; msg.encoded_len()];
    encode_command(&mut buf, msg).expect("encode command");
    buf
}

fn rp(msg: &ReturnPathMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; msg.encoded_len()];
    encode_return_path(&mut buf, msg).expect("encode return path");
    buf
}

fn discard(name: &[u8], ranges: &[(u64, u64)]) -> Vec<u8> {
    let ranges: Vec<DiscardRange> = ranges
        .iter()
        .map(|&(start, length)| DiscardRange { start, length })
        .collect();
    let mut buf = vec![0u8; COMMAND_HEADER_LEN + discard_payload_len(name.len(), ranges.len())];
    let n = encode_discard(&mut buf, name, &ranges).expect("encode discard");
    buf.truncate(n);
    buf
}

/// A discard as QEMU 2.6-2.9 sends it for a block whose last page is clean: a trailing
/// `(block_length, 0)` range, which the encoder refuses, so it is patched in by hand.
fn discard_with_empty_tail(name: &[u8], ranges: &[(u64, u64)], block_len: u64) -> Vec<u8> {
    let mut v = discard(name, ranges);
    let len = u16::from_be_bytes([v[3], v[4]]) + DISCARD_RANGE_LEN as u16;
    v[3..5].copy_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&block_len.to_be_bytes());
    v.extend_from_slice(&0u64.to_be_bytes());
    v
}

fn recv_bitmap(words: &[u64], nbits: usize) -> Vec<u8> {
    let mut buf = vec![0u8; recv_bitmap_block_len(nbits).unwrap()];
    encode_recv_bitmap(&mut buf, words, nbits).expect("encode bitmap");
    buf
}

fn wire_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let commands = [
        ("open-return-path", CommandMsg::OpenReturnPath),
        ("ping", CommandMsg::Ping(0x0102_0304)),
        (
            "advise",
            CommandMsg::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: 0x20_1000,
                target_page_size: 0x1000,
            })),
        ),
        ("advise-empty", CommandMsg::PostcopyAdvise(None)),
        ("listen", CommandMsg::PostcopyListen),
        ("run", CommandMsg::PostcopyRun),
        ("packaged", CommandMsg::Packaged(0x0001_2345)),
        ("resume", CommandMsg::PostcopyResume),
        ("recv-bitmap", CommandMsg::RecvBitmap { name: b"pc.ram" }),
    ];
    for (name, msg) in &commands {
        v.push((format!("cmd-{name}"), cmd(msg)));
    }
    let twelve: Vec<(u64, u64)> = (0..12u64)
        .map(|i| (i * 0x10000, (i + 1) * 0x1000))
        .collect();
    v.push((
        "cmd-discard-1".into(),
        discard(b"pc.ram", &[(0x1000, 0x2000)]),
    ));
    v.push(("cmd-discard-12".into(), discard(b"ram0", &twelve)));
    v.push((
        "cmd-discard-empty-tail".into(),
        discard_with_empty_tail(b"pc.ram", &[(0, 0x1000)], 0x20000),
    ));
    v.push((
        "payload-discard-1".into(),
        discard(b"pc.ram", &[(0x1000, 0x2000)])[COMMAND_HEADER_LEN..].to_vec(),
    ));
    let rps = [
        ("shut", ReturnPathMsg::Shut { failed: 1 }),
        ("pong", ReturnPathMsg::Pong(0xdead_beef)),
        (
            "req-pages",
            ReturnPathMsg::ReqPages {
                start: 0x7fff_f000,
                len: 0x1000,
            },
        ),
        (
            "req-pages-id",
            ReturnPathMsg::ReqPagesId {
                start: 0x20_0000,
                len: 0x20_0000,
                id: b"pc.ram",
            },
        ),
        ("recv-bitmap", ReturnPathMsg::RecvBitmap { name: b"pc.ram" }),
        ("resume-ack", ReturnPathMsg::ResumeAck(1)),
    ];
    for (name, msg) in &rps {
        v.push((format!("rp-{name}"), rp(msg)));
    }
    // The golden 70-page bitmap, an empty one, and a 256-page one.
    let golden = [(1u64 << 63) | (1 << 9) | 0b11, (1 << 5) | 1 | (1 << 6)];
    v.push(("bitmap-70".into(), recv_bitmap(&golden, 70)));
    v.push(("bitmap-0".into(), recv_bitmap(&[], 0)));
    v.push((
        "bitmap-256".into(),
        recv_bitmap(&[!0, 0, 0x5555_5555_5555_5555, 1], 256),
    ));
    // Streams: what a reader sees on the wire, several messages back to back.
    let mut stream = Vec::new();
    for (name, bytes) in &v {
        if name.starts_with("cmd-") {
            stream.extend_from_slice(bytes);
        }
    }
    v.push(("stream-commands".into(), stream));
    let mut stream = Vec::new();
    for (name, bytes) in &v {
        if name.starts_with("rp-") {
            stream.extend_from_slice(bytes);
        }
    }
    v.push(("stream-return-path".into(), stream));
    v
}

fn discard_command_seeds() -> Vec<(String, Vec<u8>)> {
    // Blocks of the target: pc.ram (32 pages), vga.vram (8 pages), 4 KiB pages.
    let p = 0x1000u64;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one", discard(b"pc.ram", &[(p, 2 * p)])),
        (
            "twelve",
            discard(
                b"pc.ram",
                &(0..12u64).map(|i| (i * 2 * p, p)).collect::<Vec<_>>(),
            ),
        ),
        ("whole-block", discard(b"pc.ram", &[(0, 32 * p)])),
        ("vga", discard(b"vga.vram", &[(0, p), (7 * p, p)])),
        (
            "overlap",
            discard(b"vga.vram", &[(0, 4 * p), (2 * p, 4 * p)]),
        ),
        (
            "empty-tail",
            discard_with_empty_tail(b"pc.ram", &[(0, p)], 32 * p),
        ),
        ("past-end", discard(b"vga.vram", &[(0, p), (7 * p, 2 * p)])),
        ("unaligned", discard(b"pc.ram", &[(p + 512, p)])),
        ("unknown-block", discard(b"pc.rom", &[(0, p)])),
    ];
    let mut v = Vec::new();
    for (name, bytes) in cases {
        for state in [0u8, 1] {
            let tag = if state == 1 { "discard" } else { "advise" };
            let mut with_env = vec![state];
            with_env.extend_from_slice(&bytes);
            v.push((format!("{name}-{tag}"), with_env));
            let mut payload = vec![state];
            payload.extend_from_slice(&bytes[COMMAND_HEADER_LEN..]);
            v.push((format!("{name}-{tag}-payload"), payload));
        }
    }
    v
}

fn discard_walk_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // Raw words: a scattered bitmap of 8 words at every ratio up to 512 pages.
    let raw: Vec<u8> = [
        0x0000_0000_0000_0001u64,
        0x8000_0000_0000_0000,
        !0,
        0,
        0x00f0_0000_0f00_1000,
        0x5555_5555_5555_5555,
        0,
        0x0000_0001_0000_0000,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect();
    for exp in [0u8, 1, 2, 3, 5, 6, 7, 9] {
        let mut s = vec![exp, 13, 255, 0];
        s.extend_from_slice(&raw);
        v.push((format!("raw-ratio{}", 1u32 << exp), s));
    }
    // One byte a word: long empty and full stretches (the skip path), at ratios 1, 4, 128.
    let mut bytes = vec![0u8; 20];
    bytes.extend([0xff; 20]);
    bytes.extend([0x03, 0x85, 0, 0, 0x40, 0xff, 0xff, 0]);
    bytes.extend([0u8; 17]);
    for exp in [0u8, 2, 7] {
        let mut s = vec![exp, 0, 3, 1];
        s.extend_from_slice(&bytes);
        v.push((format!("words-ratio{}", 1u32 << exp), s));
    }
    // A ratio that is not a power of two, and a bitmap too short for nbits.
    let mut s = vec![0xf1, 0, 0, 0];
    s.extend_from_slice(&raw);
    v.push(("bad-ratio".into(), s));
    let mut s = vec![0, 0, 0, 0x80];
    s.extend_from_slice(&raw);
    v.push(("too-short".into(), s));
    v
}

fn main() {
    let sets = [
        ("wire_decode", wire_seeds()),
        ("discard_command", discard_command_seeds()),
        ("discard_walk", discard_walk_seeds()),
    ];
    for (target, seeds) in sets {
        for (name, bytes) in &seeds {
            put(target, name, bytes);
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
