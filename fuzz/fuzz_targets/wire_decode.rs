//! Every wire decoder over the same input: command and return-path headers, whole messages,
//! payloads of every known kind, streams of messages, the discard payload and the
//! received-bitmap block. Whatever a decoder accepts must be consistent with its header
//! decoder and re-encode to exactly the bytes it consumed (the formats have one encoding per
//! message); every error must map to -EBADMSG, -EINVAL or -ENOSPC and print. The tail of the
//! input also drives the encoders with short buffers and odd arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postcopy_ram::wire::*;

fuzz_target!(|data: &[u8]| {
    commands(data);
    return_path(data);
    payloads(data);
    discard_payload(data);
    recv_bitmap(data);
    encoders(data);
});

fn check_err(e: WireError) {
    let errno = e.errno();
    assert!(
        [libc::EBADMSG, libc::EINVAL, libc::ENOSPC].contains(&errno),
        "{e:?} -> {errno}"
    );
    assert!(!e.to_string().is_empty());
}

/// Encodes `msg` into a buffer of exactly `want.len()` bytes and compares; one byte less
/// must be -ENOSPC.
fn reencode_cmd(msg: &CommandMsg<'_>, want: &[u8]) {
    assert_eq!(msg.encoded_len(), want.len());
    let mut buf = vec![0u8; want.len()];
    assert_eq!(encode_command(&mut buf, msg), Ok(want.len()));
    assert_eq!(buf, want, "command re-encodes");
    let short = encode_command(&mut buf[..want.len() - 1], msg);
    assert!(
        matches!(short, Err(WireError::BufferTooSmall { .. })),
        "{short:?}"
    );
}

fn reencode_rp(msg: &ReturnPathMsg<'_>, want: &[u8]) {
    assert_eq!(msg.encoded_len(), want.len());
    let mut buf = vec![0u8; want.len()];
    assert_eq!(encode_return_path(&mut buf, msg), Ok(want.len()));
    assert_eq!(buf, want, "return-path message re-encodes");
    let short = encode_return_path(&mut buf[..want.len() - 1], msg);
    assert!(
        matches!(short, Err(WireError::BufferTooSmall { .. })),
        "{short:?}"
    );
}

/// Commands: the whole-message decoder agrees with the header decoder, and a stream reader
/// walks a sequence of them.
fn commands(data: &[u8]) {
    match (decode_command(data), decode_command_header(data)) {
        (Ok((msg, used)), Ok(h)) => {
            assert_eq!(h.total_len(), used);
            assert_eq!(h.cmd, msg.command());
            assert!(used <= data.len() && used >= COMMAND_HEADER_LEN);
            reencode_cmd(&msg, &data[..used]);
        }
        (Ok(_), Err(e)) => panic!("message decodes but its header does not: {e:?}"),
        (Err(e), Ok(h)) => {
            check_err(e);
            // The header was fine, so the payload is short or bad.
            if data.len() >= h.total_len() {
                let payload = &data[COMMAND_HEADER_LEN..h.total_len()];
                assert_eq!(decode_command_payload(h.cmd, payload).err(), Some(e));
            }
        }
        (Err(e), Err(he)) => {
            check_err(e);
            check_err(he);
        }
    }
    let mut rest = data;
    while let Ok((_, used)) = decode_command(rest) {
        assert!(used >= COMMAND_HEADER_LEN);
        rest = &rest[used..];
    }
}

fn return_path(data: &[u8]) {
    match (decode_return_path(data), decode_return_path_header(data)) {
        (Ok((msg, used)), Ok(h)) => {
            assert_eq!(h.total_len(), used);
            assert_eq!(h.rp_type, msg.rp_type());
            assert!(used <= data.len() && used >= RETURN_PATH_HEADER_LEN);
            assert!(used - RETURN_PATH_HEADER_LEN <= RETURN_PATH_MAX_LEN);
            reencode_rp(&msg, &data[..used]);
        }
        (Ok(_), Err(e)) => panic!("message decodes but its header does not: {e:?}"),
        (Err(e), Ok(h)) => {
            check_err(e);
            assert!(h.total_len() - RETURN_PATH_HEADER_LEN <= RETURN_PATH_MAX_LEN);
            if data.len() >= h.total_len() {
                let payload = &data[RETURN_PATH_HEADER_LEN..h.total_len()];
                assert_eq!(
                    decode_return_path_payload(h.rp_type, payload).err(),
                    Some(e)
                );
            }
        }
        (Err(e), Err(he)) => {
            check_err(e);
            check_err(he);
        }
    }
    let mut rest = data;
    while let Ok((_, used)) = decode_return_path(rest) {
        assert!(used >= RETURN_PATH_HEADER_LEN);
        rest = &rest[used..];
    }
}

