//! The seam to emberd: how the proxy reaches a port inside a microVM.

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a guest port (for emberd, the agent's `AgentStream`).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Why a guest port could not be reached; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Unknown or terminated microVM → 404.
    #[error("no such microVM")]
    NotFound,
    /// The microVM exists but cannot serve now (starting, failed to
    /// resume, suspended without auto-resume...) → 503.
    #[error("the microVM cannot serve requests now: {0}")]
    Unavailable(String),
    /// Nothing in the guest accepts connections on the port → 502.
    #[error("the guest refused the connection: {0}")]
    Refused(String),
}

#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Opens a byte stream to `port` inside microVM `microvm_id` (resuming
    /// it if needed). `Err(UpstreamError::NotFound)` for an unknown or
    /// terminated VM, `Unavailable(reason)` for one that cannot serve now,
    /// `Refused` when nothing listens on the port.
    ///
    /// Implementations over TCP should set TCP_NODELAY: the proxy writes
    /// small heads and frames it wants delivered at once.
    async fn connect(
        &self,
        microvm_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError>;

    /// Called on every accepted (authenticated) request, for idle
    /// accounting. Must be cheap: it runs on the request path.
    fn touch(&self, microvm_id: &str);
}
