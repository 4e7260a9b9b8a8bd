//! The connections to guest ports one client connection keeps between
//! requests: one HTTP/1.1 connection (taken for a request, put back once
//! the answer's head arrived) and one HTTP/2 connection (shared: its
//! `SendRequest` multiplexes, so concurrent streams of an h2 client ride
//! on it together).

use std::sync::{Arc, Mutex, PoisonError};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{debug, warn};

use crate::error_code::ProxyErrorCode;
use crate::proxy::Shared;
use crate::response::{error, ProxyBody};
use crate::upstream::{AsyncStream, UpstreamError};

/// Bounds the head of an HTTP/2 answer from a guest (a hostile guest could
/// otherwise make the proxy buffer HPACK-expanded headers without end).
const MAX_UPSTREAM_H2_HEADERS: u32 = 256 * 1024;

/// How the app is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppProtocol {
    /// The default, and always for upgrades (WebSockets).
    Http1,
    /// Prior knowledge, when the request carried `X-aws-proxy-force-h2`.
    Http2,
}

struct Pooled<S> {
    microvm_id: Arc<str>,
    port: u16,
    sender: S,
}

impl<S> Pooled<S> {
    fn is_for(&self, microvm_id: &str, port: u16) -> bool {
        self.port == port && &*self.microvm_id == microvm_id
    }
}

/// Never held across an await: each lock only takes, clones or puts back.
#[derive(Default)]
pub(crate) struct UpstreamPool {
    h1: Mutex<Option<Pooled<http1::SendRequest<Incoming>>>>,
    h2: Mutex<Option<Pooled<http2::SendRequest<Incoming>>>>,
}

impl UpstreamPool {
    /// Reuses a pooled connection's id when it names the same VM, so
    /// keep-alive requests on a wildcard listener allocate nothing for it.
    pub(crate) fn interned_id(&self, label: &str) -> Arc<str> {
        let named = |id: Option<&Arc<str>>| id.filter(|id| &***id == label).cloned();
        let h1 = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = named(h1.as_ref().map(|p| &p.microvm_id)) {
            return id;
        }
        drop(h1);
        let h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        named(h2.as_ref().map(|p| &p.microvm_id)).unwrap_or_else(|| Arc::from(label))
    }

    /// Sends `req` (already prepared for `protocol`) to `port` of
    /// `microvm_id`: a guest's answer, or the proxy's own error answer.
    pub(crate) async fn send(
        &self,
        shared: &Shared,
        microvm_id: Arc<str>,
        port: u16,
        protocol: AppProtocol,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        match protocol {
            AppProtocol::Http1 => self.send_h1(shared, microvm_id, port, req).await,
            AppProtocol::Http2 => self.send_h2(shared, microvm_id, port, req).await,
        }
    }

    async fn send_h1(
        &self,
        shared: &Shared,
        microvm_id: Arc<str>,
        port: u16,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        if let Some(mut pooled) = self.take_h1(&microvm_id, port) {
            if pooled.sender.ready().await.is_ok() {
                match pooled.sender.try_send_request(req).await {
                    Ok(response) => {
                        self.keep_h1_unless_upgraded(pooled, &response);
                        return Ok(response);
                    }
                    // The guest closed the idle connection before the
                    // request left: safe to send it on a fresh one.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(protocol_error(e.error())),
                    },
                }
            }
        }
        let stream = connect(shared, &microvm_id, port).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| protocol_error(&e))?;
        self.keep_h1_unless_upgraded(
            Pooled {
                microvm_id,
                port,
                sender,
            },
            &response,
        );
        Ok(response)
    }

    fn take_h1(&self, microvm_id: &str, port: u16) -> Option<Pooled<http1::SendRequest<Incoming>>> {
        let mut pooled = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        match pooled.as_ref() {
            Some(p) if p.is_for(microvm_id, port) => pooled.take(),
            _ => None,
        }
    }

    fn keep_h1_unless_upgraded(
        &self,
        pooled: Pooled<http1::SendRequest<Incoming>>,
        response: &Response<Incoming>,
    ) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS && !pooled.sender.is_closed() {
            *self.h1.lock().unwrap_or_else(PoisonError::into_inner) = Some(pooled);
        }
    }

    async fn send_h2(
        &self,
        shared: &Shared,
        microvm_id: Arc<str>,
        port: u16,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        if let Some(mut sender) = self.shared_h2(&microvm_id, port) {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(response) => return Ok(response),
                    // GOAWAY or a closed connection before the stream
                    // opened: the guest never saw the request.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(protocol_error(e.error())),
                    },
                }
            }
        }
        let stream = connect(shared, &microvm_id, port).await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_UPSTREAM_H2_HEADERS)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pooled {
            microvm_id,
            port,
            sender: sender.clone(),
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| protocol_error(&e))
    }

    /// A handle on the pooled HTTP/2 connection to that port, unless it
    /// is closed (then it is dropped, so the next request opens another).
    fn shared_h2(&self, microvm_id: &str, port: u16) -> Option<http2::SendRequest<Incoming>> {
        let mut pooled = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match pooled.as_ref() {
            Some(p) if p.sender.is_closed() => {
                *pooled = None;
                None
            }
            Some(p) if p.is_for(microvm_id, port) => Some(p.sender.clone()),
            _ => None,
        }
    }
}

/// A stream to the guest port within `connect_timeout`, or the answer that
/// says why not.
async fn connect(
    shared: &Shared,
    microvm_id: &str,
    port: u16,
) -> Result<Box<dyn AsyncStream>, Response<ProxyBody>> {
    let connecting = shared.upstream.connect(microvm_id, port);
    let connected = tokio::time::timeout(shared.config.connect_timeout, connecting)
        .await
        .map_err(|_| {
            warn!(microvm_id, port, "connecting to the guest timed out");
            error(
                ProxyErrorCode::AppTimeout,
                "the microVM did not accept the connection in time",
            )
        })?;
    connected.map_err(|e| match e {
        UpstreamError::NotFound => error(ProxyErrorCode::MicrovmNotFound, "no such microVM"),
        UpstreamError::Unavailable(reason) => {
            debug!(microvm_id, %reason, "microVM unavailable");
            error(
                ProxyErrorCode::MicrovmUnavailable,
                &format!("the microVM cannot serve requests now: {reason}"),
            )
        }
        UpstreamError::Refused(reason) => {
            debug!(microvm_id, port, %reason, "guest refused the connection");
            error(
                ProxyErrorCode::AppConnectFailed,
                "nothing in the microVM accepts connections on that port",
            )
        }
    })
}

fn protocol_error(e: &hyper::Error) -> Response<ProxyBody> {
    debug!(error = %e, "forwarding to the guest failed");
    error(
        ProxyErrorCode::AppProtocolError,
        "the guest closed the connection or did not answer in the protocol asked for \
         (HTTP/1.1, or HTTP/2 with X-aws-proxy-force-h2)",
    )
}
