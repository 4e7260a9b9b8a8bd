//! One client connection: authenticate each request, forward it over an
//! upstream HTTP/1 connection kept for the next request to the same
//! microVM port, and splice upgraded (WebSocket) connections; `/shell`
//! with a shell token goes to the shell (`shell.rs`) instead.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HOST, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::auth::{authorize, strip_credentials, SUBPROTOCOL};
use crate::headers::{strip_hop_by_hop, wants_upgrade, ClientAddress};
use crate::proxy::Shared;
use crate::response::{error, ProxyBody};
use crate::routing::{request_host, vm_from_host, Route};
use crate::shell;
use crate::upstream::UpstreamError;

static SUBPROTOCOL_VALUE: HeaderValue = HeaderValue::from_static(SUBPROTOCOL);

/// The upstream connection a client connection keeps between requests.
struct Pooled {
    microvm_id: Arc<str>,
    port: u16,
    sender: SendRequest<Incoming>,
}

pub(crate) struct ClientConnection {
    shared: Arc<Shared>,
    route: Route,
    client: ClientAddress,
    /// Taken out for the duration of a request, put back once the answer's
    /// head arrived; never held across an await.
    pooled: Mutex<Option<Pooled>>,
    /// Ends spliced WebSocket connections when the listener is unbound.
    shutdown: watch::Receiver<()>,
}

