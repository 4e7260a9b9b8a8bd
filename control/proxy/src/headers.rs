//! Header rewriting between the two hops: hop-by-hop headers describe one
//! connection and must not cross the proxy (RFC 9110 §7.6.1); `Forwarded`
//! and `X-Forwarded-For` tell the guest who the client is; the proxy's own
//! `X-aws-proxy-*` headers are for the proxy alone.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static FORCE_H2: HeaderName = HeaderName::from_static("x-aws-proxy-force-h2");
const PROXY_HEADER_PREFIX: &str = "x-aws-proxy-";

/// True when the client asked for the app to be reached over HTTP/2
/// (`X-aws-proxy-force-h2: true`; anything else means HTTP/1.1).
pub(crate) fn wants_h2_upstream(headers: &HeaderMap) -> bool {
    headers
        .get_all(&FORCE_H2)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// Removes every `X-aws-proxy-*` header: they are instructions to the
/// proxy (token, port, protocol), never the app's business.
pub(crate) fn strip_proxy_headers(headers: &mut HeaderMap) {
    // Header names are stored in lower case.
    let ours = |name: &HeaderName| name.as_str().starts_with(PROXY_HEADER_PREFIX);
    if !headers.keys().any(ours) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| ours(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Prepares `headers` for an HTTP/2 hop: HTTP/2 forbids connection-specific
/// headers (RFC 9113 §8.2.2) except `TE: trailers`, which gRPC servers
/// check for to tell a trailer-capable peer.
pub(crate) fn strip_for_h2(headers: &mut HeaderMap) {
    let trailers_ok = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers, false);
    if trailers_ok {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// True when `headers` ask to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header), e.g. a WebSocket handshake.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers. For an upgrade (request or 101 answer)
/// `Connection: upgrade` and `Upgrade` are kept: they are the point.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        // Only names beyond the fixed set cost an allocation; clients
        // mostly send `keep-alive`, `close` or `upgrade`.
        let fixed = |t: &str| {
            t.split(',').map(str::trim).all(|t| {
                ["keep-alive", "close", "upgrade", ""]
                    .iter()
                    .any(|f| t.eq_ignore_ascii_case(f))
            })
        };
        let only_fixed = headers.get_all(header::CONNECTION).iter().count() == 1
            && connection.to_str().map(fixed).unwrap_or(false);
        if !only_fixed {
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                if !(upgrade && name == header::UPGRADE) {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrade {
        headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The forwarding headers for one client connection, made once per
/// connection; cloning a `HeaderValue` made from `Bytes` is a refcount.
#[derive(Clone, Debug)]
pub(crate) struct ClientAddress {
    forwarded: HeaderValue,
    forwarded_for: HeaderValue,
}

impl ClientAddress {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let forwarded = if ip.is_ipv6() {
            format!("for=\"[{ip}]\";proto=http")
        } else {
            format!("for={ip};proto=http")
        };
        let value = |s: String| {
            // An IP address and fixed text are always valid header bytes.
            HeaderValue::from_maybe_shared(Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        };
        ClientAddress {
            forwarded: value(forwarded),
            forwarded_for: value(ip.to_string()),
        }
    }

    /// Appends this hop: list headers may repeat, so a line of our own
    /// keeps what earlier proxies said without rebuilding strings.
    pub(crate) fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(header::FORWARDED, self.forwarded.clone());
        headers.append(&X_FORWARDED_FOR, self.forwarded_for.clone());
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HTTP.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn proxy_headers_and_h2_rules() {
        let mut h = HeaderMap::new();
        h.insert("x-aws-proxy-force-h2", HeaderValue::from_static("True"));
        h.insert("x-aws-proxy-whatever", HeaderValue::from_static("1"));
        h.insert("x-aws-other", HeaderValue::from_static("kept"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("te"));
        assert!(wants_h2_upstream(&h));
        strip_proxy_headers(&mut h);
        assert!(!wants_h2_upstream(&h));
        strip_for_h2(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.contains_key("x-aws-other"));

        let mut h = HeaderMap::new();
        h.insert("x-aws-proxy-force-h2", HeaderValue::from_static("yes"));
        assert!(!wants_h2_upstream(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_for_h2(&mut h);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }
}
