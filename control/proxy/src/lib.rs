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
//! Clients send `X-aws-proxy-auth: <token>` and `X-aws-proxy-port: <port>`
//! (the port may be left out when the token allows exactly one port), or
//! for WebSockets `Sec-WebSocket-Protocol: lambda-microvms,
//! lambda-microvms.authentication.<token>, lambda-microvms.port.<port>`.
//!
//! `GET /shell` with a shell token (same header or subprotocol) opens the
//! shell; with any other token it is a request for the app.
//!
//! Status codes the proxy answers itself, all with a JSON
//! `{"message": ...}` body: 401 (token missing, malformed, expired, or
//! not signed by this host), 403 (token for another microVM, a shell token,
//! or a port outside the token's scope), 400 (no or malformed port when the
//! token allows more than one), 404 (unknown microVM or host name), 503
//! (microVM cannot serve now), 502 (nothing listens on the guest port, or
//! the guest broke HTTP), 504 (connecting took longer than
//! `ProxyConfig::connect_timeout`).

mod auth;
mod forward;
mod headers;
pub mod proxy;
mod response;
mod routing;
pub mod scope;
mod shell;
pub mod token;
pub mod upstream;

pub use proxy::{Proxy, ProxyConfig, ProxyError};
pub use shell::MAX_MESSAGE as MAX_SHELL_MESSAGE;
pub use token::{Claims, PortRule, PortScope, TokenError, TokenKey, TokenKind};
pub use upstream::{
    AsyncStream, Shell, ShellControl, ShellError, ShellExit, TerminalSize, Upstream, UpstreamError,
};