/// The whole input as the payload of every known command and return-path type (numbers
/// are probed, so kinds added later are covered too).
fn payloads(data: &[u8]) {
    for raw in 0..=64u16 {
        if let Some(cmd) = Command::from_u16(raw) {
            assert_eq!(cmd.as_u16(), raw);
            match decode_command_payload(cmd, data) {
                // (Longer than the 16-bit length field: no message can carry it.)
                Ok(msg) if data.len() <= usize::from(u16::MAX) => {
                    assert_eq!(msg.command(), cmd);
                    assert_eq!(msg.payload_len(), data.len());
                    let mut whole = vec![0u8; COMMAND_HEADER_LEN + data.len()];
                    assert_eq!(
                        encode_command_header(&mut whole, cmd, data.len()),
                        Ok(COMMAND_HEADER_LEN)
                    );
                    whole[COMMAND_HEADER_LEN..].copy_from_slice(data);
                    reencode_cmd(&msg, &whole);
                }
                Ok(_) => {}
                Err(e) => check_err(e),
            }
        }
        if let Some(ty) = ReturnPathType::from_u16(raw) {
            assert_eq!(ty.as_u16(), raw);
            match decode_return_path_payload(ty, data) {
                Ok(msg) => {
                    assert_eq!(msg.rp_type(), ty);
                    assert_eq!(msg.payload_len(), data.len());
                    let mut whole = Vec::with_capacity(RETURN_PATH_HEADER_LEN + data.len());
                    whole.extend_from_slice(&raw.to_be_bytes());
                    whole.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    whole.extend_from_slice(data);
                    reencode_rp(&msg, &whole);
                }
                Err(e) => check_err(e),
            }
        }
    }
}

fn discard_payload(data: &[u8]) {
    let d = match decode_discard_payload(data) {
        Ok(d) => d,
        Err(e) => return check_err(e),
    };
    assert_eq!(validate_name(d.name()), Ok(()));
    assert_eq!(d.payload_len(), data.len());
    assert_eq!(
        discard_payload_len(d.name().len(), d.range_count()),
        data.len()
    );
    let ranges: Vec<DiscardRange> = d.ranges().collect();
    assert_eq!(ranges.len(), d.range_count());
    assert_eq!(d.ranges().len(), d.range_count());
    assert!(!ranges.is_empty());
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(d.range(i), Some(*r));
        assert!(r.start.checked_add(r.length).is_some());
        // check_range never panics, whatever the block.
        let _ = check_range(r.start, r.length, 4096, r.start.wrapping_add(r.length));
    }
    assert_eq!(d.range(ranges.len()), None);
    assert_eq!(d.range(usize::MAX), None);
    let mut buf = vec![0u8; COMMAND_HEADER_LEN + data.len()];
    if let Ok(n) = encode_discard(&mut buf, d.name(), &ranges) {
        assert_eq!(
            &buf[COMMAND_HEADER_LEN..n],
            data,
            "discard payload re-encodes"
        );
        let starts: Vec<u64> = ranges.iter().map(|r| r.start).collect();
        let lengths: Vec<u64> = ranges.iter().map(|r| r.length).collect();
        let mut buf2 = vec![0u8; n];
        assert_eq!(
            encode_discard_pairs(&mut buf2, d.name(), &starts, &lengths),
            Ok(n)
        );
        assert_eq!(buf2, buf[..n]);
    }
}

