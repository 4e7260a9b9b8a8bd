//! Why the proxy answered a request itself: one machine-readable code per
//! reason, sent in `x-aws-proxy-error` beside the JSON message, so clients
//! can tell the proxy's answers from the app's (an app may answer 403 or
//! 502 too) the way they can on AWS Lambda MicroVMs.

use http::header::HeaderName;
use http::{HeaderValue, StatusCode};

/// The header every answer of the proxy's own carries.
pub static ERROR_HEADER: HeaderName = HeaderName::from_static("x-aws-proxy-error");

/// The proxy's reasons for answering instead of the app. The one place
/// that says which status and header text each has.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyErrorCode {
    /// No token, or one that is malformed, expired, signed by another
    /// host, for another microVM, or of the wrong kind → 403.
    Unauthorized,
    /// A valid token whose scope does not include the port → 403.
    PortNotAllowed,
    /// `X-aws-proxy-port` (or the port subprotocol) is not 1..=65535 → 400.
    InvalidPort,
    /// A request the proxy itself serves (the shell's WebSocket handshake)
    /// is malformed → 400.
    InvalidRequest,
    /// No microVM at this endpoint or host name → 404.
    MicrovmNotFound,
    /// The microVM exists but cannot serve now (starting, resume failed,
    /// suspended without auto-resume) → 503.
    MicrovmUnavailable,
    /// Nothing in the guest accepts connections on the port → 502.
    AppConnectFailed,
    /// The guest did not accept the connection in time → 504.
    AppTimeout,
    /// The guest closed the connection or did not speak the protocol the
    /// request asked for (HTTP/1.1, or HTTP/2 with `X-aws-proxy-force-h2`)
    /// → 502.
    AppProtocolError,
}

impl ProxyErrorCode {
    pub const fn status(self) -> StatusCode {
        match self {
            ProxyErrorCode::Unauthorized | ProxyErrorCode::PortNotAllowed => StatusCode::FORBIDDEN,
            ProxyErrorCode::InvalidPort | ProxyErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ProxyErrorCode::MicrovmNotFound => StatusCode::NOT_FOUND,
            ProxyErrorCode::MicrovmUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyErrorCode::AppConnectFailed | ProxyErrorCode::AppProtocolError => {
                StatusCode::BAD_GATEWAY
            }
            ProxyErrorCode::AppTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `x-aws-proxy-error` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProxyErrorCode::Unauthorized => "UNAUTHORIZED",
            ProxyErrorCode::PortNotAllowed => "PORT_NOT_ALLOWED",
            ProxyErrorCode::InvalidPort => "INVALID_PORT",
            ProxyErrorCode::InvalidRequest => "INVALID_REQUEST",
            ProxyErrorCode::MicrovmNotFound => "MICROVM_NOT_FOUND",
            ProxyErrorCode::MicrovmUnavailable => "MICROVM_UNAVAILABLE",
            ProxyErrorCode::AppConnectFailed => "APP_CONNECT_FAILED",
            ProxyErrorCode::AppTimeout => "APP_TIMEOUT",
            ProxyErrorCode::AppProtocolError => "APP_PROTOCOL_ERROR",
        }
    }

    pub const fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

impl std::fmt::Display for ProxyErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ProxyErrorCode::*;

    #[test]
    fn codes_are_distinct_upper_snake_case_and_errors() {
        let all = [
            Unauthorized,
            PortNotAllowed,
            InvalidPort,
            InvalidRequest,
            MicrovmNotFound,
            MicrovmUnavailable,
            AppConnectFailed,
            AppTimeout,
            AppProtocolError,
        ];
        let mut texts: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), all.len());
        for code in all {
            assert!(code
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(Unauthorized.status(), 403);
        assert_eq!(AppConnectFailed.as_str(), "APP_CONNECT_FAILED");
    }
}
