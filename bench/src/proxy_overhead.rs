//! Proxy overhead, measured in-process: the same small HTTP server on
//! loopback, asked directly and through `ember-proxy` (token checked,
//! headers rewritten, a fresh upstream stream per client connection), with
//! the same keep-alive client. The difference is what the proxy costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_proxy::{
    AsyncStream, Claims, PortScope, Proxy, ProxyConfig, TokenKey, TokenKind, Upstream,
    UpstreamError,
};

use crate::median;

const REQUESTS: usize = 2000;
const RPS_WINDOW: Duration = Duration::from_secs(3);
const RPS_CONNECTIONS: usize = 16;

/// Connects every VM id to the loopback server.
struct LoopbackUpstream(SocketAddr);

#[async_trait::async_trait]
impl Upstream for LoopbackUpstream {
    async fn connect(&self, _: &str, _: u16) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        let s = tokio::net::TcpStream::connect(self.0)
            .await
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    }

    fn touch(&self, _: &str) {}
}

pub struct ProxyFigures {
    pub direct_p50_ms: f64,
    pub proxied_p50_ms: f64,
    pub proxied_rps: f64,
}

pub async fn measure() -> anyhow::Result<ProxyFigures> {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = server.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(server, app).await });

    let key = Arc::new(TokenKey::generate());
    let proxy = Proxy::new(
        Arc::clone(&key),
        Arc::new(LoopbackUpstream(server_addr)),
        ProxyConfig::default(),
    );
    let vm_addr = proxy.bind_vm("bench").await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = key.mint(&Claims::new(
        "bench",
        PortScope::All,
        TokenKind::Endpoint,
        now,
        600,
    ))?;
    let direct = format!("http://{server_addr}/");
    let proxied = format!("http://{vm_addr}/");
    let headers = |r: reqwest::RequestBuilder| {
        r.header("X-aws-proxy-auth", &token)
            .header("X-aws-proxy-port", "80")
    };

    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    // Interleaved, so drift in the machine's speed hits both alike.
    let (mut d, mut p) = (Vec::with_capacity(REQUESTS), Vec::with_capacity(REQUESTS));
    for _ in 0..REQUESTS {
        d.push(time_get(client.get(&direct)).await?);
        p.push(time_get(headers(client.get(&proxied))).await?);
    }

    let deadline = Instant::now() + RPS_WINDOW;
    let mut workers = Vec::new();
    for _ in 0..RPS_CONNECTIONS {
        let (url, token) = (proxied.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = client
                    .get(&url)
                    .header("X-aws-proxy-auth", &token)
                    .header("X-aws-proxy-port", "80")
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "proxied {}", r.status());
                r.bytes().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.context("rps worker")??;
    }
    Ok(ProxyFigures {
        direct_p50_ms: median(d),
        proxied_p50_ms: median(p),
        proxied_rps: total as f64 / RPS_WINDOW.as_secs_f64(),
    })
}

async fn time_get(req: reqwest::RequestBuilder) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = req.send().await?;
    anyhow::ensure!(r.status().is_success(), "status {}", r.status());
    r.bytes().await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}