fn recv_bitmap(data: &[u8]) {
    let size = decode_recv_bitmap_size(data);
    let (bm, used) = match decode_recv_bitmap(data) {
        Ok(v) => v,
        Err(e) => return check_err(e),
    };
    assert_eq!(size, Ok(bm.size_bytes()));
    assert_eq!(used, bm.as_le_bytes().len() + 16);
    let nbits = bm.as_le_bytes().len() * 8;
    let mut words = vec![0u64; nbits / 64];
    bm.copy_to_words(&mut words, nbits).unwrap();
    for (i, w) in words.iter().enumerate() {
        assert_eq!(bm.word(i), Some(*w));
    }
    assert_eq!(bm.word(words.len()), None);
    for page in [0u64, 1, 63, 64, nbits as u64, u64::MAX] {
        let want = words
            .get((page / 64) as usize)
            .is_some_and(|w| (w >> (page % 64)) & 1 == 1);
        assert_eq!(bm.test(page), want);
    }
    let mut buf = vec![0u8; used];
    assert_eq!(encode_recv_bitmap(&mut buf, &words, nbits), Ok(used));
    assert_eq!(&buf[..], &data[..used], "bitmap re-encodes");
    // A block of another size is refused, not misread.
    let other = nbits + 1 + usize::from(data[0]);
    let mut out = vec![0u64; other.div_ceil(64)];
    assert!(bm.copy_to_words(&mut out, other).is_err());
}

/// Encoders driven by the input: a name, ranges, a bitmap and an output buffer whose size
/// the input chooses (often too small).
fn encoders(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Some((&name_len, rest)) = rest.split_first() else {
        return;
    };
    let name_len = usize::from(name_len % 32).min(rest.len());
    let (name, rest) = rest.split_at(name_len);
    let buf_len = usize::from(ctl) * 2;
    let mut buf = vec![0xa5u8; buf_len];
    let words: Vec<u64> = rest
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    let ranges: Vec<DiscardRange> = words
        .chunks_exact(2)
        .map(|p| DiscardRange {
            start: p[0],
            length: p[1],
        })
        .collect();
    match encode_discard(&mut buf, name, &ranges) {
        Ok(n) => {
            let (msg, used) = decode_command(&buf[..n]).expect("encoded discard decodes");
            assert_eq!(used, n);
            let CommandMsg::PostcopyRamDiscard(d) = msg else {
                panic!("encoded discard decodes as {msg:?}");
            };
            assert_eq!(d.name(), name);
            assert!(d.ranges().eq(ranges.iter().copied()));
        }
        Err(e) => check_err(e),
    }
    let nbits = words.len() * 64 - usize::from(ctl % 64).min(words.len() * 64);
    match encode_recv_bitmap(&mut buf, &words, nbits) {
        Ok(n) => {
            assert_eq!(recv_bitmap_block_len(nbits), Some(n));
            let (bm, used) = decode_recv_bitmap(&buf[..n]).expect("encoded bitmap decodes");
            assert_eq!(used, n);
            let mut out = vec![0u64; nbits.div_ceil(64)];
            bm.copy_to_words(&mut out, nbits).unwrap();
            for page in 0..nbits {
                let bit = |w: &[u64]| (w[page / 64] >> (page % 64)) & 1;
                assert_eq!(bit(&out), bit(&words), "page {page}");
            }
        }
        Err(e) => check_err(e),
    }
    let id = if name.is_empty() { &b"x"[..] } else { name };
    let start = words.first().copied().unwrap_or(0);
    let len = (words.get(1).copied().unwrap_or(0) >> 32) as u32;
    for msg in [
        ReturnPathMsg::ReqPagesId { start, len, id },
        ReturnPathMsg::ReqPages { start, len },
        ReturnPathMsg::RecvBitmap { name: id },
    ] {
        match encode_return_path(&mut buf, &msg) {
            Ok(n) => {
                assert_eq!(n, msg.encoded_len());
                assert_eq!(decode_return_path(&buf[..n]), Ok((msg, n)));
            }
            Err(e) => check_err(e),
        }
    }
    let cmd = CommandMsg::RecvBitmap { name: id };
    match encode_command(&mut buf, &cmd) {
        Ok(n) => assert_eq!(decode_command(&buf[..n]), Ok((cmd, n))),
        Err(e) => check_err(e),
    }
}
