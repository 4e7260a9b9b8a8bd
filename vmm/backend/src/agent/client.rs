use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_agent_protocol::{
    self as proto, ExecRequest, Frame, FrameDecoder, FrameKind, GuestMessage, HealthReport,
    HostMessage, TtySize, HANDSHAKE_CHANNEL, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pty::{self, PtySession};
use super::stream::{self, AgentStream};
use super::AgentError;

/// Exec output kept in memory per stream; more is an error, not an OOM.
const MAX_EXEC_OUTPUT: usize = 64 << 20;
/// Frames queued towards the guest before senders wait.
const OUTBOUND_QUEUE: usize = 256;
/// Hello is repeated quickly at first (a restored agent answers within
/// milliseconds, and the first write after connect is often lost), then
/// slowly while a cold boot is still on its way.
const HELLO_FAST: Duration = Duration::from_millis(5);
const HELLO_SLOW: Duration = Duration::from_millis(50);
const FAST_PHASE: Duration = Duration::from_millis(300);

pub(super) type ChannelRx = mpsc::UnboundedReceiver<Frame>;

/// A connected, handshaken session with one guest agent.
/// Which of a process's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    _tasks: Arc<SessionTasks>,
}

/// The session's reader and writer tasks, ended when the last clone of the
/// client goes: they hold the connection, and the guest's side (QEMU's
/// socket) serves one connection at a time, so a forgotten session would
/// keep the next client (e.g. a re-attach) from ever being heard.
struct SessionTasks {
    tasks: [tokio::task::AbortHandle; 2],
    inner: Arc<Inner>,
}

impl Drop for SessionTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Streams still open see the session end, as if the guest had gone.
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

