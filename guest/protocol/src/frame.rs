//! Framing: `magic(4) kind(1) channel(4 LE) len(4 LE) crc32(4 LE) payload(len)`.
//! The CRC covers kind, channel, len and the payload.

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"EMB1";
pub const HEADER_LEN: usize = 17;
/// Upper bound on one frame's payload; larger transfers are split.
pub const MAX_PAYLOAD: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON-encoded [`crate::HostMessage`] or [`crate::GuestMessage`].
    Control = 1,
    /// Stream bytes, exec stdout, file contents.
    Data = 2,
    /// Exec stderr.
    Stderr = 3,
    /// The sender will send no more `Data` on this channel (half close).
    Eof = 4,
    /// Grants the peer `u32 LE` more bytes of `Data` on this channel.
    Window = 5,
    /// The channel is gone (connection reset, process killed, session ended).
    Reset = 6,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Control,
            2 => Self::Data,
            3 => Self::Stderr,
            4 => Self::Eof,
            5 => Self::Window,
            6 => Self::Reset,
            _ => return None,
        })
    }
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD} byte limit")]
    TooLarge(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub channel: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, channel: u32, payload: Vec<u8>) -> Self {
        Self {
            kind,
            channel,
            payload,
        }
    }

    pub fn window(channel: u32, credit: u32) -> Self {
        Self::new(FrameKind::Window, channel, credit.to_le_bytes().to_vec())
    }

    /// The credit carried by a `Window` frame; 0 for anything malformed.
    pub fn window_credit(&self) -> u32 {
        match <[u8; 4]>::try_from(self.payload.as_slice()) {
            Ok(b) if self.kind == FrameKind::Window => u32::from_le_bytes(b),
            _ => 0,
        }
    }

    /// Serialises the frame, header first, into one buffer so that a single
    /// `write_all` puts it on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(self.payload.len()));
        }
        let len = self.payload.len() as u32;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.channel.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        let crc = checksum(self.kind as u8, self.channel, len, &self.payload);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

fn checksum(kind: u8, channel: u32, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&channel.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Push-based decoder: feed it whatever the transport returned, take frames
/// out. Garbage (a torn frame from a previous session, a bad CRC) is skipped
/// byte by byte until the next valid header, and counted.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    skipped_bytes: u64,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes discarded while resynchronising, since creation.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Drops any partial frame, e.g. when the transport reconnects.
    pub fn reset(&mut self) {
        self.skipped_bytes += self.buf.len() as u64;
        self.buf.clear();
    }

    /// The next complete, valid frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let start = match find_magic(&self.buf) {
                Some(i) => i,
                None => {
                    // Keep a tail that may be the start of a magic.
                    let keep = self.buf.len().min(MAGIC.len() - 1);
                    self.discard(self.buf.len() - keep);
                    return None;
                }
            };
            self.discard(start);
            if self.buf.len() < HEADER_LEN {
                return None;
            }
            let kind = self.buf[4];
            let channel = u32::from_le_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
            let len = u32::from_le_bytes([self.buf[9], self.buf[10], self.buf[11], self.buf[12]]);
            let crc = u32::from_le_bytes([self.buf[13], self.buf[14], self.buf[15], self.buf[16]]);
            let kind = match FrameKind::from_u8(kind) {
                Some(k) if (len as usize) <= MAX_PAYLOAD => k,
                _ => {
                    self.discard(1);
                    continue;
                }
            };
            let total = HEADER_LEN + len as usize;
            if self.buf.len() < total {
                return None;
            }
            let payload = &self.buf[HEADER_LEN..total];
            if checksum(kind as u8, channel, len, payload) != crc {
                self.discard(1);
                continue;
            }
            let frame = Frame::new(kind, channel, payload.to_vec());
            self.buf.drain(..total);
            return Some(frame);
        }
    }

    fn discard(&mut self, n: usize) {
        if n > 0 {
            self.skipped_bytes += n as u64;
            self.buf.drain(..n);
        }
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Frame {
        Frame::new(FrameKind::Data, u32::from(n), vec![n; usize::from(n) * 3])
    }

    #[test]
    fn round_trips_frames_split_at_every_byte() {
        let frames: Vec<Frame> = (0..5).map(frame).collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(dec.skipped_bytes(), 0);
    }

    #[test]
    fn resynchronises_after_torn_and_corrupt_frames() {
        let good = frame(7).encode().unwrap();
        let mut torn = frame(9).encode().unwrap();
        torn.truncate(HEADER_LEN + 4);
        let mut corrupt = frame(3).encode().unwrap();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let mut wire = b"junk".to_vec();
        wire.extend(&torn);
        wire.extend(&corrupt);
        wire.extend(&good);
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        assert_eq!(dec.next_frame(), Some(frame(7)));
        assert_eq!(dec.next_frame(), None);
        assert!(dec.skipped_bytes() > 0);
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
}
