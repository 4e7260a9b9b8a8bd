//! Serving one accepted client connection in HTTP/1.1 or HTTP/2.
//!
//! On plain TCP the protocol is told by the first bytes: a client with
//! prior knowledge of HTTP/2 (h2c) opens with the connection preface,
//! anything else is HTTP/1.1. The TLS acceptor learns it from ALPN
//! instead and calls [`serve_as`] directly with the decrypted stream
//! (`tls.rs`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::debug;

use crate::caps::Admission;
use crate::error_code::ProxyErrorCode;
use crate::error_code::ERROR_HEADER;
use crate::forward::ClientConnection;
use crate::headers::ClientAddress;
use crate::idle::{Activity, Tracked};
use crate::proxy::Shared;
use crate::response::error;
use crate::routing::Route;

/// Bounds one request head (the token alone may be 4 KiB), in either
/// protocol.
const MAX_HEAD_BUFFER: usize = 64 * 1024;
/// Streams one HTTP/2 client may have open at once; more are refused by
/// the protocol itself (RST_STREAM REFUSED_STREAM), never queued.
pub(crate) const MAX_H2_STREAMS: u32 = 100;
/// How long an HTTP/2 client has to answer a ping before its connection
/// is dropped; pings go out after this much silence too.
const H2_PING: Duration = Duration::from_secs(20);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientProtocol {
    Http1,
    Http2,
}

/// What every connection of a listener is served with.
pub(crate) struct Served {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    pub(crate) route: Route,
    pub(crate) shutdown: watch::Receiver<()>,
    /// The connection's place under its listener's cap.
    pub(crate) admission: Admission,
}

/// Tells HTTP/1.1 from h2c by the first bytes (within the header read
/// timeout, so a silent client does not hold a task), then serves it.
pub(crate) async fn serve_plain<I>(served: Served, mut io: I)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let timeout = served.shared.config.header_read_timeout;
    let mut shutdown = served.shutdown.clone();
    let sniffed = tokio::select! {
        sniffed = tokio::time::timeout(timeout, sniff(&mut io)) => sniffed,
        // An unbound endpoint closes connections that sent nothing yet too.
        _ = shutdown.changed() => return,
    };
    let (protocol, read) = match sniffed {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            debug!(peer = %served.peer, error = %e, "client left before a request");
            return;
        }
        Err(_) => {
            debug!(peer = %served.peer, "client sent nothing in time");
            return;
        }
    };
    serve_as(served, protocol, Replayed { read, io }).await;
}

/// Reads only as far as needed to tell: until the bytes leave the HTTP/2
/// preface (HTTP/1.1, usually at the first byte) or complete it.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(ClientProtocol, Bytes)> {
    let mut read = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    loop {
        let n = io.read(&mut read[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        let seen = Bytes::copy_from_slice(&read[..len]);
        if !H2_PREFACE.starts_with(&seen) {
            return Ok((ClientProtocol::Http1, seen));
        }
        if len == H2_PREFACE.len() {
            return Ok((ClientProtocol::Http2, seen));
        }
    }
}

/// Serves a connection whose protocol is known, until it ends or the
/// listener shuts down.
pub(crate) async fn serve_as<I>(served: Served, protocol: ClientProtocol, io: I)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Served {
        shared,
        peer,
        route,
        mut shutdown,
        admission,
    } = served;
    let _permit = match admission {
        Admission::Served(permit) => permit,
        Admission::Refused(_permit) => {
            let refusing = serve_refused(protocol, io);
            if tokio::time::timeout(shared.config.header_read_timeout, refusing)
                .await
                .is_err()
            {
                debug!(%peer, "refused client sent no request in time");
            }
            return;
        }
    };
    let header_read_timeout = shared.config.header_read_timeout;
    let observer = shared.config.observer.clone();
    let io = observer.count(io);
    let idle_timeout = shared.config.idle_timeout;
    let activity = Activity::new();
    let connection = Arc::new(ClientConnection::new(
        shared,
        route,
        ClientAddress::new(peer),
        shutdown.clone(),
        Arc::clone(&activity),
    ));
    let requests = Arc::clone(&activity);
    let service = service_fn(move |req| {
        let (connection, observer) = (connection.clone(), observer.clone());
        let in_flight = requests.request();
        async move {
            let response = connection.handle(req).await;
            let proxy_error = response.headers().get(&ERROR_HEADER);
            observer.answered(response.status(), proxy_error.and_then(|v| v.to_str().ok()));
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let io = TokioIo::new(io);
    let served = async {
        match protocol {
            ClientProtocol::Http1 => {
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .keep_alive(true)
                    .max_buf_size(MAX_HEAD_BUFFER)
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
            }
            ClientProtocol::Http2 => {
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_H2_STREAMS)
                    .max_header_list_size(MAX_HEAD_BUFFER as u32)
                    .keep_alive_interval(H2_PING)
                    .keep_alive_timeout(H2_PING)
                    .serve_connection(io, service)
                    .await
            }
        }
    };
    tokio::select! {
        served = served => {
            if let Err(e) = served {
                debug!(%peer, error = %e, "client connection ended");
            }
        }
        _ = shutdown.changed() => {}
        () = activity.idle_for(idle_timeout) => {
            debug!(%peer, "closed an idle client connection");
        }
    }
}

/// Answers every request on a connection past its listener's cap with a
/// 503, then closes it.
async fn serve_refused<I>(protocol: ClientProtocol, io: I)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(error(
            ProxyErrorCode::MicrovmUnavailable,
            "the endpoint has too many open connections; retry later",
        ))
    });
    let io = TokioIo::new(io);
    let served = match protocol {
        ClientProtocol::Http1 => {
            http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_HEAD_BUFFER)
                .serve_connection(io, service)
                .await
        }
        ClientProtocol::Http2 => {
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(1)
                .max_header_list_size(MAX_HEAD_BUFFER as u32)
                .serve_connection(io, service)
                .await
        }
    };
    if let Err(e) = served {
        debug!(error = %e, "refused client connection ended");
    }
}

/// A stream whose first bytes were already read: they are read again
/// first, then the stream itself.
struct Replayed<I> {
    read: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replayed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.has_remaining() {
            let n = self.read.len().min(buf.remaining());
            let chunk = self.read.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replayed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(input: &[u8]) -> io::Result<(ClientProtocol, Bytes)> {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, input)
            .await
            .unwrap();
        drop(client);
        sniff(&mut server).await
    }

    #[tokio::test]
    async fn the_preface_tells_h2_and_nothing_more_is_read() {
        let mut input = H2_PREFACE.to_vec();
        input.extend_from_slice(b"\0\0\0\x04\0");
        let (protocol, read) = sniffed(&input).await.unwrap();
        assert_eq!(protocol, ClientProtocol::Http2);
        assert_eq!(&read[..], H2_PREFACE);

        let (protocol, read) = sniffed(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(protocol, ClientProtocol::Http1);
        assert!(b"GET / HTTP/1.1\r\n\r\n".starts_with(&read), "{read:?}");
        // A request with the method PRI is HTTP/1.1 until it differs.
        let (protocol, read) = sniffed(b"PRI /x HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(protocol, ClientProtocol::Http1);
        assert!(read.starts_with(b"PRI /"), "{read:?}");
        assert!(sniffed(b"PRI * HTTP/2").await.is_err());
    }

    #[tokio::test]
    async fn replayed_bytes_come_first() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut replayed = Replayed {
            read: Bytes::from_static(b"hello"),
            io: server,
        };
        let mut all = String::new();
        replayed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
