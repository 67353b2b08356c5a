//! Wire codecs: golden byte vectors written from the documented layout (QEMU-POSTCOPY-NOTES
//! section 4), round trips, streaming, clear errors, and decoders fed random, truncated and
//! mutated bytes.

mod common;

use common::Rng;
use postcopy_ram::wire::*;

/// Bytes from a hex string; whitespace and `|` are separators for readability.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len() % 2 == 0, "odd hex string {s}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn encode_cmd(msg: &CommandMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = encode_command(&mut buf, msg).expect("encode command");
    assert_eq!(n, msg.encoded_len());
    buf.truncate(n);
    buf
}

fn encode_rp(msg: &ReturnPathMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 600];
    let n = encode_return_path(&mut buf, msg).expect("encode return path");
    assert_eq!(n, msg.encoded_len());
    buf.truncate(n);
    buf
}

/// The twelve ranges of the golden full discard: start i * 64 KiB, length (i + 1) * 4 KiB.
fn twelve_ranges() -> Vec<DiscardRange> {
    (0..12u64)
        .map(|i| DiscardRange {
            start: i * 0x10000,
            length: (i + 1) * 0x1000,
        })
        .collect()
}

const DISCARD_12_GOLDEN: &str = "08 0006 00c7 | 00 04 72616d30 00 |
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
fn command_goldens() -> Vec<(CommandMsg<'static>, Vec<u8>)> {
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
fn rp_goldens() -> Vec<(ReturnPathMsg<'static>, Vec<u8>)> {
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

#[test]
fn golden_commands() {
    for (msg, bytes) in command_goldens() {
        assert_eq!(encode_cmd(&msg), bytes, "{msg:?}");
        let (decoded, used) = decode_command(&bytes).expect("decode golden");
        assert_eq!(decoded, msg);
        assert_eq!(used, bytes.len());
        let header = decode_command_header(&bytes).unwrap();
        assert_eq!(header.cmd, msg.command());
        assert_eq!(header.total_len(), bytes.len());
    }
}

#[test]
fn golden_discard_one_range() {
    let bytes = hex("08 0006 0019 | 00 06 70632e72616d 00 | 0000000000001000 0000000000002000");
    let mut buf = [0u8; 64];
    let n = encode_discard(
        &mut buf,
        b"pc.ram",
        &[DiscardRange {
            start: 0x1000,
            length: 0x2000,
        }],
    )
    .unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    let n = encode_discard_pairs(&mut buf, b"pc.ram", &[0x1000], &[0x2000]).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    let (msg, used) = decode_command(&bytes).unwrap();
    assert_eq!(used, bytes.len());
    let CommandMsg::PostcopyRamDiscard(d) = msg else {
        panic!("not a discard: {msg:?}")
    };
    assert_eq!(d.name(), b"pc.ram");
    assert_eq!(d.range_count(), 1);
    assert_eq!(
        d.range(0),
        Some(DiscardRange {
            start: 0x1000,
            length: 0x2000
        })
    );
    assert_eq!(d.range(1), None);
    assert_eq!(d.range(usize::MAX), None);
    assert_eq!(d.payload_len(), 0x19);
    assert_eq!(
        encode_cmd(&msg),
        bytes,
        "a decoded discard re-encodes identically"
    );
}

#[test]
fn golden_discard_twelve_ranges() {
    let bytes = hex(DISCARD_12_GOLDEN);
    assert_eq!(bytes.len(), 5 + 3 + 4 + 16 * MAX_DISCARDS_PER_COMMAND);
    assert_eq!(MAX_DISCARDS_PER_COMMAND, 12);
    let ranges = twelve_ranges();
    let mut buf = [0u8; 512];
    let n = encode_discard(&mut buf, b"ram0", &ranges).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    let starts: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    let lengths: Vec<u64> = ranges.iter().map(|r| r.length).collect();
    let n = encode_discard_pairs(&mut buf, b"ram0", &starts, &lengths).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    let d = decode_discard_payload(&bytes[COMMAND_HEADER_LEN..]).unwrap();
    assert_eq!(d.name(), b"ram0");
    assert_eq!(d.ranges().len(), 12);
    assert_eq!(d.ranges().collect::<Vec<_>>(), ranges);
    assert_eq!(discard_payload_len(4, 12), 0xc7);
}

#[test]
fn golden_return_path() {
    for (msg, bytes) in rp_goldens() {
        assert_eq!(encode_rp(&msg), bytes, "{msg:?}");
        let (decoded, used) = decode_return_path(&bytes).expect("decode golden");
        assert_eq!(decoded, msg);
        assert_eq!(used, bytes.len());
        let header = decode_return_path_header(&bytes).unwrap();
        assert_eq!(header.rp_type, msg.rp_type());
        assert_eq!(header.total_len(), bytes.len());
        assert!(header.total_len() <= RETURN_PATH_HEADER_LEN + RETURN_PATH_MAX_LEN);
    }
}

#[test]
fn golden_recv_bitmap_block() {
    // 70 pages; received: 0, 1, 9, 63, 64, 69. Bit 70 (past nbits) must not be sent.
    let words = [(1u64 << 63) | (1 << 9) | 0b11, (1 << 5) | 1 | (1 << 6)];
    let bytes = hex("0000000000000010 | 0302000000000080 2100000000000000 | 0123456789abcdef");
    assert_eq!(recv_bitmap_size(70), 16);
    assert_eq!(recv_bitmap_block_len(70), Some(32));
    let mut buf = [0u8; 64];
    let n = encode_recv_bitmap(&mut buf, &words, 70).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    assert_eq!(decode_recv_bitmap_size(&bytes), Ok(16));
    let (bm, used) = decode_recv_bitmap(&bytes).unwrap();
    assert_eq!(used, 32);
    assert_eq!(bm.size_bytes(), 16);
    assert_eq!(bm.as_le_bytes(), &bytes[8..24]);
    assert_eq!(bm.word(0), Some(words[0]));
    assert_eq!(bm.word(1), Some(0x21));
    assert_eq!(bm.word(2), None);
    for page in 0..200u64 {
        assert_eq!(
            bm.test(page),
            [0, 1, 9, 63, 64, 69].contains(&page),
            "page {page}"
        );
    }
    let mut out = [u64::MAX; 3];
    bm.copy_to_words(&mut out, 70).unwrap();
    assert_eq!(out, [words[0], 0x21, u64::MAX]);
    // The size must match the block exactly, as QEMU requires.
    assert_eq!(
        bm.copy_to_words(&mut out, 200),
        Err(WireError::BitmapSizeMismatch {
            expected: 32,
            found: 16
        })
    );
    assert_eq!(
        bm.copy_to_words(&mut out[..1], 70),
        Err(WireError::BufferTooSmall {
            needed: 2,
            available: 1
        })
    );
    // Whole words: 128 pages is 16 bytes too; 0 pages is an empty bitmap.
    assert_eq!(recv_bitmap_size(128), 16);
    assert_eq!(recv_bitmap_size(129), 24);
    let n = encode_recv_bitmap(&mut buf, &[], 0).unwrap();
    assert_eq!(&buf[..n], &hex("0000000000000000 0123456789abcdef")[..]);
}

#[test]
fn discard_accepts_more_than_twelve_ranges() {
    let ranges: Vec<DiscardRange> = (0..100u64)
        .map(|i| DiscardRange {
            start: i << 21,
            length: 1 << 21,
        })
        .collect();
    let mut buf = vec![0u8; 4096];
    let n = encode_discard(&mut buf, b"mem", &ranges).unwrap();
    assert_eq!(n, 5 + discard_payload_len(3, 100));
    let (msg, _) = decode_command(&buf[..n]).unwrap();
    let CommandMsg::PostcopyRamDiscard(d) = msg else {
        panic!()
    };
    assert_eq!(d.ranges().collect::<Vec<_>>(), ranges);
    // The largest count whose payload fits 16 bits, and one more.
    let many = vec![
        DiscardRange {
            start: 0,
            length: 1
        };
        4095
    ];
    let mut big = vec![0u8; 70_000];
    let n = encode_discard(&mut big, b"m", &many).unwrap();
    assert_eq!(n, 5 + 4 + 16 * 4095);
    assert!(decode_command(&big[..n]).is_ok());
    let too_many = vec![
        DiscardRange {
            start: 0,
            length: 1
        };
        4096
    ];
    assert_eq!(
        encode_discard(&mut big, b"m", &too_many),
        Err(WireError::PayloadTooLong {
            what: "POSTCOPY_RAM_DISCARD",
            len: 4 + 16 * 4096
        })
    );
}

#[test]
fn round_trips_random() {
    let mut rng = Rng::new(11);
    let mut name_buf = [0u8; 255];
    for _ in 0..2000 {
        let name_len = 1 + rng.below(255) as usize;
        for b in name_buf.iter_mut().take(name_len) {
            *b = 1 + rng.below(255) as u8;
        }
        let name = &name_buf[..name_len];
        let count = 1 + rng.below(20) as usize;
        let ranges: Vec<DiscardRange> = (0..count)
            .map(|_| {
                let start = rng.next() >> rng.below(64);
                let length = 1 + rng.below(u64::MAX - start);
                DiscardRange { start, length }
            })
            .collect();
        let mut buf = vec![0u8; 1024];
        let n = encode_discard(&mut buf, name, &ranges).unwrap();
        let (msg, used) = decode_command(&buf[..n]).unwrap();
        assert_eq!(used, n);
        let CommandMsg::PostcopyRamDiscard(d) = msg else {
            panic!()
        };
        assert_eq!(d.name(), name);
        assert_eq!(d.ranges().collect::<Vec<_>>(), ranges);
        assert_eq!(encode_cmd(&msg), &buf[..n]);

        let start = rng.next();
        let len = 1 + rng.below(u64::from(u32::MAX).min(u64::MAX - start)) as u32;
        for msg in [
            ReturnPathMsg::Shut {
                failed: rng.next() as u32,
            },
            ReturnPathMsg::Pong(rng.next() as u32),
            ReturnPathMsg::ResumeAck(rng.next() as u32),
            ReturnPathMsg::ReqPages { start, len },
            ReturnPathMsg::ReqPagesId {
                start,
                len,
                id: name,
            },
            ReturnPathMsg::RecvBitmap { name },
        ] {
            let bytes = encode_rp(&msg);
            assert_eq!(decode_return_path(&bytes), Ok((msg, bytes.len())));
        }
        for msg in [
            CommandMsg::Ping(rng.next() as u32),
            CommandMsg::Packaged(rng.next() as u32),
            CommandMsg::PostcopyAdvise(Some(Advise {
                ram_pagesize_summary: rng.next(),
                target_page_size: rng.next(),
            })),
            CommandMsg::RecvBitmap { name },
        ] {
            let bytes = encode_cmd(&msg);
            assert_eq!(decode_command(&bytes), Ok((msg, bytes.len())));
        }

        let nbits = rng.below(3000) as usize;
        let words: Vec<u64> = (0..nbits.div_ceil(64)).map(|_| rng.next()).collect();
        let mut block = vec![0u8; recv_bitmap_block_len(nbits).unwrap()];
        let n = encode_recv_bitmap(&mut block, &words, nbits).unwrap();
        assert_eq!(n, block.len());
        let (bm, used) = decode_recv_bitmap(&block).unwrap();
        assert_eq!(used, n);
        let mut out = vec![0u64; words.len()];
        bm.copy_to_words(&mut out, nbits).unwrap();
        for i in 0..nbits {
            assert_eq!(out[i / 64] >> (i % 64) & 1, words[i / 64] >> (i % 64) & 1);
            assert_eq!(bm.test(i as u64), out[i / 64] >> (i % 64) & 1 == 1);
        }
        if nbits % 64 != 0 {
            assert_eq!(out.last().unwrap() >> (nbits % 64), 0, "tail cleared");
        }
    }
}

#[test]
fn streaming_reader() {
    // Several commands back to back, read the way a stream reader does: header, then the rest.
    let mut stream = Vec::new();
    for (_, bytes) in command_goldens() {
        stream.extend_from_slice(&bytes);
    }
    stream.extend_from_slice(&hex(DISCARD_12_GOLDEN));
    let mut at = 0;
    let mut count = 0;
    while at < stream.len() {
        let header = decode_command_header(&stream[at..at + COMMAND_HEADER_LEN]).unwrap();
        let whole = &stream[at..at + header.total_len()];
        let payload = &whole[COMMAND_HEADER_LEN..];
        let msg = decode_command_payload(header.cmd, payload).unwrap();
        assert_eq!(
            decode_command(&stream[at..]).unwrap(),
            (msg, header.total_len())
        );
        at += header.total_len();
        count += 1;
    }
    assert_eq!(count, command_goldens().len() + 1);

    let mut stream = Vec::new();
    for (_, bytes) in rp_goldens() {
        stream.extend_from_slice(&bytes);
    }
    let mut at = 0;
    let mut seen = Vec::new();
    while at < stream.len() {
        let header = decode_return_path_header(&stream[at..at + RETURN_PATH_HEADER_LEN]).unwrap();
        let payload = &stream[at + RETURN_PATH_HEADER_LEN..at + header.total_len()];
        seen.push(decode_return_path_payload(header.rp_type, payload).unwrap());
        at += header.total_len();
    }
    assert_eq!(
        seen,
        rp_goldens().into_iter().map(|(m, _)| m).collect::<Vec<_>>()
    );

    // A received-bitmap block: read 8 bytes, learn the size, read the rest.
    let mut block = [0u8; 48];
    let n = encode_recv_bitmap(&mut block, &[1, 2, 3], 150).unwrap();
    let size = decode_recv_bitmap_size(&block[..8]).unwrap();
    assert_eq!(n as u64, size + 16);
}

#[test]
fn headers_are_strict() {
    assert_eq!(
        decode_command_header(&hex("08 0001")),
        Err(WireError::Truncated {
            needed: 5,
            available: 3
        })
    );
    assert_eq!(
        decode_command_header(&hex("09 0001 0000")),
        Err(WireError::BadCommandMarker(9))
    );
    for cmd in [0u16, 8, 11, 0xffff] {
        let mut b = hex("08 0000 0000");
        b[1..3].copy_from_slice(&cmd.to_be_bytes());
        assert_eq!(
            decode_command_header(&b),
            Err(WireError::UnknownCommand(cmd))
        );
    }
    let e = decode_command_header(&hex("08 0002 0005")).unwrap_err();
    assert_eq!(
        e,
        WireError::LengthMismatch {
            what: "PING",
            found: 5,
            expected: LenRule::Exactly(4)
        }
    );
    assert_eq!(e.to_string(), "PING: length 5, expected 4");
    let e = decode_command_header(&hex("08 0003 0008")).unwrap_err();
    assert_eq!(e.to_string(), "POSTCOPY_ADVISE: length 8, expected 0 or 16");
    let e = decode_command_header(&hex("08 0006 0013")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "POSTCOPY_RAM_DISCARD: length 19, expected at least 20"
    );
    assert!(decode_command_header(&hex("08 0004 0001")).is_err());
    assert!(decode_command_header(&hex("08 000a 0000")).is_err());
    assert!(decode_command_header(&hex("08 000a 0101")).is_err());

    assert_eq!(
        decode_return_path_header(&hex("0001")),
        Err(WireError::Truncated {
            needed: 4,
            available: 2
        })
    );
    for t in [0u16, 7, 0x100] {
        let mut b = hex("0000 0004");
        b[..2].copy_from_slice(&t.to_be_bytes());
        assert_eq!(
            decode_return_path_header(&b),
            Err(WireError::UnknownReturnPathType(t))
        );
    }
    for (t, bad) in [
        (1u16, 5u16),
        (2, 0),
        (4, 13),
        (4, 11),
        (3, 12),
        (3, 269),
        (5, 0),
        (5, 257),
        (6, 3),
    ] {
        let mut b = vec![0u8; 4];
        b[..2].copy_from_slice(&t.to_be_bytes());
        b[2..].copy_from_slice(&bad.to_be_bytes());
        assert!(
            matches!(
                decode_return_path_header(&b),
                Err(WireError::LengthMismatch { .. })
            ),
            "type {t} len {bad}"
        );
    }
    // No valid return-path message exceeds the source's 512-byte buffer.
    assert!(decode_return_path_header(&hex("0003 0201")).is_err());
}

#[test]
fn clear_errors_for_bad_discards() {
    let mut buf = [0u8; 1024];
    let r1 = [DiscardRange {
        start: 0,
        length: 4096,
    }];
    assert_eq!(
        encode_discard(&mut buf, b"", &r1),
        Err(WireError::EmptyName)
    );
    assert_eq!(
        encode_discard(&mut buf, &[b'a'; 256], &r1),
        Err(WireError::NameTooLong(256))
    );
    assert!(encode_discard(&mut buf, &[b'a'; 255], &r1).is_ok());
    assert_eq!(
        encode_discard(&mut buf, b"a\0b", &r1),
        Err(WireError::NameContainsNul { offset: 1 })
    );
    assert_eq!(
        encode_discard(&mut buf, b"ram", &[]),
        Err(WireError::NoRanges)
    );
    let zero = [
        r1[0],
        DiscardRange {
            start: 8192,
            length: 0,
        },
    ];
    assert_eq!(
        encode_discard(&mut buf, b"ram", &zero),
        Err(WireError::ZeroLengthRange { index: 1 })
    );
    let over = [DiscardRange {
        start: u64::MAX - 10,
        length: 11,
    }];
    assert_eq!(
        encode_discard(&mut buf, b"ram", &over),
        Err(WireError::RangeOverflow {
            index: 0,
            start: u64::MAX - 10,
            length: 11
        })
    );
    assert_eq!(
        encode_discard_pairs(&mut buf, b"ram", &[0, 1], &[1]),
        Err(WireError::RangeCountMismatch {
            starts: 2,
            lengths: 1
        })
    );

    // Decoding: each field wrong in turn, starting from a valid payload.
    let good = hex("00 03 72616d 00 0000000000000000 0000000000001000");
    assert!(decode_discard_payload(&good).is_ok());
    let mut p = good.clone();
    p[0] = 1;
    assert_eq!(decode_discard_payload(&p), Err(WireError::BadVersion(1)));
    assert_eq!(
        decode_discard_payload(&hex("00 00 00 0000000000000000 0000000000001000")),
        Err(WireError::EmptyName)
    );
    let mut p = good.clone();
    p[3] = 0;
    assert_eq!(
        decode_discard_payload(&p),
        Err(WireError::NameContainsNul { offset: 1 })
    );
    let mut p = good.clone();
    p[5] = b'x';
    assert_eq!(
        decode_discard_payload(&p),
        Err(WireError::MissingTerminator(b'x'))
    );
    let mut p = good.clone();
    p.push(0);
    assert_eq!(
        decode_discard_payload(&p),
        Err(WireError::DiscardLengthNotMultipleOf16(17))
    );
    assert_eq!(
        decode_discard_payload(&good[..good.len() - 1]),
        Err(WireError::DiscardLengthNotMultipleOf16(15))
    );
    assert_eq!(decode_discard_payload(&good[..6]), Err(WireError::NoRanges));
    let mut p = good.clone();
    p[20] = 0;
    assert_eq!(
        decode_discard_payload(&p),
        Err(WireError::ZeroLengthRange { index: 0 })
    );
    let p = hex("00 03 72616d 00 ffffffffffffffff 0000000000000001");
    assert!(matches!(
        decode_discard_payload(&p),
        Err(WireError::RangeOverflow { index: 0, .. })
    ));
    // A name length that runs past the payload.
    assert_eq!(
        decode_discard_payload(&hex("00 ff 6161")),
        Err(WireError::Truncated {
            needed: 257,
            available: 4
        })
    );
    assert_eq!(
        decode_discard_payload(&[]),
        Err(WireError::Truncated {
            needed: 1,
            available: 0
        })
    );

    // Through the whole-command decoder, a bad field is still named precisely.
    let mut whole = hex("08 0006 0000");
    let mut p = good.clone();
    p.extend_from_slice(&good[6..]);
    p[0] = 7;
    whole[3..5].copy_from_slice(&(p.len() as u16).to_be_bytes());
    whole.extend_from_slice(&p);
    assert_eq!(decode_command(&whole), Err(WireError::BadVersion(7)));
}

#[test]
fn clear_errors_for_bad_return_path_and_names() {
    let mut buf = [0u8; 600];
    let long = [b'n'; 256];
    assert_eq!(
        encode_return_path(
            &mut buf,
            &ReturnPathMsg::ReqPagesId {
                start: 0,
                len: 4096,
                id: b""
            }
        ),
        Err(WireError::EmptyName)
    );
    assert_eq!(
        encode_return_path(
            &mut buf,
            &ReturnPathMsg::ReqPagesId {
                start: 0,
                len: 4096,
                id: &long
            }
        ),
        Err(WireError::NameTooLong(256))
    );
    assert_eq!(
        encode_return_path(&mut buf, &ReturnPathMsg::RecvBitmap { name: &long }),
        Err(WireError::NameTooLong(256))
    );
    assert_eq!(
        encode_return_path(&mut buf, &ReturnPathMsg::ReqPages { start: 0, len: 0 }),
        Err(WireError::ZeroLengthRange { index: 0 })
    );
    assert_eq!(
        encode_command(&mut buf, &CommandMsg::RecvBitmap { name: b"" }),
        Err(WireError::EmptyName)
    );
    assert!(encode_command(&mut buf, &CommandMsg::RecvBitmap { name: &long[..255] }).is_ok());

    // REQ_PAGES_ID whose id length disagrees with the message length.
    let e = decode_return_path(&hex("0003 0013 0000000000200000 00200000 05 70632e72616d"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            WireError::LengthMismatch {
                what: "REQ_PAGES_ID",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.errno(), libc::EBADMSG);
    assert_eq!(
        decode_return_path(&hex("0003 000d 0000000000200000 00200000 00")),
        Err(WireError::EmptyName)
    );
    assert_eq!(
        decode_return_path(&hex("0005 0001 00")),
        Err(WireError::EmptyName)
    );
    assert_eq!(
        decode_return_path(&hex("0004 000c 0000000000000000 00000000")),
        Err(WireError::ZeroLengthRange { index: 0 })
    );
    assert!(matches!(
        decode_return_path(&hex("0004 000c fffffffffffff000 00002000")),
        Err(WireError::RangeOverflow { .. })
    ));
    assert_eq!(
        decode_return_path(&hex("0002 0004 0000")),
        Err(WireError::Truncated {
            needed: 8,
            available: 6
        })
    );
    assert_eq!(
        decode_command(&hex("08 000a 0003 02 61 00")),
        Err(WireError::NameContainsNul { offset: 1 })
    );
}

#[test]
fn clear_errors_for_bad_bitmaps() {
    let good = hex("0000000000000008 ffffffffffffffff 0123456789abcdef");
    assert!(decode_recv_bitmap(&good).is_ok());
    let mut b = good.clone();
    b[7] = 9;
    assert_eq!(decode_recv_bitmap(&b), Err(WireError::BadBitmapSize(9)));
    assert_eq!(
        decode_recv_bitmap_size(&b),
        Err(WireError::BadBitmapSize(9))
    );
    let mut b = good.clone();
    *b.last_mut().unwrap() = 0xee;
    let e = decode_recv_bitmap(&b).unwrap_err();
    assert_eq!(e, WireError::BadEndMarker(0x0123_4567_89ab_cdee));
    assert_eq!(
        e.to_string(),
        "received bitmap end marker is 0x0123456789abcdee, expected 0x0123456789abcdef"
    );
    assert_eq!(
        decode_recv_bitmap(&good[..23]),
        Err(WireError::Truncated {
            needed: 24,
            available: 23
        })
    );
    // A size far past the input (and past usize on 32-bit hosts) is only "truncated".
    let huge = hex("fffffffffffffff8 00");
    assert!(matches!(
        decode_recv_bitmap(&huge),
        Err(WireError::Truncated { .. })
    ));
    let mut buf = [0u8; 64];
    assert_eq!(
        encode_recv_bitmap(&mut buf, &[0], 65),
        Err(WireError::BitmapTooShort {
            nbits: 65,
            words: 1
        })
    );
}

#[test]
fn too_small_buffers_are_enospc() {
    for (msg, bytes) in command_goldens() {
        for len in 0..bytes.len() {
            let mut buf = vec![0u8; len];
            let e = encode_command(&mut buf, &msg).unwrap_err();
            assert_eq!(
                e,
                WireError::BufferTooSmall {
                    needed: bytes.len(),
                    available: len
                }
            );
            assert_eq!(e.errno(), libc::ENOSPC);
        }
    }
    for (msg, bytes) in rp_goldens() {
        let mut buf = vec![0u8; bytes.len() - 1];
        assert_eq!(
            encode_return_path(&mut buf, &msg).unwrap_err().errno(),
            libc::ENOSPC
        );
    }
    let mut buf = [0u8; 203];
    assert_eq!(
        encode_discard(&mut buf, b"ram0", &twelve_ranges()),
        Err(WireError::BufferTooSmall {
            needed: 204,
            available: 203
        })
    );
    let mut buf = [0u8; 31];
    assert_eq!(
        encode_recv_bitmap(&mut buf, &[0, 0], 70)
            .unwrap_err()
            .errno(),
        libc::ENOSPC
    );
    let mut buf = [0u8; 4];
    assert_eq!(
        encode_command_header(&mut buf, Command::Ping, 4),
        Err(WireError::BufferTooSmall {
            needed: 5,
            available: 4
        })
    );
}

#[test]
fn errno_mapping_and_display() {
    let all = [
        WireError::BufferTooSmall {
            needed: 5,
            available: 4,
        },
        WireError::Truncated {
            needed: 5,
            available: 4,
        },
        WireError::BadCommandMarker(1),
        WireError::UnknownCommand(8),
        WireError::UnknownReturnPathType(9),
        WireError::LengthMismatch {
            what: "PING",
            found: 1,
            expected: LenRule::Between(2, 3),
        },
        WireError::PayloadTooLong {
            what: "X",
            len: 70_000,
        },
        WireError::BadVersion(2),
        WireError::EmptyName,
        WireError::NameTooLong(300),
        WireError::NameContainsNul { offset: 3 },
        WireError::MissingTerminator(5),
        WireError::DiscardLengthNotMultipleOf16(17),
        WireError::NoRanges,
        WireError::RangeCountMismatch {
            starts: 1,
            lengths: 2,
        },
        WireError::ZeroLengthRange { index: 4 },
        WireError::RangeOverflow {
            index: 0,
            start: 1,
            length: 2,
        },
        WireError::Misaligned {
            start: 1,
            length: 2,
            align: 4096,
        },
        WireError::OutOfBlock {
            start: 0,
            length: 8192,
            block_len: 4096,
        },
        WireError::BadBitmapSize(3),
        WireError::BitmapSizeMismatch {
            expected: 8,
            found: 16,
        },
        WireError::BitmapTooShort {
            nbits: 65,
            words: 1,
        },
        WireError::BadEndMarker(0),
    ];
    for e in all {
        let errno = e.errno();
        assert!(
            [libc::EINVAL, libc::ENOSPC, libc::EBADMSG].contains(&errno),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{e:?}: {text}");
    }
    assert_eq!(WireError::EmptyName.errno(), libc::EINVAL);
    assert_eq!(WireError::NoRanges.errno(), libc::EINVAL);
    assert_eq!(WireError::BadVersion(1).errno(), libc::EBADMSG);
    assert_eq!(
        WireError::UnknownCommand(8).to_string(),
        "unknown command 8"
    );
    assert_eq!(
        WireError::NameTooLong(300).to_string(),
        "block name of 300 bytes, longest allowed is 255"
    );
    assert_eq!(
        WireError::ZeroLengthRange { index: 4 }.to_string(),
        "range 4 has length 0"
    );
}

#[test]
fn check_range_against_block() {
    assert_eq!(check_range(0x2000, 0x1000, 0x1000, 0x3000), Ok(()));
    assert_eq!(
        check_range(0, 0, 0x1000, 0x3000),
        Err(WireError::ZeroLengthRange { index: 0 })
    );
    assert_eq!(
        check_range(0x1800, 0x1000, 0x1000, 0x3000),
        Err(WireError::Misaligned {
            start: 0x1800,
            length: 0x1000,
            align: 0x1000
        })
    );
    assert!(matches!(
        check_range(0, 0x800, 0x1000, 0x3000),
        Err(WireError::Misaligned { .. })
    ));
    assert_eq!(
        check_range(0x2000, 0x2000, 0x1000, 0x3000),
        Err(WireError::OutOfBlock {
            start: 0x2000,
            length: 0x2000,
            block_len: 0x3000
        })
    );
    assert!(matches!(
        check_range(u64::MAX, 1, 1, u64::MAX),
        Err(WireError::RangeOverflow { .. })
    ));
}

/// Runs every decoder over `bytes`. Whatever they accept must re-encode to exactly the bytes
/// they consumed (the formats have one encoding per message).
fn decode_everything(bytes: &[u8]) {
    if let Ok((msg, used)) = decode_command(bytes) {
        assert!(used <= bytes.len());
        assert_eq!(encode_cmd(&msg), &bytes[..used], "command re-encodes");
    }
    if let Ok(header) = decode_command_header(bytes) {
        let _ = decode_command_payload(header.cmd, bytes.get(COMMAND_HEADER_LEN..).unwrap_or(&[]));
    }
    if let Ok((msg, used)) = decode_return_path(bytes) {
        assert!(used <= bytes.len());
        assert_eq!(encode_rp(&msg), &bytes[..used], "return path re-encodes");
    }
    if let Ok(header) = decode_return_path_header(bytes) {
        let _ = decode_return_path_payload(
            header.rp_type,
            bytes.get(RETURN_PATH_HEADER_LEN..).unwrap_or(&[]),
        );
    }
    if let Ok(d) = decode_discard_payload(bytes) {
        let ranges: Vec<DiscardRange> = d.ranges().collect();
        let mut buf = vec![0u8; bytes.len() + 8];
        if let Ok(n) = encode_discard(&mut buf, d.name(), &ranges) {
            assert_eq!(
                &buf[COMMAND_HEADER_LEN..n],
                bytes,
                "discard payload re-encodes"
            );
        }
    }
    if let Ok((bm, used)) = decode_recv_bitmap(bytes) {
        assert_eq!(used, bm.as_le_bytes().len() + 16);
        let nbits = bm.as_le_bytes().len() * 8;
        let mut words = vec![0u64; nbits / 64];
        bm.copy_to_words(&mut words, nbits).unwrap();
        let mut buf = vec![0u8; used];
        encode_recv_bitmap(&mut buf, &words, nbits).unwrap();
        assert_eq!(&buf[..], &bytes[..used], "bitmap re-encodes");
    }
    let _ = decode_recv_bitmap_size(bytes);
    for cmd in [
        Command::PostcopyRamDiscard,
        Command::RecvBitmap,
        Command::PostcopyAdvise,
    ] {
        let _ = decode_command_payload(cmd, bytes);
    }
    for ty in [
        ReturnPathType::ReqPagesId,
        ReturnPathType::RecvBitmap,
        ReturnPathType::ReqPages,
    ] {
        let _ = decode_return_path_payload(ty, bytes);
    }
}

fn all_goldens() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = command_goldens().into_iter().map(|(_, b)| b).collect();
    v.extend(rp_goldens().into_iter().map(|(_, b)| b));
    v.push(hex(DISCARD_12_GOLDEN));
    v.push(hex(
        "0000000000000010 0302000000000080 2100000000000000 0123456789abcdef",
    ));
    v
}

#[test]
fn truncated_goldens_are_errors() {
    for golden in all_goldens() {
        for len in 0..golden.len() {
            let cut = &golden[..len];
            decode_everything(cut);
            if golden[0] == QEMU_VM_COMMAND {
                assert!(
                    decode_command(cut).is_err(),
                    "prefix of {len} bytes accepted"
                );
                assert!(
                    matches!(decode_command(cut), Err(WireError::Truncated { .. })),
                    "prefix {len}: {:?}",
                    decode_command(cut)
                );
            }
        }
    }
    for (_, golden) in rp_goldens() {
        for len in 0..golden.len() {
            assert!(matches!(
                decode_return_path(&golden[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
    }
}

#[test]
fn mutated_goldens_never_panic() {
    let mut rng = Rng::new(99);
    let goldens = all_goldens();
    for round in 0..20_000 {
        let mut m = goldens[round % goldens.len()].clone();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] = rng.byte();
                }
                1 if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(m.len() as u64 + 1) as usize;
                    m.insert(i, rng.byte());
                }
                _ if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m.remove(i);
                }
                _ => {}
            }
        }
        decode_everything(&m);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(4242);
    for _ in 0..20_000 {
        let len = rng.below(300) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Often a plausible header, so the payload decoders are reached.
        match rng.below(3) {
            0 if len >= 5 => {
                b[0] = QEMU_VM_COMMAND;
                b[1] = 0;
                b[2] = rng.below(12) as u8;
                let plen = (len - 5) as u16;
                b[3..5].copy_from_slice(&plen.to_be_bytes());
            }
            1 if len >= 4 => {
                b[0] = 0;
                b[1] = rng.below(8) as u8;
                let plen = (len - 4) as u16;
                b[2..4].copy_from_slice(&plen.to_be_bytes());
            }
            _ => {}
        }
        decode_everything(&b);
    }
}