pub(super) struct Inner {
    outbound: mpsc::Sender<Frame>,
    channels: Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>,
    next_channel: AtomicU32,
    closed: AtomicBool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
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
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next_hello = started;
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
                        return Ok(Self::start(rd, wr, decoder));
                    }
                    Ok(GuestMessage::Error { kind, message }) => {
                        return Err(AgentError::Guest { kind, message })
                    }
                    _ => {}
                }
            }
        }
    }

    fn start<R, W>(rd: R, wr: W, decoder: FrameDecoder) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let inner = Arc::new(Inner {
            outbound,
            channels: Mutex::new(HashMap::new()),
            next_channel: AtomicU32::new(1),
            closed: AtomicBool::new(false),
        });
        let writer = tokio::spawn(write_loop(wr, outbound_rx)).abort_handle();
        let reader = tokio::spawn(read_loop(rd, decoder, Arc::clone(&inner))).abort_handle();
        Self {
            _tasks: Arc::new(SessionTasks {
                tasks: [writer, reader],
                inner: Arc::clone(&inner),
            }),
            inner,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Runs a process to completion and collects its output.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, AgentError> {
        let detach = req.detach;
        let (_, mut rx, _guard) = self.start_request(&HostMessage::Exec(req)).await?;
        let mut out = ExecOutput::default();
        loop {
            let frame = rx.recv().await.ok_or(AgentError::Disconnected)?;
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
        let (_, mut rx, _guard) = self.start_request(&HostMessage::Exec(req)).await?;
        loop {
            let frame = rx.recv().await.ok_or(AgentError::Disconnected)?;
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
        let (_, mut rx, _guard) = self.start_request(&HostMessage::Exec(req)).await?;
        match next_reply(&mut rx).await? {
            GuestMessage::Started { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    pub async fn write_file(
        &self,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<u64, AgentError> {
        self.write_file_from(path, contents, mode).await
    }

    /// Like [`write_file`](Self::write_file), streaming from `source`, so
    /// a file of any size crosses with bounded host memory.
    pub async fn write_file_from<R>(
        &self,
        path: &str,
        mut source: R,
        mode: u32,
    ) -> Result<u64, AgentError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let (channel, mut rx, _guard) = self
            .start_request(&HostMessage::WriteFile {
                path: path.to_string(),
                mode,
            })
            .await?;
        let mut chunk = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = source.read(&mut chunk).await.map_err(AgentError::Io)?;
            if n == 0 {
                break;
            }
            // An early error (bad path) ends the transfer at once.
            if let Ok(frame) = rx.try_recv() {
                return Err(reply_error(&frame));
            }
            self.inner
                .send(Frame::new(FrameKind::Data, channel, chunk[..n].to_vec()))
                .await?;
        }
        self.inner
            .send(Frame::new(FrameKind::Eof, channel, Vec::new()))
            .await?;
        match next_reply(&mut rx).await? {
            GuestMessage::FileWritten { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, AgentError> {
        let (_, mut rx, _guard) = self
            .start_request(&HostMessage::ReadFile {
                path: path.to_string(),
                max_bytes,
            })
            .await?;
        let mut data = Vec::new();
        let mut expected = None;
        loop {
            let frame = rx.recv().await.ok_or(AgentError::Disconnected)?;
            match frame.kind {
                FrameKind::Control => match decode_reply(&frame)? {
                    GuestMessage::FileStart { size } if size <= max_bytes => {
                        expected = Some(size);
                        data.reserve(usize::try_from(size).unwrap_or(0));
                    }
                    GuestMessage::FileStart { .. } => {
                        return Err(AgentError::TooLarge {
                            what: "file",
                            limit: max_bytes,
                        })
                    }
                    other => return Err(unexpected(other)),
                },
                FrameKind::Data => {
                    if data.len() as u64 + frame.payload.len() as u64 > max_bytes {
                        return Err(AgentError::TooLarge {
                            what: "file",
                            limit: max_bytes,
                        });
                    }
                    data.extend_from_slice(&frame.payload);
                }
                FrameKind::Eof => {
                    return match expected {
                        Some(_) => Ok(data),
                        None => Err(AgentError::Protocol("file data without FileStart".into())),
                    }
                }
                FrameKind::Reset => return Err(AgentError::Disconnected),
                _ => {}
            }
        }
    }

    /// Opens a byte stream to `127.0.0.1:port` inside the guest.
    pub async fn connect(&self, port: u16) -> Result<AgentStream, AgentError> {
        let (channel, mut rx, guard) = self.start_request(&HostMessage::Connect { port }).await?;
        match next_reply(&mut rx).await? {
            GuestMessage::Connected => {}
            other => return Err(unexpected(other)),
        }
        guard.disarm();
        Ok(stream::start(Arc::clone(&self.inner), channel, rx))
    }

    /// Runs a process on a new pseudo-terminal in the guest (24×80 unless
    /// `req.tty` says otherwise): an interactive shell, for instance. Returns
    /// once the process has started.
    pub async fn exec_pty(&self, mut req: ExecRequest) -> Result<PtySession, AgentError> {
        req.tty.get_or_insert_with(TtySize::default);
        let (channel, mut rx, guard) = self.start_request(&HostMessage::Exec(req)).await?;
        // The agent starts pumping output only after `Started`.
        let pid = match next_reply(&mut rx).await? {
            GuestMessage::Started { pid } => pid,
            other => return Err(unexpected(other)),
        };
        guard.disarm();
        Ok(pty::start(
            self.clone(),
            Arc::clone(&self.inner),
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

    /// Opens a fresh channel and sends `msg` on it. The guard forgets the
    /// channel however the request ends.
    async fn start_request(
        &self,
        msg: &HostMessage,
    ) -> Result<(u32, ChannelRx, ChannelGuard<'_>), AgentError> {
        let (channel, rx) = self.inner.open_channel()?;
        let guard = ChannelGuard::new(&self.inner, channel);
        self.inner.send_control(channel, msg).await?;
        Ok((channel, rx, guard))
    }

    pub(super) async fn request(&self, msg: &HostMessage) -> Result<GuestMessage, AgentError> {
        let (_, mut rx, _guard) = self.start_request(msg).await?;
        next_reply(&mut rx).await
    }
}

impl Inner {
    fn open_channel(&self) -> Result<(u32, ChannelRx), AgentError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(AgentError::Disconnected);
        }
        let channel = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel, tx);
        Ok((channel, rx))
    }

    pub(super) fn close_channel(&self, channel: u32) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&channel);
    }

    pub(super) async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.outbound
            .send(frame)
            .await
            .map_err(|_| AgentError::Disconnected)
    }

    /// For drop paths that cannot await.
    pub(super) fn try_send(&self, frame: Frame) {
        let _ = self.outbound.try_send(frame);
    }

    async fn send_control(&self, channel: u32, msg: &HostMessage) -> Result<(), AgentError> {
        let payload = proto::encode(msg).map_err(|e| AgentError::Protocol(e.to_string()))?;
        self.send(Frame::new(FrameKind::Control, channel, payload))
            .await
    }
}

/// Forgets a request's channel however the request ends (including a
/// dropped future), so late frames are discarded instead of piling up.
struct ChannelGuard<'a> {
    inner: &'a Inner,
    channel: u32,
    armed: bool,
}

impl<'a> ChannelGuard<'a> {
    fn new(inner: &'a Inner, channel: u32) -> Self {
        Self {
            inner,
            channel,
            armed: true,
        }
    }
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.close_channel(self.channel);
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        let bytes = match frame.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "dropping unencodable frame");
                continue;
            }
        };
        if let Err(e) = wr.write_all(&bytes).await {
            tracing::debug!(error = %e, "agent channel write failed");
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, mut decoder: FrameDecoder, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        while let Some(frame) = decoder.next_frame() {
            let tx = inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&frame.channel)
                .cloned();
            if let Some(tx) = tx {
                let _ = tx.send(frame);
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
    inner.closed.store(true, Ordering::Release);
    // Dropping every sender wakes every waiter with `Disconnected`.
    inner
        .channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
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
async fn next_reply(rx: &mut ChannelRx) -> Result<GuestMessage, AgentError> {
    loop {
        let frame = rx.recv().await.ok_or(AgentError::Disconnected)?;
        if frame.kind == FrameKind::Control {
            return decode_reply(&frame);
        }
    }
}

fn decode_reply(frame: &Frame) -> Result<GuestMessage, AgentError> {
    match proto::decode::<GuestMessage>(&frame.payload) {
        Ok(GuestMessage::Error { kind, message }) => Err(AgentError::Guest { kind, message }),
        Ok(m) => Ok(m),
        Err(e) => Err(AgentError::Protocol(e.to_string())),
    }
}

fn reply_error(frame: &Frame) -> AgentError {
    match decode_reply(frame) {
        Err(e) => e,
        Ok(m) => unexpected(m),
    }
}

fn unexpected(msg: GuestMessage) -> AgentError {
    AgentError::Protocol(format!("unexpected reply {msg:?}"))
}
