//! MicroVM endpoints: the tokens `CreateMicrovmAuthToken` hands out, and
//! the proxy that checks them and forwards HTTP and WebSocket traffic to a
//! guest port through an [`Upstream`] that emberd provides.

pub mod token;
pub mod upstream;

pub use token::{Claims, PortRule, PortScope, TokenError, TokenKey, TokenKind};
pub use upstream::{AsyncStream, Upstream, UpstreamError};
