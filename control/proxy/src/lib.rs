//! MicroVM endpoints: the tokens `CreateMicrovmAuthToken` and
//! `CreateMicrovmShellAuthToken` hand out, and the proxy that checks them
//! and forwards HTTP and WebSocket traffic to a guest port, or serves the
//! shell at `/shell`, through an [`Upstream`] that emberd provides.
//!
//! emberd's part:
//! - `TokenKey::load_or_create(data_dir/"proxy.key")` once; on
//!   `CreateMicrovmAuthToken`, `key.mint(&Claims::new(id, scope,
//!   TokenKind::Endpoint, now, minutes * 60))` and answer
//!   `{"X-aws-proxy-auth": token}`.
//! - `Proxy::new(key, upstream, ProxyConfig::default())`; `bind_vm(id)` when
//!   a microVM starts (store the address; `bind_vm_at` after a restart),
//!   `unbind_vm(id)` when it is deleted; optionally `serve_shared` for
//!   `<id>.<domain>` behind wildcard DNS.
//! - `Upstream::open_shell` starts a shell in a VM; the proxy does the
//!   WebSocket and its framing (see `shell.rs`'s module docs).
//!
//! Clients send `X-aws-proxy-auth: <token>` and, for a port other than
//! 8080, `X-aws-proxy-port: <port>`, or for WebSockets
//! `Sec-WebSocket-Protocol: lambda-microvms,
//! lambda-microvms.authentication.<token>, lambda-microvms.port.<port>`.
//! Clients may speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c) on the
//! same listener, or over TLS (`ProxyConfig::tls`) either one by ALPN.
//! The app is reached over HTTP/1.1, or over HTTP/2 (prior knowledge) when
//! the request carries `X-aws-proxy-force-h2: true`, which is what gRPC
//! needs: its trailers pass h2 to h2. The guest never sees an
//! `X-aws-proxy-*` header.
//!
//! `GET /shell` with a shell token (same header or subprotocol) opens the
//! shell; with any other token it is a request for the app.
//!
//! Every answer the proxy makes itself has a JSON `{"message": ...}` body
//! and an `x-aws-proxy-error` header with one [`ProxyErrorCode`], which
//! fixes the status: `UNAUTHORIZED` 403 (token missing, malformed,
//! expired, not signed by this host, for another microVM, or a shell
//! token), `PORT_NOT_ALLOWED` 403 (the port, 8080 by default, is outside
//! the token's scope), `INVALID_PORT` 400, `MICROVM_NOT_FOUND` 404 (unknown
//! microVM or host name), `MICROVM_UNAVAILABLE` 503 (it cannot serve now),
//! `APP_CONNECT_FAILED` 502 (nothing listens on the guest port),
//! `APP_TIMEOUT` 504 (connecting took longer than
//! `ProxyConfig::connect_timeout`), `APP_PROTOCOL_ERROR` 502 (the guest
//! closed the connection or broke the protocol asked for).

mod auth;
mod caps;
mod error_code;
mod forward;
mod headers;
mod idle;
mod observer;
mod pool;
pub mod proxy;
mod response;
mod routing;
pub mod scope;
mod serve;
mod shell;
pub mod tap;
mod tls;
pub mod token;
pub mod upstream;

pub use auth::DEFAULT_PORT;
pub use error_code::{ProxyErrorCode, ERROR_HEADER};
pub use observer::{Observer, ProxyObserver};
pub use proxy::{Proxy, ProxyConfig, ProxyError};
pub use shell::MAX_MESSAGE as MAX_SHELL_MESSAGE;
pub use tls::EndpointTls;
pub use token::{Claims, PortRule, PortScope, TokenError, TokenKey, TokenKind};
pub use upstream::{
    AsyncStream, Shell, ShellControl, ShellError, ShellExit, TerminalSize, Upstream, UpstreamError,
};
