//! A real guest stand-in: an HTTP/WebSocket app on a loopback port, an
//! `Upstream` that dials it over TCP, and a proxy in front of both.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use ember_proxy::{
    AsyncStream, Claims, PortRule, PortScope, Proxy, ProxyConfig, TokenKey, TokenKind, Upstream,
    UpstreamError,
};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

mod h2;

pub use h2::*;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The guest ports the app serves: one, and a range.
pub const APP_PORT: u16 = 8080;
pub const OTHER_APP_PORT: u16 = 9000;
pub const OTHER_APP_PORT_END: u16 = 9010;
/// A guest port nothing listens on.
pub const CLOSED_PORT: u16 = 7000;
/// The guest port of an app that speaks HTTP/2 only (prior knowledge),
/// like a gRPC server.
pub const H2_APP_PORT: u16 = 50051;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Byte `i` of a download or upload: a pattern a dropped or repeated
/// chunk cannot reproduce.
pub fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// Counts what reached the app, so tests can prove a rejected request
/// never did.
#[derive(Default)]
pub struct AppStats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
}

pub async fn start_app() -> (SocketAddr, Arc<AppStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let app_stats = stats.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            app_stats.connections.fetch_add(1, Ordering::SeqCst);
            let stats = app_stats.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    stats.requests.fetch_add(1, Ordering::SeqCst);
                    app(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, stats)
}

pub(crate) fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

async fn app(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match path.as_str() {
        "/upload" => upload(req).await,
        "/download" => download(req),
        "/slow" => slow(),
        "/first-chunk" => first_chunk(req).await,
        "/ws" => websocket(req),
        _ => echo(req).await,
    })
}

/// Method, target, headers and body, as JSON.
async fn echo(req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::new(full(json.to_string()))
}

async fn upload(req: Request<Incoming>) -> Response<BoxBody> {
    let mut body = req.into_body();
    let mut hash = Sha256::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len();
            hash.update(&data);
        }
    }
    let json = serde_json::json!({ "len": len, "sha256": hex(&hash.finalize()) });
    Response::new(full(json.to_string()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `?n=BYTES` of the pattern, chunked (no Content-Length).
fn download(req: Request<Incoming>) -> Response<BoxBody> {
    let total: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    const CHUNK: usize = 64 * 1024;
    let chunks = futures_util::stream::iter((0..total).step_by(CHUNK).map(move |offset| {
        Ok::<_, std::io::Error>(Frame::data(pattern(offset, CHUNK.min(total - offset))))
    }));
    Response::new(BodyExt::boxed(StreamBody::new(chunks)))
}

/// Three chunks 200 ms apart.
fn slow() -> Response<BoxBody> {
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("chunk{i}\n")))),
            i + 1,
        ))
    });
    Response::new(BodyExt::boxed(StreamBody::new(chunks)))
}

/// Answers as soon as the first body chunk arrived, then reads the rest:
/// only a proxy that streams request bodies can deliver this answer before
/// the client finished sending.
async fn first_chunk(req: Request<Incoming>) -> Response<BoxBody> {
    let mut body = req.into_body();
    let first = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().map(|d| d.len()).unwrap_or(0),
        _ => 0,
    };
    tokio::spawn(async move { while body.frame().await.is_some() {} });
    Response::new(full(format!("first={first}")))
}

/// WebSocket echo. Its first message tells which subprotocols and
/// credential headers reached it.
fn websocket(mut req: Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut answer = Response::new(full("not a websocket request"));
        *answer.status_mut() = StatusCode::BAD_REQUEST;
        return answer;
    };
    let accept = derive_accept_key(key.as_bytes());
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into())
    };
    let seen = format!(
        "protocols={} auth={}",
        header("sec-websocket-protocol"),
        header("x-aws-proxy-auth")
    );
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        ws.send(seen.into()).await.unwrap();
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if ws.send(message).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

/// Dials the app over loopback TCP for the known VMs.
pub struct TcpUpstream {
    app: SocketAddr,
    h2_app: SocketAddr,
    closed: SocketAddr,
    pub touches: Mutex<HashMap<String, usize>>,
    /// Streams opened to the HTTP/2 app.
    pub h2_connects: AtomicUsize,
}

