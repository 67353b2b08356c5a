//! Wire codecs: golden byte vectors written from the documented layout (QEMU-POSTCOPY-NOTES
//! section 4), round trips and streaming. Errors and hostile input: tests/wire_errors.rs.

mod common;
mod wire_support;

use common::Rng;
use postcopy_ram::wire::*;
use wire_support::*;

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