impl ClientConnection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        route: Route,
        client: ClientAddress,
        shutdown: watch::Receiver<()>,
    ) -> Self {
        ClientConnection {
            shared,
            route,
            client,
            pooled: Mutex::new(None),
            shutdown,
        }
    }

    pub(crate) async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let microvm_id = match &self.route {
            Route::Fixed(id) => id.clone(),
            Route::Wildcard(domain) => {
                match request_host(&req).and_then(|h| vm_from_host(h, domain)) {
                    Some(label) => self.interned_id(label),
                    None => {
                        return error(
                            StatusCode::NOT_FOUND,
                            "no microVM endpoint at this host name",
                        )
                    }
                }
            }
        };
        if let Some(shell) = shell::shell_request(&self.shared.key, &req, &microvm_id, unix_now()) {
            self.shared.upstream.touch(&microvm_id);
            return shell::open(&self.shared, &microvm_id, req, shell, self.shutdown.clone()).await;
        }
        let grant = match authorize(&self.shared.key, req.headers(), &microvm_id, unix_now()) {
            Ok(grant) => grant,
            Err(rejection) => return error(rejection.status, rejection.message),
        };
        self.shared.upstream.touch(&microvm_id);

        let upgrade = wants_upgrade(req.headers());
        prepare_request(&mut req, upgrade, &self.client);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let mut response = match self.send(microvm_id, grant.port, req).await {
            Ok(response) => response,
            Err(answer) => return answer,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "the guest switched protocols on a request that did not ask to",
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(
                client_upgrade,
                upstream_upgrade,
                self.shutdown.clone(),
            ));
            strip_hop_by_hop(response.headers_mut(), true);
            // The guest may have picked another subprotocol the client
            // offered; otherwise the client expects ours back.
            if grant.answer_subprotocol && !response.headers().contains_key(SEC_WEBSOCKET_PROTOCOL)
            {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL_VALUE.clone());
            }
        } else {
            strip_hop_by_hop(response.headers_mut(), false);
        }
        response.map(Either::Left)
    }

    /// Reuses the pooled connection's id when it names the same VM, so
    /// keep-alive requests on a wildcard listener allocate nothing for it.
    fn interned_id(&self, label: &str) -> Arc<str> {
        let pooled = self.pooled.lock().unwrap_or_else(PoisonError::into_inner);
        match pooled.as_ref() {
            Some(p) if &*p.microvm_id == label => p.microvm_id.clone(),
            _ => Arc::from(label),
        }
    }

    fn take_pooled(&self, microvm_id: &str, port: u16) -> Option<Pooled> {
        let mut pooled = self.pooled.lock().unwrap_or_else(PoisonError::into_inner);
        match pooled.as_ref() {
            Some(p) if p.port == port && &*p.microvm_id == microvm_id => pooled.take(),
            _ => None,
        }
    }

    fn put_back(&self, pooled: Pooled) {
        *self.pooled.lock().unwrap_or_else(PoisonError::into_inner) = Some(pooled);
    }

    async fn send(
        &self,
        microvm_id: Arc<str>,
        port: u16,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        if let Some(mut pooled) = self.take_pooled(&microvm_id, port) {
            if pooled.sender.ready().await.is_ok() {
                match pooled.sender.try_send_request(req).await {
                    Ok(response) => {
                        self.keep_unless_upgraded(pooled, &response);
                        return Ok(response);
                    }
                    // The guest closed the idle connection before the
                    // request left: safe to send it on a fresh one.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(bad_gateway(e.error())),
                    },
                }
            }
        }
        let mut sender = self.open(&microvm_id, port).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| bad_gateway(&e))?;
        self.keep_unless_upgraded(
            Pooled {
                microvm_id,
                port,
                sender,
            },
            &response,
        );
        Ok(response)
    }

    fn keep_unless_upgraded(&self, pooled: Pooled, response: &Response<Incoming>) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS && !pooled.sender.is_closed() {
            self.put_back(pooled);
        }
    }

    async fn open(
        &self,
        microvm_id: &str,
        port: u16,
    ) -> Result<SendRequest<Incoming>, Response<ProxyBody>> {
        let connecting = self.shared.upstream.connect(microvm_id, port);
        let connected = tokio::time::timeout(self.shared.config.connect_timeout, connecting)
            .await
            .map_err(|_| {
                warn!(microvm_id, port, "connecting to the guest timed out");
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the microVM did not accept the connection in time",
                )
            })?;
        let stream = connected.map_err(|e| match e {
            UpstreamError::NotFound => error(StatusCode::NOT_FOUND, "no such microVM"),
            UpstreamError::Unavailable(reason) => {
                debug!(microvm_id, %reason, "microVM unavailable");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the microVM cannot serve requests now: {reason}"),
                )
            }
            UpstreamError::Refused(reason) => {
                debug!(microvm_id, port, %reason, "guest refused the connection");
                error(
                    StatusCode::BAD_GATEWAY,
                    "nothing in the microVM accepts connections on that port",
                )
            }
        })?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| bad_gateway(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

fn bad_gateway(e: &hyper::Error) -> Response<ProxyBody> {
    debug!(error = %e, "forwarding to the guest failed");
    error(
        StatusCode::BAD_GATEWAY,
        "the guest closed the connection or answered with invalid HTTP",
    )
}

fn unix_now() -> u64 {
    // A clock before 1970 makes every token look expired, which fails safe.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

fn prepare_request(req: &mut Request<Incoming>, upgrade: bool, client: &ClientAddress) {
    strip_credentials(req.headers_mut());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    client.append_to(req.headers_mut());
    *req.version_mut() = Version::HTTP_11;
    // An absolute-form target (`GET http://host/path`) becomes origin-form:
    // the guest is a server, not a proxy.
    if let Some(authority) = req.uri().authority().cloned() {
        if !req.headers().contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
        let mut origin = Uri::builder();
        if let Some(path) = req.uri().path_and_query() {
            origin = origin.path_and_query(path.clone());
        } else {
            origin = origin.path_and_query("/");
        }
        if let Ok(uri) = origin.build() {
            *req.uri_mut() = uri;
        }
    }
}

async fn splice(client: OnUpgrade, upstream: OnUpgrade, mut shutdown: watch::Receiver<()>) {
    let copy = async {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                warn!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(error = %e, "upgraded connection ended");
        }
    };
    tokio::select! {
        () = copy => {}
        _ = shutdown.changed() => {}
    }
}
