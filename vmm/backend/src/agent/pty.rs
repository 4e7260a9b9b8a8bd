//! An interactive process on a guest pseudo-terminal (`ember shell`): its
//! terminal is a byte stream to the host, plus resize, signal and the exit
//! status on the side.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ember_agent_protocol::{self as proto, ErrorKind, Frame, GuestMessage, HostMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::client::AgentClient;
use super::session::{ChannelRx, Session};
use super::stream::{self, AgentStream};
use super::AgentError;

/// How a terminal's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtyExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What the channel said last: `None` while the process runs.
#[derive(Debug, Clone)]
enum Outcome {
    Exited(PtyExit),
    Failed { kind: ErrorKind, message: String },
    Garbled(String),
}

/// A process running on a guest terminal.
///
/// Reading yields the terminal's output (stdout and stderr, as a terminal
/// mixes them); writing types into it. Shutting the write side down types
/// the terminal's EOF character (^D). After the process exits, the
/// remaining output can still be read, then EOF. Keep reading: output is
/// flow-controlled, so a caller that stops reading stalls the process (and
/// [`PtyControl::wait`]) once the buffers are full. Dropping the session
/// while output still arrives hangs the terminal up (SIGHUP in the guest).
pub struct PtySession {
    stream: AgentStream,
    control: PtyControl,
}

/// Resize, signal and wait on a terminal; cheap to clone, so a SIGWINCH
/// handler and the task that waits for the exit can each hold one.
#[derive(Clone)]
pub struct PtyControl {
    client: AgentClient,
    channel: u32,
    pid: u32,
    exit: watch::Receiver<Option<Outcome>>,
}

pub(super) fn start(
    client: AgentClient,
    session: Arc<Session>,
    channel: u32,
    rx: ChannelRx,
    pid: u32,
) -> PtySession {
    let (exit_tx, exit) = watch::channel(None);
    let stream = stream::start_with_control(session, channel, rx, move |frame: &Frame| {
        let outcome = match proto::decode::<GuestMessage>(&frame.payload) {
            Ok(GuestMessage::Exited { code, signal }) => Outcome::Exited(PtyExit { code, signal }),
            Ok(GuestMessage::Error { kind, message }) => Outcome::Failed { kind, message },
            Ok(other) => Outcome::Garbled(format!("unexpected message {other:?}")),
            Err(e) => Outcome::Garbled(e.to_string()),
        };
        // The first word is final.
        exit_tx.send_if_modified(|slot| slot.is_none() && slot.replace(outcome).is_none());
    });
    PtySession {
        stream,
        control: PtyControl {
            client,
            channel,
            pid,
            exit,
        },
    }
}

impl PtySession {
    pub fn control(&self) -> &PtyControl {
        &self.control
    }

    /// The terminal byte stream and the control handle, to use apart (e.g.
    /// `tokio::io::split` the stream while another task resizes).
    pub fn into_parts(self) -> (AgentStream, PtyControl) {
        (self.stream, self.control)
    }

    pub fn pid(&self) -> u32 {
        self.control.pid
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.control.resize(rows, cols).await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.control.signal(signal).await
    }

    /// See [`PtyControl::wait`]. Reading the stream meanwhile is up to the
    /// caller (e.g. via [`into_parts`](Self::into_parts)).
    pub async fn wait(&self) -> Result<PtyExit, AgentError> {
        self.control.wait().await
    }
}

impl PtyControl {
    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sets the terminal size; the guest kernel sends SIGWINCH to the
    /// terminal's foreground job.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.ok(&HostMessage::Resize {
            target: self.channel,
            rows,
            cols,
        })
        .await
    }

    /// Sends `signal` to the process's group (the session's first job). A
    /// typed ^C (byte 3) reaches whatever job is in the foreground instead.
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.ok(&HostMessage::Signal {
            target: self.channel,
            signal,
        })
        .await
    }

    /// Waits for the process to exit. Every byte of output it produced
    /// has been queued on the stream by then.
    pub async fn wait(&self) -> Result<PtyExit, AgentError> {
        let mut exit = self.exit.clone();
        let outcome = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.client.session.end_error())?
            .clone();
        match outcome {
            Some(Outcome::Exited(e)) => Ok(e),
            Some(Outcome::Failed { kind, message }) => Err(AgentError::Guest { kind, message }),
            Some(Outcome::Garbled(m)) => Err(AgentError::Protocol(m)),
            None => Err(self.client.session.end_error()),
        }
    }

    async fn ok(&self, msg: &HostMessage) -> Result<(), AgentError> {
        match self.client.request(msg).await? {
            GuestMessage::Ok => Ok(()),
            other => Err(AgentError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

impl AsyncRead for PtySession {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PtySession {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
