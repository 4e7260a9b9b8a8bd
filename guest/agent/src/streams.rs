//! `Connect`: a TCP connection to a guest-local port, bridged onto a channel
//! under `Window` flow control in both directions. `AcceptMetadata` streams
//! are the same, with the socket accepted instead of connected.
//!
//! Three parties touch a stream: the wire reader thread (host frames, via
//! [`StreamHandle`]), a socket reader thread (socket → host, gated by the
//! host's credit) and a socket writer thread (host → socket, acknowledged
//! with `Window` frames).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ember_agent_protocol::{ErrorKind, FrameKind, GuestMessage, INITIAL_WINDOW, MAX_PAYLOAD};

use crate::channel::{Failure, Sender};
use crate::spawn_thread;

/// A local listener accepts at once; this only bounds a full backlog.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 64 * 1024;

/// Bytes we may still send to the host on one channel.
#[derive(Debug)]
pub struct Credit(u64);

impl Default for Credit {
    fn default() -> Self {
        Self(u64::from(INITIAL_WINDOW))
    }
}

impl Credit {
    pub fn grant(&mut self, n: u32) {
        self.0 = self.0.saturating_add(u64::from(n));
    }

    /// How much the next read may take: the credit, bounded by one frame.
    pub fn available(&self) -> usize {
        self.0.min(MAX_PAYLOAD as u64) as usize
    }

    pub fn consume(&mut self, n: usize) {
        self.0 = self.0.saturating_sub(n as u64);
    }
}

/// Host bytes received but not yet acknowledged with a `Window`. The host
/// may have at most `INITIAL_WINDOW` outstanding; more is a protocol breach.
#[derive(Debug, Default)]
pub struct Inflight(u64);

impl Inflight {
    /// False when accepting `n` more bytes would overrun the window.
    pub fn receive(&mut self, n: usize) -> bool {
        let total = self.0 + n as u64;
        if total > u64::from(INITIAL_WINDOW) {
            return false;
        }
        self.0 = total;
        true
    }

    pub fn acknowledge(&mut self, n: usize) {
        self.0 = self.0.saturating_sub(n as u64);
    }
}

#[derive(Default)]
struct State {
    credit: Credit,
    inflight: Inflight,
    /// Reset by either side, or abandoned: every thread winds down.
    closed: bool,
    /// Socket → host finished with `Eof` (or the connect failed).
    read_done: bool,
    /// Host → socket finished with a write shutdown (or the connect failed).
    write_done: bool,
    /// Kept so that `close` can unblock the threads stuck in socket calls.
    socket: Option<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on new credit and on close.
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(sock) = st.socket.take() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        drop(st);
        self.cond.notify_all();
    }
}

enum Chunk {
    Data(Vec<u8>),
    Eof,
}

/// The wire reader's handle on one stream.
pub struct StreamHandle {
    shared: Arc<Shared>,
    /// To the socket writer; `None` after the host's `Eof` or a close.
    queue: Option<mpsc::Sender<Chunk>>,
}

impl StreamHandle {
    /// Queues host bytes for the socket. False if the host overran the
    /// window, in which case the caller resets the channel.
    pub fn host_data(&mut self, data: Vec<u8>) -> bool {
        let Some(queue) = &self.queue else {
            return true; // after Eof or close: ignore
        };
        let mut st = self.shared.lock();
        if st.closed {
            return true; // we already sent Reset; the host will catch up
        }
        if !st.inflight.receive(data.len()) {
            return false;
        }
        drop(st);
        // A send error means the writer is gone (socket failed, Reset sent).
        let _ = queue.send(Chunk::Data(data));
        true
    }

    /// Host half-close: shut down our write side once the queue drains.
    pub fn host_eof(&mut self) {
        if let Some(queue) = self.queue.take() {
            let _ = queue.send(Chunk::Eof);
        }
    }

    pub fn grant(&self, credit: u32) {
        self.shared.lock().credit.grant(credit);
        self.shared.cond.notify_all();
    }

    pub fn close(&mut self) {
        self.queue = None;
        self.shared.close();
    }

    pub fn is_done(&self) -> bool {
        let st = self.shared.lock();
        st.closed || (st.read_done && st.write_done)
    }
}

fn new_shared() -> Arc<Shared> {
    Arc::new(Shared {
        state: Mutex::new(State::default()),
        cond: Condvar::new(),
    })
}

/// Registers the channel and connects from a helper thread, which replies
/// `Connected` (or the error) and then pumps socket → host.
pub fn open(port: u16, channel: u32, sender: &Sender) -> Result<StreamHandle, Failure> {
    let shared = new_shared();
    let (tx, rx) = mpsc::channel();
    let worker = Arc::clone(&shared);
    let sender = sender.clone();
    spawn_thread(format!("stream-{channel}"), move || {
        connect_and_pump(port, channel, &sender, &worker, rx)
    })
    .map_err(|e| Failure::io("cannot start a stream thread", &e))?;
    Ok(StreamHandle {
        shared,
        queue: Some(tx),
    })
}

/// A stream the host opened whose socket comes later, from a guest process
/// connecting to one of the agent's listeners (`metadata.rs`). Its handle is
/// registered at once, so a host `Reset` cancels it like any stream.
pub struct PendingStream {
    channel: u32,
    sender: Sender,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Chunk>,
}

impl PendingStream {
    pub fn new(channel: u32, sender: &Sender) -> (StreamHandle, Self) {
        let shared = new_shared();
        let (tx, rx) = mpsc::channel();
        let handle = StreamHandle {
            shared: Arc::clone(&shared),
            queue: Some(tx),
        };
        let pending = Self {
            channel,
            sender: sender.clone(),
            shared,
            rx,
        };
        (handle, pending)
    }

