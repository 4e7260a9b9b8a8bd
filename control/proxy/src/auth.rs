//! Who may reach which guest port: the token and port a request carries,
//! checked against the microVM the request is routed to.
//!
//! Credentials come from `X-aws-proxy-auth` / `X-aws-proxy-port`, or — for
//! browsers' WebSocket API, which cannot set headers — from subprotocol
//! entries: `Sec-WebSocket-Protocol: lambda-microvms,
//! lambda-microvms.authentication.<token>, lambda-microvms.port.<port>`.
//!
//! A request that names no port is for [`DEFAULT_PORT`], as on AWS Lambda
//! MicroVMs; the token must allow it like any other port.

use http::header::{HeaderName, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue};

use crate::error_code::ProxyErrorCode;
use crate::headers::strip_proxy_headers;
use crate::token::{Claims, TokenError, TokenKey, TokenKind};

pub(crate) static AUTH_HEADER: HeaderName = HeaderName::from_static("x-aws-proxy-auth");
pub(crate) static PORT_HEADER: HeaderName = HeaderName::from_static("x-aws-proxy-port");

/// The guest port of a request that names none.
pub const DEFAULT_PORT: u16 = 8080;

/// The subprotocol the proxy answers a subprotocol-authenticated upgrade
/// with.
pub(crate) const SUBPROTOCOL: &str = "lambda-microvms";
const SUBPROTOCOL_TOKEN: &str = "lambda-microvms.authentication.";
const SUBPROTOCOL_PORT: &str = "lambda-microvms.port.";

/// A request that may go through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub port: u16,
    /// The client offered `lambda-microvms`; the 101 must name it.
    pub answer_subprotocol: bool,
}

/// Why a request is turned away before it reaches a guest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejection {
    pub code: ProxyErrorCode,
    pub message: &'static str,
}

const fn reject(code: ProxyErrorCode, message: &'static str) -> Rejection {
    Rejection { code, message }
}

/// A shell session that may start (`GET /shell`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShellGrant {
    /// The client offered `lambda-microvms`; the 101 must name it.
    pub answer_subprotocol: bool,
}

/// Checks the request's credentials for `microvm_id` at `now`.
pub(crate) fn authorize(
    key: &TokenKey,
    headers: &HeaderMap,
    microvm_id: &str,
    now: u64,
) -> Result<Grant, Rejection> {
    let offered = Subprotocols::parse(headers);
    let claims = verified(key, headers, &offered, microvm_id, TokenKind::Endpoint, now)?;
    let port_text = match headers.get(&PORT_HEADER) {
        Some(value) => Some(value.to_str().unwrap_or("")),
        None => offered.port,
    };
    let port = match port_text {
        Some(text) => parse_port(text).ok_or(reject(
            ProxyErrorCode::InvalidPort,
            "the port must be a number from 1 to 65535",
        ))?,
        None => DEFAULT_PORT,
    };
    if !claims.ports.allows(port) {
        return Err(reject(
            ProxyErrorCode::PortNotAllowed,
            "the authentication token does not allow this port (8080 when X-aws-proxy-port is not sent)",
        ));
    }
    Ok(Grant {
        port,
        answer_subprotocol: offered.ours,
    })
}

/// Checks a shell request's credentials (a `CreateMicrovmShellAuthToken`
/// token, sent like an endpoint token) for `microvm_id` at `now`.
pub(crate) fn authorize_shell(
    key: &TokenKey,
    headers: &HeaderMap,
    microvm_id: &str,
    now: u64,
) -> Result<ShellGrant, Rejection> {
    let offered = Subprotocols::parse(headers);
    verified(key, headers, &offered, microvm_id, TokenKind::Shell, now)?;
    Ok(ShellGrant {
        answer_subprotocol: offered.ours,
    })
}

/// The request's token (header first, else subprotocol), verified and
/// checked to be of `kind` for `microvm_id`.
fn verified(
    key: &TokenKey,
    headers: &HeaderMap,
    offered: &Subprotocols<'_>,
    microvm_id: &str,
    kind: TokenKind,
    now: u64,
) -> Result<Claims, Rejection> {
    let token = match headers.get(&AUTH_HEADER) {
        Some(value) => value.to_str().map_err(|_| {
            reject(
                ProxyErrorCode::Unauthorized,
                "the X-aws-proxy-auth header is malformed",
            )
        })?,
        None => offered.token.ok_or(reject(
            ProxyErrorCode::Unauthorized,
            "missing authentication token: send it in the X-aws-proxy-auth header",
        ))?,
    };
    let claims = key.verify(token, now).map_err(|e| match e {
        TokenError::Expired => reject(
            ProxyErrorCode::Unauthorized,
            "the authentication token expired",
        ),
        _ => reject(
            ProxyErrorCode::Unauthorized,
            "the authentication token is not valid",
        ),
    })?;
    if claims.microvm_id != microvm_id {
        return Err(reject(
            ProxyErrorCode::Unauthorized,
            "the authentication token is for another microVM",
        ));
    }
    if claims.kind != kind {
        return Err(reject(
            ProxyErrorCode::Unauthorized,
            match kind {
                TokenKind::Endpoint => "a shell token does not open the microVM endpoint",
                TokenKind::Shell => "an endpoint token does not open the shell",
            },
        ));
    }
    Ok(claims)
}

fn parse_port(text: &str) -> Option<u16> {
    // `u16::from_str` accepts a leading '+'; a port header should not.
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|p| *p != 0)
}

/// The proxy's entries among the offered WebSocket subprotocols.
#[derive(Default)]
struct Subprotocols<'a> {
    ours: bool,
    token: Option<&'a str>,
    port: Option<&'a str>,
}

