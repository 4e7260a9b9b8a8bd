//! A guest TCP connection carried on one agent channel, exposed to the host
//! as an in-process duplex pipe so callers get plain `AsyncRead`/`AsyncWrite`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ember_agent_protocol::{Frame, FrameKind, INITIAL_WINDOW, MAX_PAYLOAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::session::{ChannelRx, Session};

/// Bytes buffered between the caller and the pump tasks, per direction.
const PIPE_BUFFER: usize = 256 * 1024;

/// A byte stream to a port inside the guest. Dropping it resets the guest
/// connection if it is still open.
pub type AgentStream = DuplexStream;

struct Credit {
    bytes: AtomicU64,
    closed: AtomicBool,
    more: Notify,
}

pub(super) fn start(session: Arc<Session>, channel: u32, rx: ChannelRx) -> AgentStream {
    start_with_control(session, channel, rx, |_| {})
}

/// Like [`start`], handing the channel's `Control` frames (which a TCP
/// stream never gets, but a terminal's `Exited` does) to `on_control`, in
/// order with the data: every byte before a control frame has been queued
/// for the caller when `on_control` sees it. `on_control` is dropped when
/// the channel ends.
pub(super) fn start_with_control<F>(
    session: Arc<Session>,
    channel: u32,
    rx: ChannelRx,
    on_control: F,
) -> AgentStream
where
    F: FnMut(&Frame) + Send + 'static,
{
    let (user, pump) = tokio::io::duplex(PIPE_BUFFER);
    let (pump_rd, pump_wr) = tokio::io::split(pump);
    let credit = Arc::new(Credit {
        bytes: AtomicU64::new(u64::from(INITIAL_WINDOW)),
        closed: AtomicBool::new(false),
        more: Notify::new(),
    });
    let inbound = tokio::spawn(guest_to_host(
        Arc::clone(&session),
        channel,
        rx,
        pump_wr,
        Arc::clone(&credit),
        on_control,
    ));
    let outbound = tokio::spawn(host_to_guest(
        Arc::clone(&session),
        channel,
        pump_rd,
        credit,
    ));
    tokio::spawn(async move {
        let _ = inbound.await;
        let _ = outbound.await;
        session.close_channel(channel);
    });
    user
}

async fn guest_to_host(
    session: Arc<Session>,
    channel: u32,
    mut rx: ChannelRx,
    mut to_user: WriteHalf<DuplexStream>,
    credit: Arc<Credit>,
    mut on_control: impl FnMut(&Frame),
) {
    while let Ok(frame) = rx.recv().await {
        match frame.kind {
            FrameKind::Data => {
                let n = frame.payload.len() as u32;
                if to_user.write_all(&frame.payload).await.is_err() {
                    // The caller dropped its end: tell the guest to hang up.
                    // After a Reset the guest sends nothing more here.
                    session.try_send(Frame::new(FrameKind::Reset, channel, Vec::new()));
                    break;
                }
                // Granted before the guest can know, so it is never early.
                rx.grant(n);
                if session.send(Frame::window(channel, n)).await.is_err() {
                    break;
                }
            }
            FrameKind::Eof => {
                let _ = to_user.shutdown().await;
            }
            FrameKind::Window => {
                credit
                    .bytes
                    .fetch_add(u64::from(frame.window_credit()), Ordering::AcqRel);
                credit.more.notify_one();
            }
            FrameKind::Control => on_control(&frame),
            FrameKind::Reset => break,
            _ => {}
        }
    }
    // Guest side gone: wake the outbound pump so it notices and ends.
    credit.closed.store(true, Ordering::Release);
    credit.more.notify_one();
    let _ = to_user.shutdown().await;
}

async fn host_to_guest(
    session: Arc<Session>,
    channel: u32,
    mut from_user: ReadHalf<DuplexStream>,
    credit: Arc<Credit>,
) {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        let available = loop {
            if credit.closed.load(Ordering::Acquire) {
                return; // the inbound side ended the channel
            }
            let c = credit.bytes.load(Ordering::Acquire);
            if c > 0 {
                break c;
            }
            credit.more.notified().await;
        };
        let want = usize::try_from(available)
            .unwrap_or(MAX_PAYLOAD)
            .min(MAX_PAYLOAD);
        // A read error on our own pipe ends the stream like EOF.
        let n = from_user.read(&mut buf[..want]).await.unwrap_or_default();
        if n == 0 {
            let _ = session
                .send(Frame::new(FrameKind::Eof, channel, Vec::new()))
                .await;
            return;
        }
        // Only this task subtracts, and it read at least `n` above.
        credit.bytes.fetch_sub(n as u64, Ordering::AcqRel);
        if session
            .send(Frame::new(FrameKind::Data, channel, buf[..n].to_vec()))
            .await
            .is_err()
        {
            return;
        }
    }
}
