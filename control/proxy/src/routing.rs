//! Which microVM a request is for: fixed by the listener it arrived on
//! (per-VM ports, no DNS needed), or the first label of its host name on a
//! shared wildcard-domain listener.

use std::sync::Arc;

use http::Request;

#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// A listener dedicated to one microVM; the `Host` header is ignored.
    Fixed(Arc<str>),
    /// `<id>.<domain>`, with `domain` in lower case.
    Wildcard(Arc<str>),
}

/// The host a request names: the authority of an absolute-form URI, else
/// the `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// The microVM id in `host` (`<id>.<domain>[:port]`), if `host` is inside
/// `domain` exactly one label deep.
pub(crate) fn vm_from_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    // A fully qualified name may end in a dot.
    let name = name.strip_suffix('.').unwrap_or(name);
    let (label, rest) = name.split_once('.')?;
    let label_ok = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (label_ok && rest.eq_ignore_ascii_case(domain)).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::vm_from_host;

    #[test]
    fn first_label_of_the_domain() {
        let d = "ember.example.com";
        assert_eq!(vm_from_host("mvm-1.ember.example.com", d), Some("mvm-1"));
        assert_eq!(
            vm_from_host("mvm-1.Ember.Example.com:8443", d),
            Some("mvm-1")
        );
        assert_eq!(vm_from_host("mvm-1.ember.example.com.", d), Some("mvm-1"));
        assert_eq!(vm_from_host("ember.example.com", d), None);
        assert_eq!(vm_from_host("a.b.ember.example.com", d), None);
        assert_eq!(vm_from_host("mvm-1.ember.example.org", d), None);
        assert_eq!(vm_from_host(".ember.example.com", d), None);
        assert_eq!(vm_from_host("[::1]:80", d), None);
        assert_eq!(vm_from_host("mvm 1.ember.example.com", d), None);
    }
}