    /// The host reset it, or its session ended.
    pub fn is_abandoned(&self) -> bool {
        self.shared.lock().closed
    }

    /// Hands over the accepted socket: `Connected` goes to the host and a
    /// helper thread pumps the connection. On error the socket is dropped
    /// (the guest process sees the connection close) and the host is told.
    pub fn attach(self, sock: TcpStream) -> io::Result<()> {
        let Self {
            channel,
            sender,
            shared,
            rx,
        } = self;
        let worker = Arc::clone(&shared);
        let worker_sender = sender.clone();
        let spawned = spawn_thread(format!("stream-{channel}"), move || {
            pump(sock, channel, &worker_sender, &worker, rx)
        });
        if let Err(e) = spawned {
            shared.close();
            sender.reset(channel);
            return Err(e);
        }
        Ok(())
    }
}

fn connect_and_pump(
    port: u16,
    channel: u32,
    sender: &Sender,
    shared: &Arc<Shared>,
    rx: mpsc::Receiver<Chunk>,
) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            {
                let mut st = shared.lock();
                st.read_done = true;
                st.write_done = true;
            }
            let mut failure = Failure::io(&format!("connecting to 127.0.0.1:{port}"), &e);
            if e.kind() == io::ErrorKind::ConnectionRefused {
                failure.kind = ErrorKind::ConnectionRefused;
            }
            sender.failure(channel, failure);
            return;
        }
    };
    pump(sock, channel, sender, shared, rx);
}

/// Says `Connected` and bridges a connected socket both ways until either
/// side ends it.
fn pump(
    sock: TcpStream,
    channel: u32,
    sender: &Sender,
    shared: &Arc<Shared>,
    rx: mpsc::Receiver<Chunk>,
) {
    let _ = sock.set_nodelay(true);
    let clones = sock.try_clone().and_then(|a| Ok((a, sock.try_clone()?)));
    let (for_close, for_writer) = match clones {
        Ok(c) => c,
        Err(e) => {
            shared.close();
            sender.failure(channel, Failure::io("duplicating the socket", &e));
            return;
        }
    };
    {
        let mut st = shared.lock();
        if st.closed {
            return; // reset or abandoned while connecting
        }
        st.socket = Some(for_close);
    }
    if !sender.control(channel, &GuestMessage::Connected) {
        shared.close();
        return;
    }
    let writer_shared = Arc::clone(shared);
    let writer_sender = sender.clone();
    let spawned = spawn_thread(format!("stream-w-{channel}"), move || {
        socket_writer(for_writer, channel, &writer_sender, &writer_shared, rx)
    });
    if let Err(e) = spawned {
        log!("cannot start a stream writer on channel {channel}: {e}");
        shared.close();
        sender.reset(channel);
        return;
    }
    socket_reader(sock, channel, sender, shared);
}

/// Socket → host, never exceeding the host's credit.
fn socket_reader(mut sock: TcpStream, channel: u32, sender: &Sender, shared: &Shared) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let want = {
            let mut st = shared.lock();
            loop {
                if st.closed {
                    return;
                }
                let available = st.credit.available();
                if available > 0 {
                    break available.min(buf.len());
                }
                st = shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let n = match sock.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                fail(channel, sender, shared, &e);
                return;
            }
        };
        if n == 0 {
            let mut st = shared.lock();
            if !st.closed {
                st.read_done = true;
                drop(st);
                sender.eof(channel);
            }
            return;
        }
        shared.lock().credit.consume(n);
        if !sender.bulk(channel, FrameKind::Data, &buf[..n]) {
            shared.close(); // the session is gone
            return;
        }
    }
}

/// Host → socket; each written chunk is acknowledged with a `Window`.
fn socket_writer(
    mut sock: TcpStream,
    channel: u32,
    sender: &Sender,
    shared: &Shared,
    rx: mpsc::Receiver<Chunk>,
) {
    // Ends when the handle drops its queue (close) without an Eof.
    for chunk in rx {
        if shared.lock().closed {
            return;
        }
        match chunk {
            Chunk::Data(data) => {
                if let Err(e) = sock.write_all(&data) {
                    fail(channel, sender, shared, &e);
                    return;
                }
                shared.lock().inflight.acknowledge(data.len());
                // Chunks are at most MAX_PAYLOAD, which fits in u32.
                sender.window(channel, data.len() as u32);
            }
            Chunk::Eof => {
                let _ = sock.shutdown(Shutdown::Write);
                shared.lock().write_done = true;
                return;
            }
        }
    }
}

/// A socket error: tell the host (unless we closed it ourselves) and close.
fn fail(channel: u32, sender: &Sender, shared: &Shared, err: &io::Error) {
    let already_closed = shared.lock().closed;
    shared.close();
    if !already_closed {
        log!("stream on channel {channel}: {err}");
        sender.reset(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_starts_at_the_initial_window_and_is_capped_per_frame() {
        let mut c = Credit::default();
        assert_eq!(c.available(), MAX_PAYLOAD.min(INITIAL_WINDOW as usize));
        c.consume(INITIAL_WINDOW as usize - 10);
        assert_eq!(c.available(), 10);
        c.consume(10);
        assert_eq!(c.available(), 0);
        c.consume(5); // never underflows
        assert_eq!(c.available(), 0);
        c.grant(7);
        assert_eq!(c.available(), 7);
        c.grant(u32::MAX);
        c.grant(u32::MAX);
        assert_eq!(c.available(), MAX_PAYLOAD);
    }

    #[test]
    fn inflight_rejects_overruns_and_recovers_after_acks() {
        let mut w = Inflight::default();
        assert!(w.receive(INITIAL_WINDOW as usize));
        assert!(!w.receive(1));
        w.acknowledge(100);
        assert!(w.receive(100));
        assert!(!w.receive(1));
    }
}
