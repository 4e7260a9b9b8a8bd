//! Header rewriting between the two hops: hop-by-hop headers describe one
//! connection and must not cross the proxy (RFC 9110 §7.6.1); `Forwarded`
//! and `X-Forwarded-For` tell the guest who the client is.

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
