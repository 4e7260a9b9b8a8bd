//! HTTP requests to a port inside a guest, carried over the agent's
//! stream channel: lifecycle hooks and readiness probes need no guest
//! network card.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use ember_vmm::agent::AgentClient;

/// Largest hook answer read back; hooks answer with a status, not data.
const MAX_HOOK_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GuestHttpError {
    #[error("nothing accepts connections on guest port {port}: {message}")]
    Connect { port: u16, message: String },
    #[error("HTTP {method} {path} on guest port {port}: {message}")]
    Http {
        method: &'static str,
        path: String,
        port: u16,
        message: String,
    },
    #[error("HTTP {method} {path} on guest port {port} did not answer within {timeout:?}")]
    Timeout {
        method: &'static str,
        path: String,
        port: u16,
        timeout: Duration,
    },
}

/// What a guest answered.
#[derive(Debug, Clone)]
pub struct GuestAnswer {
    pub status: u16,
    pub body: Bytes,
}

/// True once something in the guest accepts TCP connections on `port`.
pub async fn port_accepts(agent: &AgentClient, port: u16) -> bool {
    agent.connect(port).await.is_ok()
}

/// One request with its own connection, bounded by `timeout`.
pub async fn request(
    agent: &AgentClient,
    port: u16,
    method: &'static str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<GuestAnswer, GuestHttpError> {
    let err = |message: String| GuestHttpError::Http {
        method,
        path: path.to_string(),
        port,
        message,
    };
    let exchange = async {
        let stream = agent
            .connect(port)
            .await
            .map_err(|e| GuestHttpError::Connect {
                port,
                message: e.to_string(),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"));
        // Only `/run` has a body; the other hooks' bodies are empty.
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body)).map_err(|e| err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_HOOK_ANSWER)
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok(GuestAnswer { status, body })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(GuestHttpError::Timeout {
            method,
            path: path.to_string(),
            port,
            timeout,
        }),
    }
}
