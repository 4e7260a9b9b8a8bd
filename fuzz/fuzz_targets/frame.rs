//! The agent channel, host side: the frame decoder over a hostile byte
//! stream (both modes, in transport-sized pushes), and the control-message
//! decode the host runs on every `Control` payload a guest sends
//! (`vmm/backend/src/agent` calls `decode::<GuestMessage>` on each one).
#![no_main]

use ember_agent_protocol::{
    decode, encode, encode_raw, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage,
    HEADER_LEN, MAX_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    // Resynchronising mode: whatever comes, the work stays linear and what
    // is handed out re-encodes to a frame that decodes to itself.
    let mut dec = FrameDecoder::new();
    let mut pushes = 0;
    for piece in rest.chunks(chunk) {
        pushes += 1;
        dec.push(piece);
        while let Some(frame) = dec.next_frame() {
            check_frame(&frame);
        }
    }
    // A waiting header is checked again on every push: one header's worth
    // per push on top of the per-byte work.
    assert!(dec.crc_bytes() <= 6 * rest.len() as u64 + HEADER_LEN as u64 * (pushes + 1));

    // Strict mode stops at the first error, as a session does.
    let mut strict = FrameDecoder::new();
    'strict: for piece in rest.chunks(chunk) {
        strict.push(piece);
        loop {
            match strict.next_frame_strict() {
                Ok(Some(frame)) => check_frame(&frame),
                Ok(None) => break,
                Err(_) => break 'strict,
            }
        }
    }

    // The input as one control payload, raw and inside a valid frame.
    check_control(rest);
    if let Ok(bytes) = encode_raw(FrameKind::Control as u8, 7, rest) {
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        let frame = dec.next_frame();
        assert_eq!(frame.as_ref().map(|f| f.payload.as_slice()), Some(rest));
    }
});

fn check_frame(frame: &Frame) {
    assert!(frame.payload.len() <= MAX_PAYLOAD);
    let bytes = frame.encode().expect("a decoded frame re-encodes");
    let mut dec = FrameDecoder::new();
    dec.push(&bytes);
    assert_eq!(dec.next_frame_strict(), Ok(Some(frame.clone())));
    if frame.kind == FrameKind::Control {
        check_control(&frame.payload);
    }
}

/// A message that decodes survives its own encoding unchanged.
fn check_control(payload: &[u8]) {
    if let Ok(msg) = decode::<GuestMessage>(payload) {
        let again = encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode::<GuestMessage>(&again).ok(), Some(msg));
    }
    if let Ok(msg) = decode::<HostMessage>(payload) {
        let again = encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode::<HostMessage>(&again).ok(), Some(msg));
    }
}
