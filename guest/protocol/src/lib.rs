//! The host ⇄ guest-agent channel protocol.
//!
//! One byte channel (virtio-serial today, vsock later) carries many logical
//! *channels*. Every unit on the wire is a [`Frame`]: a fixed header with a
//! magic, a kind, a channel id and a CRC, then a bounded payload. The magic
//! and CRC let a reader resynchronise after lost or stale bytes, which
//! virtio-serial produces around host reconnects (snapshot, restore).
//!
//! Control messages ([`HostMessage`], [`GuestMessage`]) travel as JSON in
//! `Control` frames; bulk bytes (stream data, exec output, file contents)
//! travel raw in `Data`/`Stderr` frames on the channel of the request that
//! opened them. The host allocates every channel id; channel 0 carries the
//! session handshake.

mod frame;
mod messages;

pub use frame::{
    encode_raw, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAGIC, MAX_PAYLOAD,
};
pub use messages::*;

/// Bumped on any incompatible change to frames or messages. Additions an
/// older peer safely refuses or ignores (a new request, answered `Error`
/// by an agent that cannot decode it; a new field with a serde default)
/// keep it: an image snapshot keeps running the agent it was built with.
pub const PROTOCOL_VERSION: u32 = 2;

/// Bytes a sender may have in flight on one stream channel before the
/// receiver grants more with a `Window` frame.
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// Channel reserved for the `Hello`/`HelloAck` handshake.
pub const HANDSHAKE_CHANNEL: u32 = 0;
