//! The session multiplexer: the reader task that routes the guest's frames
//! to per-request channels, the writer task, and the bounds that keep a
//! hostile guest from taking more than its share of the host. The
//! handshake that starts a session is in `handshake.rs`.
//!
//! Every channel's queue is bounded. What happens at the bound depends on
//! what the channel carries ([`Flow`]): stream data must stay within the
//! window the host granted, replies are a few frames, and unflow-controlled
//! output (exec, file reads) holds the reader back until the request's
//! owner catches up. Anything a correct agent never sends ends the session
//! with a [`ProtocolViolation`]; pending requests fail with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_agent_protocol::{
    self as proto, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, HANDSHAKE_CHANNEL,
    INITIAL_WINDOW,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::violation::{ProtocolViolation, SessionEnd};
use super::AgentError;

/// Largest control message a guest may send: replies are small, so this is
/// well under what one frame can carry.
pub(super) const MAX_GUEST_CONTROL: usize = 64 * 1024;
/// Frames queued towards the guest before senders wait.
const OUTBOUND_QUEUE: usize = 256;
/// Unread frames per channel, by [`Flow`]. A stream's bytes are bounded by
/// its window; its frame count by this (a window of one-byte frames would
/// otherwise cost a hundred times the window in bookkeeping).
const REPLY_QUEUE: usize = 8;
const BULK_QUEUE: usize = 32;
const CREDITED_QUEUE: usize = 4096;
/// Closed streams whose window is still enforced: a guest may finish what
/// it was granted after the host hung up, but no more. The oldest are
/// forgotten (their late frames then only cost the reader's time).
const CLOSED_STREAMS: usize = 256;
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// What a channel carries, which decides its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// A request answered by one control message (health, write_file, …).
    Reply,
    /// Output the agent sends without flow control (exec pipes, read_file):
    /// a full queue makes the reader wait for the request's owner.
    Bulk,
    /// Stream and terminal data under `Window` credit.
    Credited,
}

impl Flow {
    fn capacity(self) -> usize {
        match self {
            Flow::Reply => REPLY_QUEUE,
            Flow::Bulk => BULK_QUEUE,
            Flow::Credited => CREDITED_QUEUE,
        }
    }
}

/// Bytes of stream data the guest may still send on one channel: the
/// window the host granted minus what arrived.
pub(super) struct Credit(AtomicU64);

impl Credit {
    fn take(&self, channel: u32, n: usize) -> Result<(), ProtocolViolation> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                c.checked_sub(n as u64)
            })
            .map(|_| ())
            .map_err(|credit| ProtocolViolation::BeyondWindow {
                channel,
                bytes: n,
                credit,
            })
    }
}

struct Route {
    tx: mpsc::Sender<Frame>,
    flow: Flow,
    credit: Option<Arc<Credit>>,
}

#[derive(Default)]
struct Routes {
    open: HashMap<u32, Route>,
    closed_streams: HashMap<u32, Arc<Credit>>,
    closed_order: VecDeque<u32>,
}

impl Routes {
    fn remove(&mut self, channel: u32) {
        let Some(route) = self.open.remove(&channel) else {
            return;
        };
        if let Some(credit) = route.credit {
            if self.closed_order.len() >= CLOSED_STREAMS {
                if let Some(oldest) = self.closed_order.pop_front() {
                    self.closed_streams.remove(&oldest);
                }
            }
            self.closed_streams.insert(channel, credit);
            self.closed_order.push_back(channel);
        }
    }
}

pub(super) struct Session {
    outbound: mpsc::Sender<Frame>,
    routes: Mutex<Routes>,
    next_channel: AtomicU32,
    end: watch::Sender<Option<SessionEnd>>,
}

/// One request's inbound frames.
pub(super) struct ChannelRx {
    rx: mpsc::Receiver<Frame>,
    credit: Option<Arc<Credit>>,
    session: Arc<Session>,
}

impl ChannelRx {
    /// The next frame; once the session is over, why it ended.
    pub(super) async fn recv(&mut self) -> Result<Frame, AgentError> {
        match self.rx.recv().await {
            Some(frame) => Ok(frame),
            None => Err(self.session.end_error()),
        }
    }

