//! The internal listener other nodes call (`--internal-listen`): every
//! request is signed with the cluster key, fresh and seen once; it may ask
//! for a tunnel to a guest port of a microVM this node runs (an HTTP
//! upgrade, then raw bytes both ways), for its shell (an upgrade, then
//! `shell_tunnel`'s frames), for a lifecycle action on it or for a fork.
//! Nothing is forwarded further: a microVM this node does not run is 404.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ember_api::ApiError;
use ember_proxy::{TerminalSize, Upstream, UpstreamError};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::key::{unix_now, ClusterKey, SignatureError, SignedParts, MAX_SKEW_SECS};
use super::peer::Action;
use super::shell_tunnel;
use crate::microvms::{Microvms, VmUpstream};

pub const HEADER_NODE: &str = "x-ember-node";
pub const HEADER_TIME: &str = "x-ember-time";
pub const HEADER_NONCE: &str = "x-ember-nonce";
pub const HEADER_SIGNATURE: &str = "x-ember-signature";
pub const TUNNEL_PROTOCOL: &str = "ember-tunnel";

const PREFIX: &str = "/ember/internal/v1/microvms/";
/// Connections served at once; each tunnel holds one.
const MAX_CONNECTIONS: usize = 8192;
/// Requests carry no body; anything more is not from a node.
const MAX_BODY: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Nonces remembered for replay checks: a window's worth at a high rate.
const MAX_NONCES: usize = 200_000;

pub fn tunnel_path(microvm_id: &str, port: u16) -> String {
    format!("{PREFIX}{microvm_id}/ports/{port}")
}

pub fn action_path(microvm_id: &str, action: Action) -> String {
    format!("{PREFIX}{microvm_id}/actions/{}", action.as_str())
}

pub fn shell_path(microvm_id: &str, size: TerminalSize) -> String {
    format!("{PREFIX}{microvm_id}/shells/{}x{}", size.cols, size.rows)
}

pub fn fork_path(microvm_id: &str, count: u32) -> String {
    format!("{PREFIX}{microvm_id}/forks/{count}")
}

/// The answer to a fork: the children's ids, their rows already stored.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forked {
    pub microvm_ids: Vec<String>,
}

enum Route {
    Tunnel {
        microvm_id: String,
        port: u16,
    },
    Act {
        microvm_id: String,
        action: Action,
    },
    Fork {
        microvm_id: String,
        count: u32,
    },
    Shell {
        microvm_id: String,
        size: TerminalSize,
    },
}

fn terminal_size(s: &str) -> Option<TerminalSize> {
    let (cols, rows) = s.split_once('x')?;
    let size = TerminalSize {
        cols: cols.parse().ok()?,
        rows: rows.parse().ok()?,
    };
    (size.cols > 0 && size.rows > 0).then_some(size)
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let (id, what, arg) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || id.is_empty() {
        return None;
    }
    match what {
        "ports" => Some(Route::Tunnel {
            microvm_id: id.to_string(),
            port: arg.parse().ok().filter(|p| *p != 0)?,
        }),
        "actions" => Some(Route::Act {
            microvm_id: id.to_string(),
            action: Action::parse(arg)?,
        }),
        "shells" => Some(Route::Shell {
            microvm_id: id.to_string(),
            size: terminal_size(arg)?,
        }),
        "forks" => Some(Route::Fork {
            microvm_id: id.to_string(),
            count: arg.parse().ok()?,
        }),
        _ => None,
    }
}

/// Nonces seen within the skew window, each with when it may be forgotten.
#[derive(Default)]
struct Nonces(Mutex<HashMap<String, u64>>);

impl Nonces {
    /// `false` for a nonce seen before, or when the table is full of
    /// fresh ones (refusing is safe: the sender retries later).
    fn first_sight(&self, nonce: &str, now: u64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, forget_at| *forget_at > now);
            if seen.len() >= MAX_NONCES {
                return false;
            }
        }
        // A nonce outlives every time its request could still pass.
        seen.insert(nonce.to_string(), now + 2 * MAX_SKEW_SECS + 1)
            .is_none()
    }
}

