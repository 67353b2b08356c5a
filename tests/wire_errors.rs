//! Wire codecs: strict headers, clear errors and errnos. Goldens and round trips:
//! tests/wire_codecs.rs; hostile input: tests/wire_hostile.rs.

mod wire_support;

use postcopy_ram::wire::*;
use wire_support::*;

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
    for cmd in [0u16, 12, 0xffff] {
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
    for t in [0u16, 8, 0x100] {
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
    // An empty range (QEMU 2.6-2.9 sources send `(block_length, 0)`) decodes.
    let mut p = good.clone();
    p[20] = 0;
    let d = decode_discard_payload(&p).unwrap();
    assert_eq!(d.range(0).unwrap().length, 0);
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