impl TcpUpstream {
    pub fn touches(&self, id: &str) -> usize {
        self.touches.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Upstream for TcpUpstream {
    async fn connect(
        &self,
        microvm_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        match microvm_id {
            "vm-a" | "vm-b" => {}
            "vm-asleep" => return Err(UpstreamError::Unavailable("it is suspended".into())),
            "vm-hangs" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Err(UpstreamError::NotFound);
            }
            _ => return Err(UpstreamError::NotFound),
        }
        let addr = match port {
            APP_PORT | OTHER_APP_PORT..=OTHER_APP_PORT_END => self.app,
            H2_APP_PORT => {
                self.h2_connects.fetch_add(1, Ordering::SeqCst);
                self.h2_app
            }
            _ => self.closed,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        stream.set_nodelay(true).unwrap();
        Ok(Box::new(stream))
    }

    fn touch(&self, microvm_id: &str) {
        *self
            .touches
            .lock()
            .unwrap()
            .entry(microvm_id.to_string())
            .or_default() += 1;
    }
}

pub struct Harness {
    pub proxy: Proxy,
    pub key: Arc<TokenKey>,
    pub upstream: Arc<TcpUpstream>,
    pub app_stats: Arc<AppStats>,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_config(ProxyConfig::default()).await
    }

    pub async fn with_config(config: ProxyConfig) -> Self {
        let (app, app_stats) = start_app().await;
        // A port that was free a moment ago: connecting to it is refused.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let upstream = Arc::new(TcpUpstream {
            app,
            h2_app: start_h2_app().await,
            closed,
            touches: Mutex::default(),
            h2_connects: AtomicUsize::new(0),
        });
        let key = Arc::new(TokenKey::generate());
        let proxy = Proxy::new(key.clone(), upstream.clone(), config);
        Harness {
            proxy,
            key,
            upstream,
            app_stats,
        }
    }

    pub fn token(&self, vm: &str, ports: PortScope, kind: TokenKind) -> String {
        self.key
            .mint(&Claims::new(vm, ports, kind, now(), 600))
            .unwrap()
    }

    /// An endpoint token for `vm` on the apps' ports.
    pub fn endpoint_token(&self, vm: &str) -> String {
        self.token(
            vm,
            PortScope::Only(vec![
                PortRule::Port(APP_PORT),
                PortRule::Port(H2_APP_PORT),
                PortRule::Range {
                    start: OTHER_APP_PORT,
                    end: OTHER_APP_PORT_END,
                },
            ]),
            TokenKind::Endpoint,
        )
    }

    pub fn app_requests(&self) -> usize {
        self.app_stats.requests.load(Ordering::SeqCst)
    }
}

/// One HTTP/1 client connection (keep-alive) to `addr`.
pub async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

pub fn get(path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut builder = Request::get(path).header("host", "127.0.0.1");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(full("")).unwrap()
}

pub fn post(path: &str, headers: &[(&str, &str)], body: BoxBody) -> Request<BoxBody> {
    let mut builder = Request::post(path).header("host", "127.0.0.1");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

pub fn body_of(text: &str) -> BoxBody {
    full(text.to_string())
}

/// Sends `req` on a fresh connection; status and body text.
pub async fn send(addr: SocketAddr, req: Request<BoxBody>) -> (StatusCode, String) {
    let mut sender = client(addr).await;
    send_on(&mut sender, req).await
}

pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<BoxBody>,
    req: Request<BoxBody>,
) -> (StatusCode, String) {
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The header values the echo app received under `name`.
pub fn echoed_headers(echo: &str, name: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(echo).unwrap();
    json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect()
}

/// An answer in full: status, headers, body text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Sends `req` on a fresh HTTP/1.1 connection and reads the whole answer.
pub async fn send_full(addr: SocketAddr, req: Request<BoxBody>) -> Answer {
    let mut sender = client(addr).await;
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
