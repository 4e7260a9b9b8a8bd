//! Framing: `magic(4) kind(1) channel(4 LE) len(4 LE) payload_crc(4 LE)
//! header_crc(4 LE) payload(len)`.
//!
//! The payload CRC covers kind, channel, len and the payload; the header
//! CRC covers the 17 bytes before it. The header CRC is what keeps
//! resynchronisation linear: a candidate header is accepted or rejected
//! with a fixed amount of work, and only a header that passes gets its
//! payload CRC-ed, once.

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"EMB2";
pub const HEADER_LEN: usize = 21;
/// Upper bound on one frame's payload; larger transfers are split.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Bytes of the header covered by its own CRC.
const HEADER_CRC_AT: usize = HEADER_LEN - 4;

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

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD} byte limit")]
    TooLarge(usize),
    #[error("bytes that are not a frame header where a frame must start")]
    NoMagic,
    #[error("a frame header that fails its checksum or bounds")]
    BadHeader,
    #[error("a frame of {len} bytes on channel {channel} that fails its CRC")]
    BadPayload { channel: u32, len: usize },
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
        encode_raw(self.kind as u8, self.channel, &self.payload)
    }
}

/// Encodes a frame with any kind byte. Public for tests (and the test-only
/// hostile agent) that need well-formed frames of kinds no peer sends.
pub fn encode_raw(kind: u8, channel: u32, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&channel.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload_checksum(kind, channel, len, payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[..HEADER_CRC_AT]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn payload_checksum(kind: u8, channel: u32, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&channel.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A header that passed its checksum and bounds.
struct Header {
    kind: FrameKind,
    channel: u32,
    len: usize,
    payload_crc: u32,
}

/// Push-based decoder: feed it whatever the transport returned, take frames
/// out.
///
/// [`next_frame`](Self::next_frame) tolerates garbage (a torn frame from a
/// previous session): it searches for the magic, checks the header's own
/// CRC before anything else, and when a payload fails its CRC it skips the
/// whole frame the header announced rather than one byte. Each input byte
/// is therefore CRC-ed at most a small constant number of times, however
/// hostile the input. [`next_frame_strict`](Self::next_frame_strict) is
/// for a peer that is past its handshake: anything but a valid frame at
/// the current position is an error.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`: consuming advances it, so a
    /// long run of garbage is not shifted once per skipped byte.
    pos: usize,
    skipped_bytes: u64,
    crc_bytes: u64,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes discarded while resynchronising, since creation.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Bytes run through a CRC, since creation: the decoder's work, which
    /// stays within a constant factor of its input.
    pub fn crc_bytes(&self) -> u64 {
        self.crc_bytes
    }

    /// Bytes received but not yet returned as frames or skipped.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Drops any partial frame, e.g. when the transport reconnects.
    pub fn reset(&mut self) {
        self.skipped_bytes += self.buffered() as u64;
        self.buf.clear();
        self.pos = 0;
    }

    /// The next complete, valid frame, or `None` until more bytes arrive.
    /// Garbage is skipped and counted.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(start) = find_magic(rest) else {
                // Keep a tail that may be the start of a magic.
                let keep = rest.len().min(MAGIC.len() - 1);
                self.skip(rest.len() - keep);
                return None;
            };
            self.skip(start);
            if self.buffered() < HEADER_LEN {
                return None;
            }
            let Some(header) = self.header() else {
                self.skip(1);
                continue;
            };
            match self.payload(&header) {
                None => return None,
                Some(Ok(frame)) => return Some(frame),
                // The header was genuine enough to pass its own CRC: skip
                // what it announced, so its payload is never CRC-ed again.
                Some(Err(_)) => self.skip(HEADER_LEN + header.len),
            }
        }
    }

    /// Like [`next_frame`](Self::next_frame), but the bytes at the current
    /// position must be a valid frame (or its beginning).
    pub fn next_frame_strict(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.pos..];
        let prefix = rest.len().min(MAGIC.len());
        if rest[..prefix] != MAGIC[..prefix] {
            return Err(FrameError::NoMagic);
        }
        if rest.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = self.header().ok_or(FrameError::BadHeader)?;
        self.payload(&header).transpose()
    }

    /// Parses the header at `pos` (which starts with the magic and is
    /// complete); `None` if it fails its bounds or its CRC.
    fn header(&mut self) -> Option<Header> {
        let b: [u8; HEADER_LEN] = self.buf[self.pos..self.pos + HEADER_LEN].try_into().ok()?;
        let kind = FrameKind::from_u8(b[4])?;
        let len = le32(&b, 9) as usize;
        if len > MAX_PAYLOAD {
            return None;
        }
        self.crc_bytes += HEADER_CRC_AT as u64;
        if crc32fast::hash(&b[..HEADER_CRC_AT]) != le32(&b, HEADER_CRC_AT) {
            return None;
        }
        Some(Header {
            kind,
            channel: le32(&b, 5),
            len,
            payload_crc: le32(&b, 13),
        })
    }

    /// The frame `header` announces: `None` until all of it has arrived,
    /// then the frame (consumed) or its CRC failure (not consumed).
    fn payload(&mut self, header: &Header) -> Option<Result<Frame, FrameError>> {
        let total = HEADER_LEN + header.len;
        if self.buffered() < total {
            return None;
        }
        self.crc_bytes += 9 + header.len as u64;
        let payload = &self.buf[self.pos + HEADER_LEN..self.pos + total];
        let crc = payload_checksum(
            header.kind as u8,
            header.channel,
            header.len as u32,
            payload,
        );
        if crc != header.payload_crc {
            return Some(Err(FrameError::BadPayload {
                channel: header.channel,
                len: header.len,
            }));
        }
        let frame = Frame::new(header.kind, header.channel, payload.to_vec());
        self.pos += total;
        Some(Ok(frame))
    }

    fn skip(&mut self, n: usize) {
        self.skipped_bytes += n as u64;
        self.pos += n;
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
