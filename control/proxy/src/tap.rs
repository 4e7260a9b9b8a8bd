//! A stream that tells a callback of the bytes it moves, each way: the
//! one way the proxy (idle clocks, metrics) and emberd (a VM's activity, the
//! first byte after an auto-resume) see traffic. The bytes are untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which way bytes moved, seen from the side holding the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from the stream.
    Read,
    /// Written to the stream.
    Written,
}

/// The callback of a tap whose type must be named.
pub type BoxedTapFn = Box<dyn FnMut(Direction, usize) + Send>;

/// `inner`, with `on_bytes(direction, n)` called for every read or write
/// of `n > 0` bytes.
pub struct Tap<I, F = BoxedTapFn> {
    inner: I,
    on_bytes: F,
}

impl<I, F: FnMut(Direction, usize)> Tap<I, F> {
    pub fn new(inner: I, on_bytes: F) -> Self {
        Tap { inner, on_bytes }
    }

    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                (self.on_bytes)(Direction::Written, *n);
            }
        }
    }
}

impl<I: AsyncRead + Unpin, F: FnMut(Direction, usize) + Unpin> AsyncRead for Tap<I, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            (self.on_bytes)(Direction::Read, n);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin, F: FnMut(Direction, usize) + Unpin> AsyncWrite for Tap<I, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn every_byte_each_way_is_told_and_passes_unchanged() {
        let seen = Arc::new(Mutex::new((0, 0)));
        let (mut client, server) = tokio::io::duplex(16);
        let tally = Arc::clone(&seen);
        let mut tapped = Tap::new(server, move |direction, n| {
            let mut t = tally.lock().unwrap();
            match direction {
                Direction::Read => t.0 += n,
                Direction::Written => t.1 += n,
            }
        });
        client.write_all(b"hello").await.unwrap();
        drop(client.shutdown().await);
        let mut got = Vec::new();
        tapped.read_to_end(&mut got).await.unwrap();
        tapped.write_all(b"a longer answer").await.unwrap();
        assert_eq!(got, b"hello");
        let mut answer = vec![0; 15];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, b"a longer answer");
        assert_eq!(*seen.lock().unwrap(), (5, 15));
    }
}
