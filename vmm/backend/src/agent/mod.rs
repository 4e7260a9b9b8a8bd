//! Host side of the guest-agent channel: one [`AgentClient`] per connection
//! (per VM process). Requests get a fresh channel id; a reader task routes
//! incoming frames to the channel's waiter.

mod client;
mod pty;
mod stream;

pub use client::{AgentClient, ExecOutput, OutputStream};
pub use ember_agent_protocol::{ExecRequest, HealthReport, TtySize};
pub use pty::{PtyControl, PtyExit, PtySession};
pub use stream::AgentStream;

use ember_agent_protocol::ErrorKind;

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
    #[error("{what} exceeds the {limit} byte limit")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("agent channel i/o: {0}")]
    Io(#[from] std::io::Error),
}
