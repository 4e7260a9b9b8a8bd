//! The session's start: `Hello` until the agent answers, tolerating what
//! virtio-serial does around a (re)connect, within a garbage budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_agent_protocol::{
    self as proto, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, HANDSHAKE_CHANNEL,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::session::{Session, SessionTasks, READ_CHUNK};
use super::violation::ProtocolViolation;
use super::AgentError;

/// Garbage tolerated before the handshake completes (torn frames of an
/// earlier session); a stream of it is a guest that will never answer.
const HANDSHAKE_GARBAGE_BUDGET: u64 = 8 << 20;
/// Hello is repeated quickly at first (a restored agent answers within
/// milliseconds, and the first write after connect is often lost), then
/// slowly while a cold boot is still on its way.
const HELLO_FAST: Duration = Duration::from_millis(5);
const HELLO_SLOW: Duration = Duration::from_millis(50);
const FAST_PHASE: Duration = Duration::from_millis(300);

impl Session {
    /// Runs the handshake over `io` and starts the session. `Hello` is
    /// repeated until acknowledged, because virtio-serial may drop what is
    /// written right after the host connects.
    pub(super) async fn handshake<T>(
        io: T,
        timeout: Duration,
    ) -> Result<(Arc<Session>, SessionTasks), AgentError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let session: u64 = rand::random();
        let hello = Frame::new(
            FrameKind::Control,
            HANDSHAKE_CHANNEL,
            proto::encode(&HostMessage::Hello {
                session,
                protocol: PROTOCOL_VERSION,
            })
            .map_err(|e| AgentError::Protocol(e.to_string()))?,
        )
        .encode()
        .map_err(|e| AgentError::Protocol(e.to_string()))?;

        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next_hello = started;
        let mut hellos: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout(timeout));
            }
            if now >= next_hello {
                // A guest that is not reading yet lets the socket fill up;
                // the deadline must still hold.
                tokio::time::timeout(deadline - now, wr.write_all(&hello))
                    .await
                    .map_err(|_| AgentError::Timeout(timeout))??;
                hellos += 1;
                let interval = if now - started < FAST_PHASE {
                    HELLO_FAST
                } else {
                    HELLO_SLOW
                };
                next_hello = now + interval;
            }
            let wait = next_hello
                .min(deadline)
                .saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(wait, rd.read(&mut buf)).await {
                Err(_) => continue,
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(AgentError::Disconnected);
            }
            decoder.push(&buf[..n]);
            while let Some(frame) = decoder.next_frame() {
                if frame.kind != FrameKind::Control || frame.channel != HANDSHAKE_CHANNEL {
                    continue; // stale traffic from an earlier session
                }
                match proto::decode::<GuestMessage>(&frame.payload) {
                    Ok(GuestMessage::HelloAck {
                        session: s,
                        protocol,
                        ..
                    }) if s == session => {
                        if protocol != PROTOCOL_VERSION {
                            return Err(AgentError::Protocol(format!(
                                "agent speaks protocol {protocol}, host {PROTOCOL_VERSION}"
                            )));
                        }
                        // This Hello's answer is in; the others may follow.
                        return Ok(Self::start(rd, wr, decoder, hellos - 1));
                    }
                    Ok(GuestMessage::Error { kind, message }) => {
                        return Err(AgentError::Guest { kind, message })
                    }
                    _ => {}
                }
            }
            if decoder.skipped_bytes() > HANDSHAKE_GARBAGE_BUDGET {
                return Err(AgentError::Violation(
                    ProtocolViolation::GarbageBeforeHandshake {
                        bytes: decoder.skipped_bytes(),
                    },
                ));
            }
        }
    }
}