struct Internal {
    key: Arc<ClusterKey>,
    microvms: Arc<Microvms>,
    upstream: Arc<VmUpstream>,
    nonces: Nonces,
}

/// Serves other nodes on `listener` for as long as emberd runs.
pub fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    key: Arc<ClusterKey>,
    microvms: Arc<Microvms>,
    upstream: Arc<VmUpstream>,
) {
    let internal = Arc::new(Internal {
        key,
        microvms,
        upstream,
        nonces: Nonces::default(),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("internal listener: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Past the cap the connection is closed unanswered: only
            // nodes call here, and they retry.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, "internal listener: {MAX_CONNECTIONS} connections open; closing one more");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let internal = Arc::clone(&internal);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The handshake is bounded like the headers after it.
                let tls =
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "internal connection: TLS: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "internal connection: no TLS handshake in time");
                            return;
                        }
                    };
                let service = hyper::service::service_fn(move |req| {
                    let internal = Arc::clone(&internal);
                    async move { Ok::<_, std::convert::Infallible>(internal.handle(req).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, "internal connection: {e}");
                }
                drop(slot);
            });
        }
    });
}

impl Internal {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
            return answer(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
        };
        let body = body.to_bytes();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Err(e) = self.verify(parts.method.as_str(), path, &parts.headers, &body) {
            tracing::warn!(path, "internal request refused: {e}");
            return answer(StatusCode::FORBIDDEN, &e.to_string());
        }
        if parts.method != http::Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "only POST is served here");
        }
        match route(parts.uri.path()) {
            Some(Route::Tunnel { microvm_id, port }) => {
                self.tunnel(&microvm_id, port, on_upgrade).await
            }
            Some(Route::Act { microvm_id, action }) => self.act(&microvm_id, action).await,
            Some(Route::Fork { microvm_id, count }) => self.fork(&microvm_id, count).await,
            Some(Route::Shell { microvm_id, size }) => {
                self.shell(&microvm_id, size, on_upgrade).await
            }
            None => answer(StatusCode::NOT_FOUND, "no such internal route"),
        }
    }

    fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(SignatureError::Missing(name))
        };
        let (node, time, nonce, signature) = (
            get(HEADER_NODE)?,
            get(HEADER_TIME)?,
            get(HEADER_NONCE)?,
            get(HEADER_SIGNATURE)?,
        );
        let time = time
            .parse()
            .map_err(|_| SignatureError::Missing(HEADER_TIME))?;
        if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignatureError::BadNonce);
        }
        let now = unix_now();
        self.key.verify(
            &SignedParts {
                method,
                path_and_query,
                node,
                time,
                nonce,
                body,
            },
            signature,
            now,
        )?;
        // Checked last, so only signed requests fill the table.
        if !self.nonces.first_sight(nonce, now) {
            return Err(SignatureError::Replayed);
        }
        Ok(())
    }

    async fn tunnel(
        &self,
        microvm_id: &str,
        port: u16,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<Full<Bytes>> {
        // As for a client of this node's own endpoint: auto-resume under
        // the VM's transition lock, the stream counted open and its bytes
        // as activity for the idle policy.
        let guest = match self.upstream.connect(microvm_id, port).await {
            Ok(guest) => guest,
            Err(e) => return refused(&e),
        };
        self.upstream.touch(microvm_id);
        let id = microvm_id.to_string();
        upgrade_then(microvm_id, on_upgrade, move |mut edge| async move {
            let mut guest = guest;
            if let Err(e) = tokio::io::copy_bidirectional(&mut edge, &mut guest).await {
                tracing::debug!(microvm = %id, "a tunnel ended: {e}");
            }
        })
    }

    /// The shell is started before the answer, so that a refusal (no
    /// SHELL_INGRESS, a guest that cannot start one) is a status.
    async fn shell(
        &self,
        microvm_id: &str,
        size: TerminalSize,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<Full<Bytes>> {
        let shell = match self.upstream.open_shell(microvm_id, size).await {
            Ok(shell) => shell,
            Err(e) => return refused(&e),
        };
        self.upstream.touch(microvm_id);
        upgrade_then(microvm_id, on_upgrade, move |edge| {
            shell_tunnel::serve(edge, shell)
        })
    }

    async fn act(&self, microvm_id: &str, action: Action) -> Response<Full<Bytes>> {
        match self.microvms.act_here(microvm_id, action).await {
            Ok(()) => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            Err(e) => api_error(&e),
        }
    }

    async fn fork(&self, microvm_id: &str, count: u32) -> Response<Full<Bytes>> {
        // Only a VM this node runs: a fork is never passed on again.
        if self.microvms.instance(microvm_id).is_none() {
            return api_error(&ApiError::conflict(
                "microVM",
                microvm_id,
                format!(
                    "microVM {microvm_id} is not running on the node it was forwarded to; retry"
                ),
            ));
        }
        match self.microvms.fork(microvm_id, count).await {
            Ok(records) => {
                let forked = Forked {
                    microvm_ids: records.into_iter().map(|r| r.id).collect(),
                };
                match serde_json::to_value(&forked) {
                    Ok(body) => json(StatusCode::OK, &body),
                    Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            Err(e) => api_error(&e),
        }
    }
}

/// Answers 101 and, once the caller's connection is upgraded, has `serve`
/// carry it on its own task.
fn upgrade_then<F, Fut>(
    microvm_id: &str,
    on_upgrade: hyper::upgrade::OnUpgrade,
    serve: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let id = microvm_id.to_string();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(microvm = %id, "a tunnel was not upgraded: {e}"),
        }
    });
    switching_protocols()
}

