//! Host side of the guest-agent channel: one [`AgentClient`] per connection
//! (per VM process). Requests get a fresh channel id; a reader task routes
//! incoming frames to the channel's waiter, under bounds (`session.rs`), and
//! ends the session when the guest breaks the protocol.

mod client;
mod files;
mod handshake;
mod pty;
mod session;
mod stream;
mod violation;

pub use client::{AgentClient, ExecOutput, ExitStatus, OutputStream};
pub use ember_agent_protocol::{ErrorKind, ExecRequest, HealthReport, TtySize};
pub use pty::{PtyControl, PtyExit, PtySession};
pub use stream::AgentStream;
pub use violation::{ProtocolViolation, SessionEnd};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent connection is closed")]
    Disconnected,
    #[error("no answer from the agent within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{kind}: {message}")]
    Guest { kind: ErrorKind, message: String },
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
    /// The session is over: the guest broke the protocol. Every pending and
    /// later request on the client fails with this.
    #[error("the guest broke the agent protocol: {0}")]
    Violation(ProtocolViolation),
    #[error("{what} exceeds the {limit} byte limit")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("agent channel i/o: {0}")]
    Io(#[from] std::io::Error),
}