    pub(super) fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }

    /// Records that the host granted the guest `n` more bytes; call before
    /// the `Window` frame goes out, so the guest can never be early.
    pub(super) fn grant(&self, n: u32) {
        if let Some(credit) = &self.credit {
            credit.0.fetch_add(u64::from(n), Ordering::AcqRel);
        }
    }
}

/// The session's reader and writer tasks, ended when the last clone of the
/// client goes: they hold the connection, and the guest's side (QEMU's
/// socket) serves one connection at a time, so a forgotten session would
/// keep the next client (e.g. a re-attach) from ever being heard.
pub(super) struct SessionTasks {
    tasks: [tokio::task::AbortHandle; 2],
    session: Arc<Session>,
}

impl Drop for SessionTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Streams still open see the session end, as if the guest had gone.
        self.session.finish(SessionEnd::Closed);
    }
}

impl Session {
    pub(super) fn start<R, W>(
        rd: R,
        wr: W,
        decoder: FrameDecoder,
        unanswered_hellos: u64,
    ) -> (Arc<Session>, SessionTasks)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = Arc::new(Session {
            outbound,
            routes: Mutex::new(Routes::default()),
            next_channel: AtomicU32::new(HANDSHAKE_CHANNEL + 1),
            end: watch::Sender::new(None),
        });
        let writer = tokio::spawn(write_loop(wr, outbound_rx)).abort_handle();
        let reader = tokio::spawn(read_loop(
            rd,
            decoder,
            Arc::clone(&session),
            unanswered_hellos,
        ))
        .abort_handle();
        let tasks = SessionTasks {
            tasks: [writer, reader],
            session: Arc::clone(&session),
        };
        (session, tasks)
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn ended(&self) -> Option<SessionEnd> {
        self.end.borrow().clone()
    }

    pub(super) async fn wait_ended(&self) -> SessionEnd {
        let mut rx = self.end.subscribe();
        // The sender lives in `self`, so the wait cannot fail while we run.
        let end = rx.wait_for(Option::is_some).await.map(|end| end.clone());
        end.ok().flatten().unwrap_or(SessionEnd::Closed)
    }

    /// The error a request gets once the session is over.
    pub(super) fn end_error(&self) -> AgentError {
        match self.ended() {
            Some(SessionEnd::Violation(v)) => AgentError::Violation(v),
            _ => AgentError::Disconnected,
        }
    }