fn refused(e: &UpstreamError) -> Response<Full<Bytes>> {
    let status = match e {
        UpstreamError::NotFound => StatusCode::NOT_FOUND,
        UpstreamError::Refused(_) => StatusCode::BAD_GATEWAY,
        UpstreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    answer(status, &e.to_string())
}

fn switching_protocols() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        http::HeaderValue::from_static(TUNNEL_PROTOCOL),
    );
    resp
}

fn api_error(e: &ApiError) -> Response<Full<Bytes>> {
    json(e.status(), &e.body())
}

fn answer(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "message": message }))
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_one_microvm_and_a_port_or_an_action() {
        assert!(matches!(
            route("/ember/internal/v1/microvms/m-1/ports/8080"),
            Some(Route::Tunnel { port: 8080, .. })
        ));
        assert!(matches!(
            route("/ember/internal/v1/microvms/m-1/actions/terminate"),
            Some(Route::Act {
                action: Action::Terminate,
                ..
            })
        ));
        assert!(matches!(
            route("/ember/internal/v1/microvms/m-1/forks/3"),
            Some(Route::Fork { count: 3, .. })
        ));
        assert!(matches!(
            route("/ember/internal/v1/microvms/m-1/shells/132x50"),
            Some(Route::Shell {
                size: TerminalSize {
                    cols: 132,
                    rows: 50
                },
                ..
            })
        ));
        for bad in [
            "/ember/internal/v1/microvms/m-1/ports/0",
            "/ember/internal/v1/microvms/m-1/ports/70000",
            "/ember/internal/v1/microvms/m-1/actions/fork",
            "/ember/internal/v1/microvms/m-1/forks/x",
            "/ember/internal/v1/microvms/m-1/shells/0x24",
            "/ember/internal/v1/microvms/m-1/shells/80",
            "/ember/internal/v1/microvms//ports/1",
            "/ember/internal/v1/microvms/m-1/ports/1/x",
            "/elsewhere",
        ] {
            assert!(route(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_nonce_passes_once() {
        let nonces = Nonces::default();
        assert!(nonces.first_sight("00aa", 100));
        assert!(!nonces.first_sight("00aa", 101));
        assert!(nonces.first_sight("00ab", 101));
    }
}