impl<'a> Subprotocols<'a> {
    fn parse(headers: &'a HeaderMap) -> Self {
        let mut found = Subprotocols::default();
        for entry in subprotocol_entries(headers) {
            if entry == SUBPROTOCOL {
                found.ours = true;
            } else if let Some(token) = entry.strip_prefix(SUBPROTOCOL_TOKEN) {
                found.token = Some(token);
            } else if let Some(port) = entry.strip_prefix(SUBPROTOCOL_PORT) {
                found.port = Some(port);
            }
        }
        found
    }
}

fn subprotocol_entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

fn is_ours(entry: &str) -> bool {
    entry == SUBPROTOCOL || entry.starts_with("lambda-microvms.")
}

/// Removes the credentials so the guest never sees a token: the
/// `X-aws-proxy-*` headers and the proxy's subprotocol entries (other
/// subprotocols the client offered still reach the guest).
pub(crate) fn strip_credentials(headers: &mut HeaderMap) {
    strip_proxy_headers(headers);
    if !subprotocol_entries(headers).any(is_ours) {
        return;
    }
    let others: Vec<&str> = subprotocol_entries(headers)
        .filter(|e| !is_ours(e))
        .collect();
    let rest = (!others.is_empty())
        .then(|| HeaderValue::from_str(&others.join(", ")).ok())
        .flatten();
    match rest {
        Some(value) => {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        None => {
            headers.remove(SEC_WEBSOCKET_PROTOCOL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Claims, PortRule, PortScope};
    use http::StatusCode;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn token(key: &TokenKey, scope: PortScope) -> String {
        key.mint(&Claims::new("vm-a", scope, TokenKind::Endpoint, 100, 60))
            .unwrap()
    }

    #[test]
    fn missing_port_is_8080_and_must_be_allowed() {
        let key = TokenKey::generate();
        let all = token(&key, PortScope::All);
        let grant = authorize(&key, &headers(&[("x-aws-proxy-auth", &all)]), "vm-a", 100).unwrap();
        assert_eq!(grant.port, DEFAULT_PORT);

        // A token for one other port does not make that port the default.
        let other = token(&key, PortScope::Only(vec![PortRule::Port(9000)]));
        let err =
            authorize(&key, &headers(&[("x-aws-proxy-auth", &other)]), "vm-a", 100).unwrap_err();
        assert_eq!(err.code, ProxyErrorCode::PortNotAllowed);
        assert_eq!(err.code.status(), StatusCode::FORBIDDEN);

        for bad in ["0", "65536", "+80", "", "8o"] {
            let h = headers(&[("x-aws-proxy-auth", &all), ("x-aws-proxy-port", bad)]);
            let err = authorize(&key, &h, "vm-a", 100).unwrap_err();
            assert_eq!(err.code, ProxyErrorCode::InvalidPort, "{bad}");
            assert_eq!(err.code.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn shell_requests_need_a_shell_token_for_that_vm() {
        let key = TokenKey::generate();
        let shell = key
            .mint(&Claims::new(
                "vm-a",
                PortScope::All,
                TokenKind::Shell,
                100,
                60,
            ))
            .unwrap();
        let h = headers(&[("x-aws-proxy-auth", &shell)]);
        assert!(
            !authorize_shell(&key, &h, "vm-a", 100)
                .unwrap()
                .answer_subprotocol
        );
        assert_eq!(
            authorize_shell(&key, &h, "vm-b", 100).unwrap_err().code,
            ProxyErrorCode::Unauthorized
        );
        assert_eq!(
            authorize_shell(&key, &h, "vm-a", 160)
                .unwrap_err()
                .code
                .status(),
            StatusCode::FORBIDDEN
        );
        let offer = format!("lambda-microvms, lambda-microvms.authentication.{shell}");
        let by_subprotocol = headers(&[("sec-websocket-protocol", &offer)]);
        assert!(
            authorize_shell(&key, &by_subprotocol, "vm-a", 100)
                .unwrap()
                .answer_subprotocol
        );
        let endpoint = token(&key, PortScope::All);
        let h = headers(&[("x-aws-proxy-auth", &endpoint)]);
        assert_eq!(
            authorize_shell(&key, &h, "vm-a", 100).unwrap_err().code,
            ProxyErrorCode::Unauthorized
        );
        let missing = authorize_shell(&key, &HeaderMap::new(), "vm-a", 100).unwrap_err();
        assert_eq!(missing.code, ProxyErrorCode::Unauthorized);
        assert_eq!(missing.code.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn subprotocol_credentials_and_stripping() {
        let key = TokenKey::generate();
        let all = token(&key, PortScope::All);
        let offer = format!(
            "chat, lambda-microvms, lambda-microvms.authentication.{all}, lambda-microvms.port.9000"
        );
        let mut h = headers(&[("sec-websocket-protocol", &offer), ("x-other", "1")]);
        let grant = authorize(&key, &h, "vm-a", 100).unwrap();
        assert_eq!(grant.port, 9000);
        assert!(grant.answer_subprotocol);
        strip_credentials(&mut h);
        assert_eq!(h.get(SEC_WEBSOCKET_PROTOCOL).unwrap(), "chat");
        assert_eq!(h.get("x-other").unwrap(), "1");

        let only_ours = format!("lambda-microvms, lambda-microvms.authentication.{all}");
        let mut h = headers(&[
            ("sec-websocket-protocol", &only_ours),
            ("x-aws-proxy-auth", &all),
            ("x-aws-proxy-force-h2", "true"),
            ("X-Aws-Proxy-Anything", "1"),
        ]);
        strip_credentials(&mut h);
        assert!(h.is_empty());
    }
}
