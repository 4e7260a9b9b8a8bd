//! MicroVM endpoints: the tokens `CreateMicrovmAuthToken` hands out, and
//! the proxy that checks them and forwards HTTP and WebSocket traffic to a
//! guest port through an [`Upstream`] that emberd provides.
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
pub mod token;
pub mod upstream;

pub use proxy::{Proxy, ProxyConfig, ProxyError};
pub use token::{Claims, PortRule, PortScope, TokenError, TokenKey, TokenKind};
pub use upstream::{AsyncStream, Upstream, UpstreamError};
