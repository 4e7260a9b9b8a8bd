//! The proxy's integration tests against real sockets and servers, in one test binary.

mod common;

mod bounds;
mod clients;
mod forwarding;
mod http2;
mod rejections;
mod routing;
mod shell;
mod websocket;
