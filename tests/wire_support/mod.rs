//! Shared by the wire codec tests: golden byte vectors written from the documented layout
//! (QEMU-POSTCOPY-NOTES section 4) and small encoding helpers.
#![allow(dead_code)]

use postcopy_ram::wire::*;

/// Bytes from a hex string; whitespace and `|` are separators for readability.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len() % 2 == 0, "odd hex string {s}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

pub fn encode_cmd(msg: &CommandMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = encode_command(&mut buf, msg).expect("encode command");
    assert_eq!(n, msg.encoded_len());
    buf.truncate(n);
    buf
}

pub fn encode_rp(msg: &ReturnPathMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 600];
    let n = encode_return_path(&mut buf, msg).expect("encode return path");
    assert_eq!(n, msg.encoded_len());
    buf.truncate(n);
    buf
}

/// The twelve ranges of the golden full discard: start i * 64 KiB, length (i + 1) * 4 KiB.
pub fn twelve_ranges() -> Vec<DiscardRange> {
    (0..12u64)
        .map(|i| DiscardRange {
            start: i * 0x10000,
            length: (i + 1) * 0x1000,
        })
        .collect()
}

pub const DISCARD_12_GOLDEN: &str = "08 0006 00c7 | 00 04 72616d30 00 |
    0000000000000000 0000000000001000
    0000000000010000 0000000000002000
    0000000000020000 0000000000003000
    0000000000030000 0000000000004000
    0000000000040000 0000000000005000
    0000000000050000 0000000000006000
    0000000000060000 0000000000007000
    0000000000070000 0000000000008000
    0000000000080000 0000000000009000
    0000000000090000 000000000000a000
    00000000000a0000 000000000000b000
    00000000000b0000 000000000000c000";

/// Every golden command: (encoded message, bytes).
pub fn command_goldens() -> Vec<(CommandMsg<'static>, Vec<u8>)> {
    vec![
        (CommandMsg::OpenReturnPath, hex("08 0001 0000")),
        (CommandMsg::Ping(0x0102_0304), hex("08 0002 0004 01020304")),
        (
            CommandMsg::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: 0x20_1000,
                target_page_size: 0x1000,
            })),
            hex("08 0003 0010 0000000000201000 0000000000001000"),
        ),
        (CommandMsg::PostcopyAdvise(None), hex("08 0003 0000")),
        (CommandMsg::PostcopyListen, hex("08 0004 0000")),
        (CommandMsg::PostcopyRun, hex("08 0005 0000")),
        (
            CommandMsg::Packaged(0x0001_2345),
            hex("08 0007 0004 00012345"),
        ),
        (CommandMsg::PostcopyResume, hex("08 0009 0000")),
        (
            CommandMsg::RecvBitmap { name: b"pc.ram" },
            hex("08 000a 0007 06 70632e72616d"),
        ),
    ]
}

/// Every golden return-path message.
pub fn rp_goldens() -> Vec<(ReturnPathMsg<'static>, Vec<u8>)> {
    vec![
        (ReturnPathMsg::Shut { failed: 1 }, hex("0001 0004 00000001")),
        (ReturnPathMsg::Shut { failed: 0 }, hex("0001 0004 00000000")),
        (ReturnPathMsg::Pong(0xdead_beef), hex("0002 0004 deadbeef")),
        (
            ReturnPathMsg::ReqPages {
                start: 0x7fff_f000,
                len: 0x1000,
            },
            hex("0004 000c 000000007ffff000 00001000"),
        ),
        (
            ReturnPathMsg::ReqPagesId {
                start: 0x20_0000,
                len: 0x20_0000,
                id: b"pc.ram",
            },
            hex("0003 0013 0000000000200000 00200000 06 70632e72616d"),
        ),
        (
            ReturnPathMsg::RecvBitmap { name: b"pc.ram" },
            hex("0005 0007 06 70632e72616d"),
        ),
        (ReturnPathMsg::ResumeAck(1), hex("0006 0004 00000001")),
    ]
}

/// Every golden message, commands, return path, a discard and a received bitmap.
pub fn all_goldens() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = command_goldens().into_iter().map(|(_, b)| b).collect();
    v.extend(rp_goldens().into_iter().map(|(_, b)| b));
    v.push(hex(DISCARD_12_GOLDEN));
    v.push(hex(
        "0000000000000010 0302000000000080 2100000000000000 0123456789abcdef",
    ));
    v
}
