//! Why a session with a guest agent ended. A guest that breaks the
//! protocol loses its session (never the host's memory or a worker), and
//! the reason is kept so the daemon can say what the guest did.

use ember_agent_protocol::FrameError;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The connection closed: the VM stopped, or the client was dropped.
    Closed,
    /// The host ended the session because the guest broke the protocol.
    Violation(ProtocolViolation),
}

/// What a guest did that a well-behaved agent never does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("sent stream data beyond its window on channel {channel}: {bytes} bytes with {credit} bytes of credit left")]
    BeyondWindow {
        channel: u32,
        bytes: usize,
        credit: u64,
    },
    #[error("sent a bad frame after the handshake: {0}")]
    BadFrame(FrameError),
    #[error(
        "sent an oversized control message of {bytes} bytes on channel {channel} (at most {limit})"
    )]
    OversizedControl {
        channel: u32,
        bytes: usize,
        limit: usize,
    },
    #[error("sent an undecodable control message on channel {channel}: {error}")]
    UndecodableControl { channel: u32, error: String },
    #[error("flooded channel {channel} beyond its bound of {frames} unread frames")]
    Flood { channel: u32, frames: usize },
    #[error("sent a frame on channel {channel}, which the host never opened")]
    UnknownChannel { channel: u32 },
    #[error("sent more frames on the handshake channel than the host sent Hellos")]
    StrayHandshake,
    #[error("sent {bytes} bytes of garbage before the handshake completed")]
    GarbageBeforeHandshake { bytes: u64 },
}
