use super::*;

fn frame(n: u8) -> Frame {
    Frame::new(FrameKind::Data, u32::from(n), vec![n; usize::from(n) * 3])
}

fn decode_all(dec: &mut FrameDecoder) -> Vec<Frame> {
    std::iter::from_fn(|| dec.next_frame()).collect()
}

#[test]
fn round_trips_frames_split_at_every_byte() {
    let frames: Vec<Frame> = (0..5).map(frame).collect();
    let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    for b in &wire {
        dec.push(std::slice::from_ref(b));
        got.extend(decode_all(&mut dec));
    }
    assert_eq!(got, frames);
    assert_eq!(dec.skipped_bytes(), 0);
}

#[test]
fn resynchronises_after_torn_and_corrupt_frames() {
    let good = frame(7).encode().unwrap();
    let mut torn = frame(9).encode().unwrap();
    torn.truncate(HEADER_LEN - 3);
    let mut bad_header = frame(5).encode().unwrap();
    bad_header[6] ^= 0x40; // the channel id, covered by the header CRC
    let mut bad_payload = frame(3).encode().unwrap();
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0xff;
    let mut wire = b"junk".to_vec();
    wire.extend(&torn);
    wire.extend(&bad_header);
    wire.extend(&bad_payload);
    wire.extend(&good);
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    assert_eq!(decode_all(&mut dec), vec![frame(7)]);
    assert!(dec.skipped_bytes() > 0);
}

#[test]
fn strict_decoding_rejects_anything_but_frames() {
    let mut dec = FrameDecoder::new();
    dec.push(&frame(2).encode().unwrap()[..10]);
    assert_eq!(dec.next_frame_strict(), Ok(None), "a partial frame waits");
    dec.push(&frame(2).encode().unwrap()[10..]);
    assert_eq!(dec.next_frame_strict(), Ok(Some(frame(2))));
    assert_eq!(dec.next_frame_strict(), Ok(None));

    dec.push(b"xEMB2");
    assert_eq!(dec.next_frame_strict(), Err(FrameError::NoMagic));

    let mut dec = FrameDecoder::new();
    let mut bad = frame(4).encode().unwrap();
    bad[HEADER_LEN] ^= 1;
    dec.push(&bad);
    assert_eq!(
        dec.next_frame_strict(),
        Err(FrameError::BadPayload {
            channel: 4,
            len: 12
        })
    );

    let mut dec = FrameDecoder::new();
    let mut bad = frame(4).encode().unwrap();
    bad[10] = 0xff; // len beyond MAX_PAYLOAD
    dec.push(&bad);
    assert_eq!(dec.next_frame_strict(), Err(FrameError::BadHeader));
}

/// Garbage built to be expensive: the magic everywhere, headers that pass
/// their own CRC and announce the largest payload (which then fails its
/// CRC), headers nested inside those payloads, and headers that fail.
fn adversarial_garbage(size: usize) -> Vec<u8> {
    // A valid header claiming MAX_PAYLOAD whose payload CRC is wrong.
    let mut fake = encode_raw(2, 9, &vec![0u8; MAX_PAYLOAD]).unwrap();
    fake.truncate(HEADER_LEN);
    fake[HEADER_LEN - 5] ^= 1;
    let crc = crc32fast::hash(&fake[..HEADER_LEN - 4]);
    fake[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    // A header that fails its own CRC.
    let mut broken = encode_raw(1, 3, b"{}").unwrap();
    broken[5] ^= 1;
    let mut out = Vec::with_capacity(size + HEADER_LEN);
    let mut i = 0u32;
    while out.len() < size {
        match i % 3 {
            0 => out.extend(&fake),
            1 => out.extend_from_slice(&MAGIC),
            _ => out.extend(&broken),
        }
        i += 1;
    }
    out.truncate(size);
    out
}

#[test]
fn hostile_garbage_costs_linear_work() {
    let mut work = Vec::new();
    for size in [1usize << 20, 4 << 20] {
        let garbage = adversarial_garbage(size);
        let mut dec = FrameDecoder::new();
        // Fed in transport-sized reads, as the readers do.
        for chunk in garbage.chunks(64 * 1024) {
            dec.push(chunk);
            assert!(decode_all(&mut dec).is_empty());
        }
        // A real frame after the garbage is still found once whatever the
        // last fake header announced has gone by.
        dec.push(&vec![0u8; MAX_PAYLOAD + HEADER_LEN]);
        dec.push(&frame(6).encode().unwrap());
        assert_eq!(decode_all(&mut dec), vec![frame(6)]);
        let input = (size + MAX_PAYLOAD + HEADER_LEN) as u64;
        assert!(
            dec.crc_bytes() <= 6 * input,
            "{} bytes CRC-ed for {input} bytes of input",
            dec.crc_bytes()
        );
        assert!(dec.buffered() < HEADER_LEN);
        work.push(dec.crc_bytes());
    }
    // Four times the input, about four times the work (not sixteen).
    assert!(work[1] <= 5 * work[0], "{work:?}");
}

#[test]
fn rejects_oversized_payloads() {
    let f = Frame::new(FrameKind::Data, 1, vec![0; MAX_PAYLOAD + 1]);
    assert!(matches!(f.encode(), Err(FrameError::TooLarge(_))));
}

#[test]
fn window_credit_round_trips() {
    assert_eq!(Frame::window(4, 12345).window_credit(), 12345);
    assert_eq!(Frame::new(FrameKind::Data, 4, vec![1]).window_credit(), 0);
}
