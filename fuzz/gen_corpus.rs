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

/// Seeds for `c_entry`: sequences of C calls in its input format (see the target: an op byte,
/// whose top two bits choose placement / decoder / encoder / discard walk, then arguments).
fn c_entry_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    // Placement: op, host (base, pages, 1 = no byte offset), length (0 = pages, n), from
    // (offset / 64, 1 = not NULL). Bases: 0 = block a, 1 = block b, 2 = end of b.
    let place = |op: u8, base: u8, pages: i8, len: &[u8]| {
        let mut s = vec![op, base, pages as u8, 1];
        s.extend_from_slice(len);
        s.extend_from_slice(&[3, 1]);
        s
    };
    v.push(("place-page".into(), place(0, 0, 0, &[0, 1])));
    v.push(("place-page-zero".into(), place(1, 1, 7, &[0, 1])));
    v.push(("place-pages".into(), place(2, 1, 2, &[0, 4])));
    v.push(("place-pages-zero".into(), place(3, 0, 0, &[0, 8])));
    v.push(("place-past-block".into(), place(2, 0, 6, &[0, 4])));
    v.push(("place-between".into(), place(3, 2, -1, &[0, 2])));
    // Lengths that wrap: (size_t)-4096 from block a, (size_t)-8 pages from block b.
    v.push(("place-wrap".into(), place(3, 0, 0, &[2, 1])));
    v.push(("place-wrap-into-a".into(), place(3, 1, 0, &[2, 8])));
    v.push(("place-wrap-data".into(), place(2, 1, 4, &[2, 16])));
    let mut twice = place(0, 0, 3, &[0, 1]);
    twice.extend(place(0, 0, 3, &[0, 1]));
    twice.extend(place(2, 0, 2, &[0, 3]));
    v.push(("place-twice".into(), twice));
    // Decoders: op (64 discard, 65 bitmap, 66 command, 67 command header, 68 return path,
    // 69 return-path header), half the length, the bytes (padded to even), then arguments.
    let decode = |op: u8, msg: &[u8], tail: &[u8]| {
        let mut m = msg.to_vec();
        if m.len() % 2 == 1 {
            m.push(0);
        }
        let mut s = vec![op, (m.len() / 2) as u8];
        s.extend_from_slice(&m);
        s.extend_from_slice(tail);
        s
    };
    let twelve: Vec<(u64, u64)> = (0..12u64)
        .map(|i| (i * 0x10000, (i + 1) * 0x1000))
        .collect();
    let d12 = discard(b"ram0", &twelve);
    v.push(("decode-discard".into(), decode(64, &d12, &[12, 1, 1])));
    v.push(("decode-discard-short".into(), decode(64, &d12, &[5, 1, 1])));
    v.push((
        "decode-discard-misaligned".into(),
        decode(64, &d12, &[12, 0, 1]),
    ));
    v.push(("decode-discard-alias".into(), decode(64, &d12, &[12, 1, 0])));
    let golden = [(1u64 << 63) | (1 << 9) | 0b11, (1 << 5) | 1 | (1 << 6)];
    v.push((
        "decode-bitmap".into(),
        decode(65, &recv_bitmap(&golden, 70), &[8, 6]),
    ));
    let ping = cmd(&CommandMsg::Ping(7));
    v.push(("decode-command".into(), decode(66, &ping, &[])));
    v.push(("decode-command-header".into(), decode(67, &ping, &[])));
    let req = rp(&ReturnPathMsg::ReqPagesId {
        start: 0x20_0000,
        len: 0x1000,
        id: b"pc.ram",
    });
    v.push(("decode-rp".into(), decode(68, &req, &[])));
    v.push(("decode-rp-header".into(), decode(69, &req, &[])));
    v.push(("decode-null".into(), decode(80, &d12, &[12, 1, 1])));
    // Encoders: op (128 command, 129 discard, 130 return path, 131 bitmap), buffer length,
    // name length and bytes, then the message's fields.
    let mut e = vec![128, 40, 6];
    e.extend_from_slice(b"pc.ram");
    e.extend_from_slice(&[10]);
    e.extend_from_slice(&[0; 8]);
    v.push(("encode-command".into(), e));
    let mut e = vec![129, 63, 6];
    e.extend_from_slice(b"pc.ram");
    e.push(2);
    // Two starts then two lengths, each a be64 and a shift (0).
    for x in [0x1000u64, 0x3000, 0x1000, 0x2000] {
        e.extend_from_slice(&x.to_be_bytes());
        e.push(0);
    }
    v.push(("encode-discard".into(), e));
    let mut e = vec![130, 40, 6];
    e.extend_from_slice(b"pc.ram");
    e.push(3);
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&0x20_0000u64.to_be_bytes());
    e.extend_from_slice(&0x1000u64.to_be_bytes());
    v.push(("encode-rp".into(), e));
    v.push(("encode-bitmap".into(), vec![131, 60, 0, 40, 0xff, 0xff]));
    // Discard walk: op, host ratio exponent, stop after, words, bits cut, words, misalign.
    let mut w = vec![192, 2, 255, 4, 5];
    for x in [0x0000_0000_0000_0001u64, !0, 0, 0x00f0_0000_0f00_1000] {
        w.extend_from_slice(&x.to_be_bytes());
    }
    w.push(1);
    v.push(("walk".into(), w.clone()));
    w[2] = 1;
    v.push(("walk-stop".into(), w.clone()));
    *w.last_mut().unwrap() = 0;
    v.push(("walk-misaligned".into(), w));
    v
}

fn main() {
    let sets = [
        ("wire_decode", wire_seeds()),
        ("discard_command", discard_command_seeds()),
        ("discard_walk", discard_walk_seeds()),
        ("c_entry", c_entry_seeds()),
    ];
    for (target, seeds) in sets {
        for (name, bytes) in &seeds {
            put(target, name, bytes);
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
