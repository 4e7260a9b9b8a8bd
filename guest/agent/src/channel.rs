//! The wire: one byte stream to the host carrying frames for many channels.
//!
//! Reading happens on a single thread ([`serve`]); writing happens from many
//! (exec output pumps, stream readers, replies), so every frame goes out
//! whole under one mutex via a cloneable [`Sender`].

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ember_agent_protocol::{
    self as proto, ErrorKind, Frame, FrameDecoder, FrameKind, GuestMessage,
};

use crate::session::Agent;

/// How long to wait before reading again while no host is connected.
const DISCONNECTED_POLL: Duration = Duration::from_millis(10);

/// Bytes asked of the transport per read.
const READ_CHUNK: usize = 64 * 1024;

/// The write half of the transport plus the current session epoch.
pub struct Wire {
    out: Mutex<Box<dyn Write + Send>>,
    /// Bumped whenever a new session starts. Senders created for an older
    /// epoch silently drop their frames, so work left over from a previous
    /// host never leaks into a new session's (possibly reused) channel ids.
    epoch: AtomicU64,
}

impl Wire {
    pub fn new(out: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            out: Mutex::new(out),
            epoch: AtomicU64::new(0),
        })
    }

    /// Swaps in a freshly opened transport fd after a read error.
    pub fn replace_writer(&self, out: Box<dyn Write + Send>) {
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = out;
    }

    /// A sender for the current session.
    pub fn sender(self: &Arc<Self>) -> Sender {
        Sender {
            wire: Arc::clone(self),
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// Starts a new epoch and returns its sender. Taking the write lock
    /// orders the switch after any frame being written right now.
    pub fn next_epoch(self: &Arc<Self>) -> Sender {
        let _out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        Sender {
            wire: Arc::clone(self),
            epoch,
        }
    }
}

/// Cloneable handle that writes whole frames for one session.
#[derive(Clone)]
pub struct Sender {
    wire: Arc<Wire>,
    epoch: u64,
}

impl Sender {
    /// Writes one frame. False when the frame was dropped: its session has
    /// ended or the transport failed. Callers streaming bulk data stop then.
    pub fn frame(&self, frame: &Frame) -> bool {
        let bytes = match frame.encode() {
            Ok(b) => b,
            Err(e) => {
                log!("dropping frame on channel {}: {e}", frame.channel);
                return false;
            }
        };
        // Held across the write so frames never interleave; nothing else is
        // done under this lock, so a write blocked on a disconnected host
        // stalls only other writers, never the reader thread's bookkeeping.
        let mut out = self.wire.out.lock().unwrap_or_else(|e| e.into_inner());
        if self.wire.epoch.load(Ordering::SeqCst) != self.epoch {
            return false;
        }
        match out.write_all(&bytes).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                log!("writing to the host failed: {e}");
                false
            }
        }
    }

    /// False once a newer session has started: this sender's frames would
    /// be dropped.
    pub fn is_current(&self) -> bool {
        self.wire.epoch.load(Ordering::SeqCst) == self.epoch
    }

    /// Writes bytes as they are, frames or not (the hostile agent's way of
    /// breaking the protocol).
    #[cfg(feature = "hostile")]
    pub fn raw(&self, bytes: &[u8]) -> bool {
        let mut out = self.wire.out.lock().unwrap_or_else(|e| e.into_inner());
        if self.wire.epoch.load(Ordering::SeqCst) != self.epoch {
            return false;
        }
        out.write_all(bytes).and_then(|()| out.flush()).is_ok()
    }

    pub fn control(&self, channel: u32, msg: &GuestMessage) -> bool {
        match proto::encode(msg) {
            Ok(payload) => self.frame(&Frame::new(FrameKind::Control, channel, payload)),
            Err(e) => {
                log!("cannot encode reply on channel {channel}: {e}");
                false
            }
        }
    }

    pub fn failure(&self, channel: u32, failure: Failure) -> bool {
        self.control(
            channel,
            &GuestMessage::Error {
                kind: failure.kind,
                message: failure.message,
            },
        )
    }

    /// Sends `bytes` as `kind` frames of at most `MAX_PAYLOAD` each.
    pub fn bulk(&self, channel: u32, kind: FrameKind, bytes: &[u8]) -> bool {
        bytes
            .chunks(proto::MAX_PAYLOAD)
            .all(|chunk| self.frame(&Frame::new(kind, channel, chunk.to_vec())))
    }

    pub fn eof(&self, channel: u32) -> bool {
        self.frame(&Frame::new(FrameKind::Eof, channel, Vec::new()))
    }

    pub fn reset(&self, channel: u32) -> bool {
        self.frame(&Frame::new(FrameKind::Reset, channel, Vec::new()))
    }

    pub fn window(&self, channel: u32, credit: u32) -> bool {
        self.frame(&Frame::window(channel, credit))
    }
}

/// A request that failed, in the shape of a `GuestMessage::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// Classifies an I/O error; `context` says what was being attempted.
    pub fn io(context: &str, err: &io::Error) -> Self {
        let kind = match (err.kind(), err.raw_os_error()) {
            (_, Some(libc::ENOENT | libc::ENOTDIR)) | (io::ErrorKind::NotFound, _) => {
                ErrorKind::NotFound
            }
            (_, Some(libc::EACCES | libc::EPERM)) | (io::ErrorKind::PermissionDenied, _) => {
                ErrorKind::PermissionDenied
            }
            (io::ErrorKind::ConnectionRefused, _) => ErrorKind::ConnectionRefused,
            (io::ErrorKind::InvalidInput, _) | (_, Some(libc::EISDIR | libc::EINVAL)) => {
                ErrorKind::InvalidRequest
            }
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{context}: {err}"))
    }
}

/// Reads frames from `input` and hands them to `agent` until the input
/// fails (or, unless `reconnecting`, reaches EOF).
///
/// With `reconnecting` (virtio-serial), EOF means "no host connected right
/// now": whatever partial frame was buffered is stale, so the decoder is
/// reset and the read retried shortly. The magic and CRC resynchronise the
/// stream once a host is back.
pub fn serve<R: Read>(agent: &mut Agent, mut input: R, reconnecting: bool) -> io::Result<()> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) if reconnecting => {
                decoder.reset();
                thread::sleep(DISCONNECTED_POLL);
            }
            Ok(0) => return Ok(()),
            Ok(n) => {
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.next_frame() {
                    agent.handle(frame);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_protocol_kinds() {
        let k = |e: i32| Failure::io("x", &io::Error::from_raw_os_error(e)).kind;
        assert_eq!(k(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(k(libc::ENOTDIR), ErrorKind::NotFound);
        assert_eq!(k(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::ECONNREFUSED), ErrorKind::ConnectionRefused);
        assert_eq!(k(libc::EISDIR), ErrorKind::InvalidRequest);
        assert_eq!(k(libc::EIO), ErrorKind::Io);
    }

    #[test]
    fn senders_of_an_old_epoch_go_quiet() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let wire = Wire::new(Box::new(Shared(Arc::clone(&buf))));
        let old = wire.sender();
        assert!(old.eof(1));
        let new = wire.next_epoch();
        assert!(!old.eof(1));
        assert!(new.eof(1));
        let mut dec = FrameDecoder::new();
        dec.push(&buf.lock().unwrap());
        assert!(dec.next_frame().is_some());
        assert!(dec.next_frame().is_some());
        assert!(dec.next_frame().is_none());
    }
}
