//! Endpoints over TLS: the handshake (bounded like a request head), then
//! the protocol ALPN settled on, so h2 and gRPC keep working and
//! WebSocket upgrades ride HTTP/1.1 as on plain TCP.

use std::fmt;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::serve::{serve_as, serve_plain, ClientProtocol, Served};

/// The server side of endpoints' TLS. Its ALPN list should offer `h2`
/// and `http/1.1`; the certificate behind it may change at any time (new
/// handshakes use the new one).
#[derive(Clone)]
pub struct EndpointTls(pub Arc<rustls::ServerConfig>);

impl fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTls")
            .field("alpn", &self.0.alpn_protocols)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn serve_tls(served: Served, stream: TcpStream, tls: &EndpointTls) {
    let timeout = served.shared.config.header_read_timeout;
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.0));
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(peer = %served.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(peer = %served.peer, "TLS handshake not done in time");
            return;
        }
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => ClientProtocol::Http2,
        Some(_) => ClientProtocol::Http1,
        // A client that offered no ALPN may still speak h2 with prior
        // knowledge: tell by its first bytes as on plain TCP.
        None => return serve_plain(served, stream).await,
    };
    serve_as(served, protocol, stream).await;
}