    /// Ends the session (the first reason is final) and drops every route,
    /// which wakes every waiter.
    fn finish(&self, end: SessionEnd) {
        self.end.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            if let SessionEnd::Violation(v) = &end {
                tracing::warn!(violation = %v, "ending the agent session: the guest broke the protocol");
            }
            *slot = Some(end);
            true
        });
        self.routes().open.clear();
    }

    pub(super) fn open_channel(
        self: &Arc<Self>,
        flow: Flow,
    ) -> Result<(u32, ChannelRx), AgentError> {
        let (tx, rx) = mpsc::channel(flow.capacity());
        let credit = (flow == Flow::Credited)
            .then(|| Arc::new(Credit(AtomicU64::new(u64::from(INITIAL_WINDOW)))));
        let channel = {
            let mut routes = self.routes();
            // Checked under the lock `finish` clears, so no route outlives it.
            if self.ended().is_some() {
                return Err(self.end_error());
            }
            let channel = self.next_channel.fetch_add(1, Ordering::Relaxed);
            routes.open.insert(
                channel,
                Route {
                    tx,
                    flow,
                    credit: credit.clone(),
                },
            );
            channel
        };
        let rx = ChannelRx {
            rx,
            credit,
            session: Arc::clone(self),
        };
        Ok((channel, rx))
    }

    pub(super) fn close_channel(&self, channel: u32) {
        self.routes().remove(channel);
    }

    pub(super) async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        if self.ended().is_some() {
            return Err(self.end_error());
        }
        self.outbound
            .send(frame)
            .await
            .map_err(|_| self.end_error())
    }

    /// For drop paths that cannot await.
    pub(super) fn try_send(&self, frame: Frame) {
        let _ = self.outbound.try_send(frame);
    }

    pub(super) async fn send_control(
        &self,
        channel: u32,
        msg: &HostMessage,
    ) -> Result<(), AgentError> {
        let payload = proto::encode(msg).map_err(|e| AgentError::Protocol(e.to_string()))?;
        self.send(Frame::new(FrameKind::Control, channel, payload))
            .await
    }

    /// Hands one frame to its channel, or says what the guest did wrong.
    async fn route(&self, frame: Frame) -> Result<(), ProtocolViolation> {
        if frame.kind == FrameKind::Control {
            check_control(&frame)?;
        }
        let channel = frame.channel;
        let is_data = matches!(frame.kind, FrameKind::Data | FrameKind::Stderr);
        let (tx, flow) = {
            let routes = self.routes();
            match routes.open.get(&channel) {
                Some(route) => {
                    if let (Some(credit), true) = (&route.credit, is_data) {
                        credit.take(channel, frame.payload.len())?;
                    }
                    (route.tx.clone(), route.flow)
                }
                None => {
                    if let (Some(credit), true) = (routes.closed_streams.get(&channel), is_data) {
                        credit.take(channel, frame.payload.len())?;
                    }
                    return self.unrouted(channel);
                }
            }
        };
        match flow {
            // A closed queue is a request that ended meanwhile.
            Flow::Bulk => {
                let _ = tx.send(frame).await;
                Ok(())
            }
            Flow::Reply | Flow::Credited => match tx.try_send(frame) {
                Err(mpsc::error::TrySendError::Full(_)) => Err(ProtocolViolation::Flood {
                    channel,
                    frames: flow.capacity(),
                }),
                _ => Ok(()),
            },
        }
    }
}

impl Session {
    /// A frame for no open channel. The host allocates ids in order, so a
    /// larger one was never handed out; smaller ones are requests the host
    /// has since forgotten, whose late frames are dropped.
    fn unrouted(&self, channel: u32) -> Result<(), ProtocolViolation> {
        if channel >= self.next_channel.load(Ordering::Relaxed) {
            return Err(ProtocolViolation::UnknownChannel { channel });
        }
        Ok(())
    }
}

/// Control messages are decoded on arrival, so a malformed one ends the
/// session instead of confusing one request.
fn check_control(frame: &Frame) -> Result<(), ProtocolViolation> {
    if frame.payload.len() > MAX_GUEST_CONTROL {
        return Err(ProtocolViolation::OversizedControl {
            channel: frame.channel,
            bytes: frame.payload.len(),
            limit: MAX_GUEST_CONTROL,
        });
    }
    proto::decode::<GuestMessage>(&frame.payload)
        .map(|_| ())
        .map_err(|e| ProtocolViolation::UndecodableControl {
            channel: frame.channel,
            error: e.to_string(),
        })
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

/// Past the handshake the guest's bytes must be whole, valid frames: the
/// agent writes each frame with one write under a lock.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut decoder: FrameDecoder,
    session: Arc<Session>,
    mut unanswered_hellos: u64,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let end = 'session: loop {
        loop {
            let frame = match decoder.next_frame_strict() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'session SessionEnd::Violation(ProtocolViolation::BadFrame(e)),
            };
            let routed = if frame.channel == HANDSHAKE_CHANNEL {
                // Answers to the Hellos repeated before the first answer.
                match unanswered_hellos.checked_sub(1) {
                    Some(left) if frame.kind == FrameKind::Control => {
                        unanswered_hellos = left;
                        check_control(&frame)
                    }
                    _ => Err(ProtocolViolation::StrayHandshake),
                }
            } else {
                session.route(frame).await
            };
            if let Err(v) = routed {
                break 'session SessionEnd::Violation(v);
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break SessionEnd::Closed,
            Ok(n) => decoder.push(&buf[..n]),
        }
    };
    session.finish(end);
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
