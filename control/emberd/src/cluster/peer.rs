//! Calling another node: where it listens (the `nodes` table), a signed
//! request to its internal listener, and what is asked of it: a tunnel to
//! a guest port or to the shell of a microVM it runs, a lifecycle action
//! on one, or a fork of it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_api::{ApiError, ErrorKind};
use ember_proxy::{AsyncStream, Shell, TerminalSize, UpstreamError};
use ember_store::StateStore;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::internal::{self, HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIME};
use super::key::{nonce, unix_now, ClusterKey, SignedParts};
use super::shell_tunnel;
use super::tls::InternalTls;

/// How long node addresses read from the store are reused: a node that
/// restarts on another port is found again within this.
const ADDRESSES_TTL: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A lifecycle action only records the transition and returns (the work
/// follows in the background), but the owner may first wait for the one
/// in progress; a fork waits for the parent's snapshot.
const ACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of another node's error body read.
const MAX_ANSWER: usize = 64 * 1024;

/// A lifecycle action another node carries out for this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Resume,
    Terminate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Terminate => "terminate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Action::Suspend, Action::Resume, Action::Terminate]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

struct Addresses {
    read_at: Instant,
    by_node: Vec<(String, Option<String>, String)>,
}

/// This node's way to the others.
pub struct Peers {
    key: Arc<ClusterKey>,
    /// Accepts the cluster's certificate only (`tls.rs`).
    tls: tokio_rustls::TlsConnector,
    me: String,
    store: Arc<dyn StateStore>,
    addresses: Mutex<Option<Addresses>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("node {node} serves no internal listener")]
    NoAddress { node: String },
    #[error("node {node} is DEAD")]
    Dead { node: String },
    #[error("node {node} is unknown")]
    Unknown { node: String },
    #[error("reading the nodes: {0}")]
    Store(#[from] ember_store::StoreError),
    #[error("reaching node {node} at {addr}: {why}")]
    Unreachable {
        node: String,
        addr: String,
        why: String,
    },
}

impl Peers {
    pub fn new(
        key: Arc<ClusterKey>,
        tls: Arc<rustls::ClientConfig>,
        me: String,
        store: Arc<dyn StateStore>,
    ) -> Self {
        Peers {
            key,
            tls: tokio_rustls::TlsConnector::from(tls),
            me,
            store,
            addresses: Mutex::new(None),
        }
    }

    /// Opens a byte stream to `port` in `microvm_id`, which `owner` runs.
    pub async fn tunnel(
        &self,
        owner: &str,
        microvm_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        self.upgrade(owner, microvm_id, &internal::tunnel_path(microvm_id, port))
            .await
    }

    /// Starts a shell on a terminal of `size` in `microvm_id`, which
    /// `owner` runs, and carries it over one tunnel.
    pub async fn shell(
        &self,
        owner: &str,
        microvm_id: &str,
        size: TerminalSize,
    ) -> Result<Shell, UpstreamError> {
        let path = internal::shell_path(microvm_id, size);
        let tunnel = self.upgrade(owner, microvm_id, &path).await?;
        Ok(shell_tunnel::open(tunnel))
    }

    /// A signed upgrade to `path` on `owner`: the stream once it answered
    /// 101, else its refusal as the proxy's error.
    async fn upgrade(
        &self,
        owner: &str,
        microvm_id: &str,
        path: &str,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        let unavailable = |e: CallError| {
            UpstreamError::Unavailable(format!("microVM {microvm_id} runs on another node: {e}"))
        };
        let build = |addr: &str| {
            self.signed(path, addr)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, internal::TUNNEL_PROTOCOL)
                .body(Empty::<Bytes>::new())
        };
        let resp = self
            .send_to(owner, build, None)
            .await
            .map_err(unavailable)?;
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
                UpstreamError::Unavailable(format!(
                    "microVM {microvm_id} runs on node {owner}: the tunnel's upgrade: {e}"
                ))
            })?;
            return Ok(Box::new(TokioIo::new(upgraded)));
        }
        let message = answer_message(resp).await;
        Err(match status {
            StatusCode::NOT_FOUND => UpstreamError::NotFound,
            StatusCode::BAD_GATEWAY => UpstreamError::Refused(message),
            _ => UpstreamError::Unavailable(format!("node {owner}: {message}")),
        })
    }

    /// Has `owner` carry out `action` on `microvm_id`; its answer (or
    /// why it could not be asked) is the caller's.
    pub async fn forward(
        &self,
        owner: &str,
        microvm_id: &str,
        action: Action,
    ) -> Result<(), ApiError> {
        let path = internal::action_path(microvm_id, action);
        self.call(owner, microvm_id, action.as_str(), &path)
            .await
            .map(drop)
    }

    /// Has `owner` fork `microvm_id` into `count` children; their ids,
    /// whose rows the owner stored before it answered.
    pub async fn fork(
        &self,
        owner: &str,
        microvm_id: &str,
        count: u32,
    ) -> Result<Vec<String>, ApiError> {
        let path = internal::fork_path(microvm_id, count);
        let body = self.call(owner, microvm_id, "fork", &path).await?;
        let forked: internal::Forked = serde_json::from_slice(&body).map_err(|e| {
            ApiError::internal(format!(
                "node {owner} forked microVM {microvm_id} but its answer is not understood: {e}"
            ))
        })?;
        if forked.microvm_ids.len() != count as usize {
            return Err(ApiError::internal(format!(
                "node {owner} answered a fork of {count} with {} microVMs",
                forked.microvm_ids.len()
            )));
        }
        Ok(forked.microvm_ids)
    }

    /// A signed request for `what` (a verb for the error message) to
    /// `owner`; the body of its success, else its error in the model's
    /// shape.
    async fn call(
        &self,
        owner: &str,
        microvm_id: &str,
        what: &str,
        path: &str,
    ) -> Result<Bytes, ApiError> {
        let cannot = |e: CallError| {
            ApiError::internal(format!(
                "microVM {microvm_id} runs on node {owner}, which could not be asked to \
                 {what}: {e}; retry"
            ))
        };
        let build = |addr: &str| self.signed(path, addr).body(Empty::<Bytes>::new());
        let resp = self
            .send_to(owner, build, Some(ACTION_TIMEOUT))
            .await
            .map_err(cannot)?;
        let status = resp.status();
        let body = read_bounded(resp).await;
        if status.is_success() {
            return Ok(body);
        }
        Err(api_error(status, &body, owner))
    }

    fn signed(&self, path: &str, addr: &str) -> http::request::Builder {
        let (time, nonce) = (unix_now(), nonce());
        let signature = self.key.sign(&SignedParts {
            method: "POST",
            path_and_query: path,
            node: &self.me,
            time,
            nonce: &nonce,
            body: b"",
        });
        Request::post(path)
            .header(header::HOST, addr)
            .header(HEADER_NODE, &self.me)
            .header(HEADER_TIME, time.to_string())
            .header(HEADER_NONCE, nonce)
            .header(HEADER_SIGNATURE, signature)
    }

    /// Sends the request `build` makes for `owner`'s address. When that
    /// address, read a moment ago, no longer answers and the store now
    /// names another (the node restarted on a new port), it is sent once
    /// more there: the old address had nobody to act on it.
    async fn send_to(
        &self,
        owner: &str,
        build: impl Fn(&str) -> http::Result<Request<Empty<Bytes>>>,
        limit: Option<Duration>,
    ) -> Result<Response<Incoming>, CallError> {
        let request = |addr: &str| {
            build(addr).map_err(|e| CallError::Unreachable {
                node: owner.into(),
                addr: addr.into(),
                why: format!("the request: {e}"),
            })
        };
        let addr = self.address(owner).await?;
        match self.send(owner, &addr, request(&addr)?, limit).await {
            Err(e @ CallError::Unreachable { .. }) => {
                *self.lock() = None;
                let again = self.address(owner).await?;
                if again == addr {
                    return Err(e);
                }
                self.send(owner, &again, request(&again)?, limit).await
            }
            answered => answered,
        }
    }

    async fn send(
        &self,
        node: &str,
        addr: &str,
        req: Request<Empty<Bytes>>,
        limit: Option<Duration>,
    ) -> Result<Response<Incoming>, CallError> {
        let unreachable = |why: String| CallError::Unreachable {
            node: node.into(),
            addr: addr.into(),
            why,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("no connection in {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        // Tunnels carry interactive traffic: small writes go out at once.
        let _ = tcp.set_nodelay(true);
        let name = InternalTls::server_name().map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| unreachable(format!("no TLS handshake in {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("a connection to another node ended: {e}");
            }
        });
        let sent = sender.send_request(req);
        let resp = match limit {
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .map_err(|_| unreachable(format!("no answer in {limit:?}")))?,
            // A tunnel's open waits for whatever the owner does first (an
            // auto-resume); the proxy bounds the whole connect.
            None => sent.await,
        };
        resp.map_err(|e| unreachable(e.to_string()))
    }

    /// The internal address of `node`, from a recent read of the store.
    async fn address(&self, node: &str) -> Result<String, CallError> {
        if let Some(found) = self.cached(node) {
            return found;
        }
        let nodes = self.store.nodes().await?;
        let by_node = nodes
            .into_iter()
            .map(|n| (n.id, n.address, n.state))
            .collect();
        *self.lock() = Some(Addresses {
            read_at: Instant::now(),
            by_node,
        });
        self.cached(node).unwrap_or_else(|| {
            Err(CallError::Unknown {
                node: node.to_string(),
            })
        })
    }

    fn cached(&self, node: &str) -> Option<Result<String, CallError>> {
        let held = self.lock();
        let addresses = held
            .as_ref()
            .filter(|a| a.read_at.elapsed() < ADDRESSES_TTL)?;
        let (_, address, state) = addresses.by_node.iter().find(|(id, ..)| id == node)?;
        Some(match (address, state.as_str()) {
            (_, "DEAD") => Err(CallError::Dead { node: node.into() }),
            (Some(a), _) => Ok(a.clone()),
            (None, _) => Err(CallError::NoAddress { node: node.into() }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Addresses>> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

async fn read_bounded(resp: Response<Incoming>) -> Bytes {
    match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

/// The `message` of another node's JSON answer, else its status.
async fn answer_message(resp: Response<Incoming>) -> String {
    let status = resp.status();
    let body = read_bounded(resp).await;
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}"))
}

/// The owner's API error, as it answered: the model's shape and message.
fn api_error(status: StatusCode, body: &[u8], owner: &str) -> ApiError {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |name: &str| json.get(name).and_then(|v| v.as_str());
    let kind = field("__type").and_then(ErrorKind::from_name);
    match (kind, field("message")) {
        (Some(kind), Some(message)) => {
            let err = ApiError::new(kind, message);
            match (field("resourceType"), field("resourceId")) {
                (Some(t), Some(id)) => err.with_resource(t, id),
                _ => err,
            }
        }
        _ => ApiError::internal(format!(
            "node {owner} answered HTTP {status} without an API error"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owners_error_is_passed_on_in_its_shape() {
        let body = br#"{"__type":"ConflictException","message":"microVM m is SUSPENDED","resourceId":"m","resourceType":"microVM"}"#;
        let err = api_error(StatusCode::CONFLICT, body, "n1");
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(err.message(), "microVM m is SUSPENDED");
        assert_eq!(err.details().resource_id.as_deref(), Some("m"));
        let err = api_error(StatusCode::BAD_GATEWAY, b"<html>", "n1");
        assert_eq!(err.kind(), ErrorKind::InternalServer);
        assert!(err.message().contains("node n1"), "{}", err.message());
    }

    #[test]
    fn actions_round_trip_through_their_names() {
        for a in [Action::Suspend, Action::Resume, Action::Terminate] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("fork"), None);
    }
}
