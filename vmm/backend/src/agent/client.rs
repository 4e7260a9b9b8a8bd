//! The operations a host performs on a guest through its agent: exec,
//! connect, health, restore notification. Each opens a channel on the
//! session (`session.rs`) and reads its answer there; files are in
//! `files.rs`.

use std::sync::Arc;
use std::time::Duration;

use ember_agent_protocol::{
    self as proto, ExecRequest, Frame, FrameKind, GuestMessage, HealthReport, HostMessage, TtySize,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::pty::{self, PtySession};
use super::session::{ChannelRx, Flow, Session, SessionTasks};
use super::stream::{self, AgentStream};
use super::violation::{ProtocolViolation, SessionEnd};
use super::AgentError;

/// Exec output kept in memory per stream; more is an error, not an OOM.
const MAX_EXEC_OUTPUT: usize = 64 << 20;

/// Which of a process's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A connected, handshaken session with one guest agent.
#[derive(Clone)]
pub struct AgentClient {
    pub(super) session: Arc<Session>,
    _tasks: Arc<SessionTasks>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How the guest's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The code a shell (and Docker) reports: the exit code, or 128 plus
    /// the signal that killed the process (0 for neither, which an agent
    /// never reports for a process it reaped).
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 0,
        }
    }
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl AgentClient {
    /// Runs the handshake over `io` and starts the session. `Hello` is
    /// repeated until acknowledged, because virtio-serial may drop what is
    /// written right after the host connects.
    pub async fn handshake<T>(io: T, timeout: Duration) -> Result<Self, AgentError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (session, tasks) = Session::handshake(io, timeout).await?;
        Ok(Self {
            session,
            _tasks: Arc::new(tasks),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.session.ended().is_some()
    }

    /// How the session ended, or `None` while it runs.
    pub fn ended(&self) -> Option<SessionEnd> {
        self.session.ended()
    }

    /// What the guest did to lose its session, if that is how it ended.
    pub fn violation(&self) -> Option<ProtocolViolation> {
        match self.session.ended() {
            Some(SessionEnd::Violation(v)) => Some(v),
            _ => None,
        }
    }

    /// Waits until the session ends, and says how.
    pub async fn wait_ended(&self) -> SessionEnd {
        self.session.wait_ended().await
    }

    /// Runs a process to completion and collects its output.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, AgentError> {
        let detach = req.detach;
        let (_, mut rx, _guard) = self.start_exec(req).await?;
        let mut out = ExecOutput::default();
        loop {
            let frame = rx.recv().await?;
            match frame.kind {
                FrameKind::Data => append_bounded(&mut out.stdout, &frame.payload, "stdout")?,
                FrameKind::Stderr => append_bounded(&mut out.stderr, &frame.payload, "stderr")?,
                FrameKind::Control => match decode_reply(&frame)? {
                    GuestMessage::Started { .. } if detach => return Ok(out),
                    GuestMessage::Started { .. } => {}
                    GuestMessage::Exited { code, signal } => {
                        out.code = code;
                        out.signal = signal;
                        return Ok(out);
                    }
                    other => return Err(unexpected(other)),
                },
                FrameKind::Reset => return Err(AgentError::Disconnected),
                _ => {}
            }
        }
    }

    /// Runs a process to completion, handing each piece of its output to
    /// `on_output` as it arrives instead of collecting it: build steps log
    /// live and may print without bound. Returns the exit code and signal.
    pub async fn exec_streaming<F>(
        &self,
        req: ExecRequest,
        mut on_output: F,
    ) -> Result<(Option<i32>, Option<i32>), AgentError>
    where
        F: FnMut(OutputStream, &[u8]) + Send,
    {
        let (_, mut rx, _guard) = self.start_exec(req).await?;
        loop {
            let frame = rx.recv().await?;
            match frame.kind {
                FrameKind::Data => on_output(OutputStream::Stdout, &frame.payload),
                FrameKind::Stderr => on_output(OutputStream::Stderr, &frame.payload),
                FrameKind::Control => match decode_reply(&frame)? {
                    GuestMessage::Started { .. } => {}
                    GuestMessage::Exited { code, signal } => return Ok((code, signal)),
                    other => return Err(unexpected(other)),
                },
                FrameKind::Reset => return Err(AgentError::Disconnected),
                _ => {}
            }
        }
    }

    /// Convenience: `sh -c SCRIPT`, collected.
    pub async fn sh(&self, script: &str) -> Result<ExecOutput, AgentError> {
        self.exec(ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
    }

    /// Starts a process in the background; returns its pid.
    pub async fn spawn_detached(&self, mut req: ExecRequest) -> Result<u32, AgentError> {
        req.detach = true;
        let (_, mut rx, _guard) = self.start_exec(req).await?;
        match next_reply(&mut rx).await? {
            GuestMessage::Started { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until the guest's main process (`ExecRequest::main`) has
    /// ended, however long that takes; at once if it already has. Ask
    /// again on every new session: a wait does not outlive its session.
    /// The session ending (the VM suspended or stopped) is
    /// `AgentError::Disconnected`; a guest without a main process (or an
    /// agent too old to know one) answers `AgentError::Guest`.
    pub async fn wait_main_exit(&self) -> Result<ExitStatus, AgentError> {
        match self.request(&HostMessage::WaitMainExit).await? {
            GuestMessage::Exited { code, signal } => Ok(ExitStatus { code, signal }),
            other => Err(unexpected(other)),
        }
    }

    /// Opens a byte stream to `127.0.0.1:port` inside the guest.
    pub async fn connect(&self, port: u16) -> Result<AgentStream, AgentError> {
        let (channel, mut rx, guard) = self
            .start_request(Flow::Credited, &HostMessage::Connect { port })
            .await?;
        match next_reply(&mut rx).await? {
            GuestMessage::Connected => {}
            other => return Err(unexpected(other)),
        }
        guard.disarm();
        Ok(stream::start(Arc::clone(&self.session), channel, rx))
    }

    /// Waits for a guest process to connect to the metadata address
    /// (169.254.169.254:80) and returns that connection. Callers keep a few
    /// of these waiting (the agent holds at most
    /// [`proto::MAX_METADATA_ACCEPTS`]); dropping the future withdraws it.
    pub async fn accept_metadata(&self) -> Result<AgentStream, AgentError> {
        let (channel, mut rx, guard) = self
            .start_request(Flow::Credited, &HostMessage::AcceptMetadata)
            .await?;
        // Withdrawn if dropped while waiting, so the agent never hands a
        // guest connection to a channel nobody reads.
        let withdraw = ResetOnDrop {
            session: &self.session,
            channel,
        };
        match next_reply(&mut rx).await? {
            GuestMessage::Connected => {}
            other => return Err(unexpected(other)),
        }
        std::mem::forget(withdraw);
        guard.disarm();
        Ok(stream::start(Arc::clone(&self.session), channel, rx))
    }

    /// Runs a process on a new pseudo-terminal in the guest (24×80 unless
    /// `req.tty` says otherwise): an interactive shell, for instance. Returns
    /// once the process has started.
    pub async fn exec_pty(&self, mut req: ExecRequest) -> Result<PtySession, AgentError> {
        req.tty.get_or_insert_with(TtySize::default);
        let (channel, mut rx, guard) = self.start_exec(req).await?;
        // The agent starts pumping output only after `Started`.
        let pid = match next_reply(&mut rx).await? {
            GuestMessage::Started { pid } => pid,
            other => return Err(unexpected(other)),
        };
        guard.disarm();
        Ok(pty::start(
            self.clone(),
            Arc::clone(&self.session),
            channel,
            rx,
            pid,
        ))
    }

    pub async fn health(&self) -> Result<HealthReport, AgentError> {
        match self.request(&HostMessage::Health).await? {
            GuestMessage::Health(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the agent it was restored: step the clock to now, reseed the RNG.
    pub async fn notify_restored(&self) -> Result<(), AgentError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut entropy = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut entropy);
        let msg = HostMessage::Restored {
            realtime_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            realtime_nanos: now.subsec_nanos(),
            entropy: entropy.to_vec(),
        };
        match self.request(&msg).await? {
            GuestMessage::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// An `Exec`, on a channel whose bound fits what it will carry.
    async fn start_exec(
        &self,
        req: ExecRequest,
    ) -> Result<(u32, ChannelRx, ChannelGuard<'_>), AgentError> {
        let flow = if req.tty.is_some() {
            Flow::Credited
        } else if req.detach {
            Flow::Reply
        } else {
            Flow::Bulk
        };
        self.start_request(flow, &HostMessage::Exec(req)).await
    }

    /// Opens a fresh channel and sends `msg` on it. The guard forgets the
    /// channel however the request ends.
    pub(super) async fn start_request(
        &self,
        flow: Flow,
        msg: &HostMessage,
    ) -> Result<(u32, ChannelRx, ChannelGuard<'_>), AgentError> {
        let (channel, rx) = self.session.open_channel(flow)?;
        let guard = ChannelGuard {
            session: &self.session,
            channel,
            armed: true,
        };
        self.session.send_control(channel, msg).await?;
        Ok((channel, rx, guard))
    }

    pub(super) async fn request(&self, msg: &HostMessage) -> Result<GuestMessage, AgentError> {
        let (_, mut rx, _guard) = self.start_request(Flow::Reply, msg).await?;
        next_reply(&mut rx).await
    }

    pub(super) async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.session.send(frame).await
    }
}

/// Forgets a request's channel however the request ends (including a
/// dropped future), so late frames are discarded instead of piling up.
pub(super) struct ChannelGuard<'a> {
    session: &'a Session,
    channel: u32,
    armed: bool,
}

impl ChannelGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.close_channel(self.channel);
        }
    }
}

/// Resets a channel the guest may still answer on.
struct ResetOnDrop<'a> {
    session: &'a Session,
    channel: u32,
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.session
            .try_send(Frame::new(FrameKind::Reset, self.channel, Vec::new()));
    }
}

fn append_bounded(buf: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), AgentError> {
    if buf.len() + bytes.len() > MAX_EXEC_OUTPUT {
        return Err(AgentError::TooLarge {
            what,
            limit: MAX_EXEC_OUTPUT as u64,
        });
    }
    buf.extend_from_slice(bytes);
    Ok(())
}

/// The next control message on a request's channel; bulk frames that
/// precede it (none, for the requests that use this) are skipped.
pub(super) async fn next_reply(rx: &mut ChannelRx) -> Result<GuestMessage, AgentError> {
    loop {
        let frame = rx.recv().await?;
        if frame.kind == FrameKind::Control {
            return decode_reply(&frame);
        }
    }
}

pub(super) fn decode_reply(frame: &Frame) -> Result<GuestMessage, AgentError> {
    match proto::decode::<GuestMessage>(&frame.payload) {
        Ok(GuestMessage::Error { kind, message }) => Err(AgentError::Guest { kind, message }),
        Ok(m) => Ok(m),
        Err(e) => Err(AgentError::Protocol(e.to_string())),
    }
}

pub(super) fn unexpected(msg: GuestMessage) -> AgentError {
    AgentError::Protocol(format!("unexpected reply {msg:?}"))
}
