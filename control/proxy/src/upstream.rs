//! The seam to emberd: how the proxy reaches a port, or a shell, inside a
//! microVM.

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a guest port (for emberd, the agent's `AgentStream`).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Why a guest port (or shell) could not be reached; each maps to one HTTP
/// status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Unknown or terminated microVM → 404.
    #[error("no such microVM")]
    NotFound,
    /// The microVM exists but cannot serve now (starting, failed to
    /// resume, suspended without auto-resume...) → 503.
    #[error("the microVM cannot serve requests now: {0}")]
    Unavailable(String),
    /// Nothing in the guest accepts connections on the port, or the guest
    /// could not start a shell → 502.
    #[error("the guest refused the connection: {0}")]
    Refused(String),
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

impl TerminalSize {
    /// What a shell starts with until the client says otherwise (a VT100's).
    pub const DEFAULT: TerminalSize = TerminalSize { cols: 80, rows: 24 };
}

/// How a shell ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// A shell's side channel failed (the guest went away, or broke the
/// protocol); the words are for logs, never for clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ShellError(pub String);

/// Everything about a running shell but its terminal bytes.
#[async_trait]
pub trait ShellControl: Send + Sync {
    /// Sets the terminal's size (the guest's foreground job gets SIGWINCH).
    async fn resize(&self, size: TerminalSize) -> Result<(), ShellError>;

    /// Waits for the shell to exit; every byte of its output is readable
    /// from the terminal by then.
    async fn wait(&self) -> Result<ShellExit, ShellError>;
}

/// A shell running on a guest terminal.
pub struct Shell {
    /// Reading yields the terminal's output, writing types into it, EOF
    /// after the shell exited and its output was read. Dropping it hangs
    /// the terminal up (the shell gets SIGHUP).
    pub terminal: Box<dyn AsyncStream>,
    pub control: Box<dyn ShellControl>,
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

    /// Starts a shell on a terminal of `size` inside `microvm_id`
    /// (resuming it if needed), for a client holding a shell token: errors
    /// as for [`connect`](Self::connect), `Refused` when the guest could
    /// not start one. The default serves no shells.
    async fn open_shell(
        &self,
        microvm_id: &str,
        size: TerminalSize,
    ) -> Result<Shell, UpstreamError> {
        let _ = (microvm_id, size);
        Err(UpstreamError::Unavailable(
            "this endpoint serves no shells".into(),
        ))
    }

    /// Called on every accepted (authenticated) request, for idle
    /// accounting. Must be cheap: it runs on the request path.
    fn touch(&self, microvm_id: &str);
}
