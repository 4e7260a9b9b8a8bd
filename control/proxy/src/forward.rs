//! One client connection (HTTP/1.1 or HTTP/2): authenticate each request,
//! forward it over the upstream connections the connection keeps (HTTP/1.1
//! unless the request forces HTTP/2), and splice upgraded (WebSocket)
//! connections; `/shell` with a shell token goes to the shell (`shell.rs`)
//! instead.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HOST, SEC_WEBSOCKET_PROTOCOL};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::auth::{authorize, strip_credentials, SUBPROTOCOL};
use crate::caps::VmPlace;
use crate::error_code::ProxyErrorCode;
use crate::headers::{
    strip_for_h2, strip_hop_by_hop, wants_h2_upstream, wants_upgrade, ClientAddress,
};
use crate::idle::Activity;
use crate::pool::{AppProtocol, UpstreamPool};
use crate::proxy::Shared;
use crate::response::{error, ProxyBody};
use crate::routing::{request_host, vm_from_host, Route};
use crate::shell;
use crate::tap::Tap;

static SUBPROTOCOL_VALUE: HeaderValue = HeaderValue::from_static(SUBPROTOCOL);

pub(crate) struct ClientConnection {
    shared: Arc<Shared>,
    route: Route,
    client: ClientAddress,
    upstreams: UpstreamPool,
    /// Ends spliced WebSocket connections when the listener is unbound.
    shutdown: watch::Receiver<()>,
    /// Also the idle clock of the connections it upgrades.
    activity: Arc<Activity>,
    /// On a shared listener, its places under the caps of the microVMs it
    /// sent requests for.
    places: Mutex<Vec<VmPlace>>,
}

impl ClientConnection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        route: Route,
        client: ClientAddress,
        shutdown: watch::Receiver<()>,
        activity: Arc<Activity>,
    ) -> Self {
        ClientConnection {
            shared,
            route,
            client,
            upstreams: UpstreamPool::default(),
            shutdown,
            activity,
            places: Mutex::new(Vec::new()),
        }
    }

    /// Counts this connection against `microvm_id`'s cap on a shared
    /// listener (a per-VM listener's own cap already did); false past it.
    fn hold_place(&self, microvm_id: &Arc<str>) -> bool {
        if let Route::Fixed(_) = self.route {
            return true;
        }
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        if places.iter().any(|p| p.microvm_id() == &**microvm_id) {
            return true;
        }
        match self.shared.vm_counts.take(microvm_id) {
            Some(place) => {
                places.push(place);
                true
            }
            None => false,
        }
    }

    pub(crate) async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let microvm_id = match &self.route {
            Route::Fixed(id) => id.clone(),
            Route::Wildcard(domain) => {
                match request_host(&req).and_then(|h| vm_from_host(h, domain)) {
                    Some(label) => self.upstreams.interned_id(label),
                    None => {
                        return error(
                            ProxyErrorCode::MicrovmNotFound,
                            "no microVM endpoint at this host name",
                        )
                    }
                }
            }
        };
        if let Some(shell) = shell::shell_request(&self.shared.key, &req, &microvm_id, unix_now()) {
            if !self.hold_place(&microvm_id) {
                return too_many_connections();
            }
            self.shared.upstream.touch(&microvm_id);
            return shell::open(&self.shared, &microvm_id, req, shell, self.shutdown.clone()).await;
        }
        let grant = match authorize(&self.shared.key, req.headers(), &microvm_id, unix_now()) {
            Ok(grant) => grant,
            Err(rejection) => return error(rejection.code, rejection.message),
        };
        if !self.hold_place(&microvm_id) {
            return too_many_connections();
        }
        self.shared.upstream.touch(&microvm_id);

        let upgrade = wants_upgrade(req.headers());
        // An upgrade needs HTTP/1.1 on both hops.
        let protocol = if !upgrade && wants_h2_upstream(req.headers()) {
            AppProtocol::Http2
        } else {
            AppProtocol::Http1
        };
        let client_version = req.version();
        prepare_request(&mut req, upgrade, protocol, &self.client);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let sent = self
            .upstreams
            .send(&self.shared, microvm_id, grant.port, protocol, req)
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(answer) => return answer,
        };
        // The client's hop has its own version; hyper's HTTP/1.1 server
        // would otherwise complain about an HTTP/2 answer.
        *response.version_mut() = match client_version {
            Version::HTTP_2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return error(
                    ProxyErrorCode::AppProtocolError,
                    "the guest switched protocols on a request that did not ask to",
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            // The HTTP/1.1 connection ends with the upgrade; the splice
            // keeps its places.
            let places =
                std::mem::take(&mut *self.places.lock().unwrap_or_else(PoisonError::into_inner));
            tokio::spawn(splice(
                places,
                client_upgrade,
                upstream_upgrade,
                self.shutdown.clone(),
                Arc::clone(&self.activity),
                self.shared.config.idle_timeout,
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
}

fn too_many_connections() -> Response<ProxyBody> {
    error(
        ProxyErrorCode::MicrovmUnavailable,
        "the microVM's endpoint has too many open connections; retry later",
    )
}

fn unix_now() -> u64 {
    // A clock before 1970 makes every token look expired, which fails safe.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

fn prepare_request(
    req: &mut Request<Incoming>,
    upgrade: bool,
    protocol: AppProtocol,
    client: &ClientAddress,
) {
    strip_credentials(req.headers_mut());
    match protocol {
        AppProtocol::Http1 => strip_hop_by_hop(req.headers_mut(), upgrade),
        AppProtocol::Http2 => strip_for_h2(req.headers_mut()),
    }
    client.append_to(req.headers_mut());
    match protocol {
        AppProtocol::Http1 => to_http1(req),
        AppProtocol::Http2 => to_http2(req),
    }
}

/// Origin-form target and a `Host` header: an absolute-form target (`GET
/// http://host/path`, or an HTTP/2 request's `:authority`) names the host
/// in the URI, but the guest is a server, not a proxy.
fn to_http1(req: &mut Request<Incoming>) {
    *req.version_mut() = Version::HTTP_11;
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

/// `:scheme`, `:authority` and `:path` come from the URI on HTTP/2, which
/// an HTTP/1.1 client gave only a path and a `Host` header for.
fn to_http2(req: &mut Request<Incoming>) {
    *req.version_mut() = Version::HTTP_2;
    let host = req.headers_mut().remove(HOST);
    let authority = req.uri().authority().cloned().or_else(|| {
        host.as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.unwrap_or_else(|| Authority::from_static("localhost")));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Copies both ways until either side closes, the listener shuts down or
/// no byte moved either way for `idle_timeout`.
async fn splice(
    _places: Vec<VmPlace>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut shutdown: watch::Receiver<()>,
    activity: Arc<Activity>,
    idle_timeout: std::time::Duration,
) {
    let copy = async {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                warn!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let watched = Arc::clone(&activity);
        let mut client = Tap::new(TokioIo::new(client), move |_, _| watched.mark());
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(error = %e, "upgraded connection ended");
        }
    };
    tokio::select! {
        () = copy => {}
        _ = shutdown.changed() => {}
        () = activity.idle_for(idle_timeout) => {
            debug!("closed an idle upgraded connection");
        }
    }
}
