//! Which addresses registry requests may reach. A Dockerfile's `FROM` is
//! user input: without a guard, `FROM 169.254.169.254/x` or a name that
//! resolves to an internal service would make emberd fetch from there.
//! Non-public addresses are reachable only for the registries the operator
//! names (plain-HTTP ones and `private_registries`); every connection is
//! checked (names by the resolver reqwest uses, IP literals and redirect
//! targets before they are followed), so DNS answers cannot slip past.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ember_artifact::{classify, AddressClass};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::{Host, Url};

use crate::RegistryError;

const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Default)]
pub(crate) struct AddressGuard {
    /// `host` or `host:port` entries whose non-public addresses are allowed.
    allowed: Vec<String>,
}

impl AddressGuard {
    pub(crate) fn new(allowed: impl IntoIterator<Item = String>) -> Arc<Self> {
        Arc::new(Self {
            allowed: allowed.into_iter().collect(),
        })
    }

    /// A name is allowed whatever its port: the resolver is not told it.
    fn allows_name(&self, name: &str) -> bool {
        self.allowed
            .iter()
            .any(|entry| host_part(entry).eq_ignore_ascii_case(name))
    }

    /// An IP literal is allowed only with the port it was named with
    /// (or any port when named bare).
    fn allows_literal(&self, url: &Url, ip: IpAddr) -> bool {
        if classify(ip) == AddressClass::Public {
            return true;
        }
        let host = url.host_str().unwrap_or_default();
        let with_port = url
            .port_or_known_default()
            .map(|port| format!("{host}:{port}"));
        self.allowed.iter().any(|entry| {
            entry == host
                || Some(entry) == with_port.as_ref()
                || (url.port().is_none() && host_part(entry) == host)
        })
    }

    /// Refuses a URL whose host is an IP literal the guard does not allow;
    /// a name is checked when the resolver answers for it.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), RegistryError> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allows_literal(url, ip) {
            Ok(())
        } else {
            Err(refused(url.host_str().unwrap_or_default()))
        }
    }
}

fn host_part(entry: &str) -> &str {
    match entry.rsplit_once(':') {
        // `[::1]:5000` and `host:5000`; a bare IPv6 address has no port.
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':') => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => entry.trim_start_matches('[').trim_end_matches(']'),
    }
}

pub(crate) fn refused(host: &str) -> RegistryError {
    RegistryError::RefusedHost {
        host: host.to_string(),
    }
}

/// Resolves names for reqwest, handing back only addresses the guard
/// allows: a name with one refused address is refused whole.
pub(crate) struct GuardedResolver(pub Arc<AddressGuard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = guard.allows_name(&host);
            if let Some(bad) = addrs
                .iter()
                .find(|a| !allowed && classify(a.ip()) != AddressClass::Public)
            {
                tracing::warn!(host, address = %bad.ip(),
                    "registry request refused: the host resolves to a non-public address");
                return Err(Box::new(refused(&host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Blob downloads are often redirected to object storage: follow a few,
/// to http(s) only, never to an IP literal the guard refuses.
pub(crate) fn redirects(guard: Arc<AddressGuard>) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let target = attempt.url();
        if !matches!(target.scheme(), "http" | "https") {
            let scheme = target.scheme().to_string();
            return attempt.error(format!("redirect to a {scheme:?} URL"));
        }
        if let Err(e) = guard.check_url(target) {
            return attempt.error(e);
        }
        attempt.follow()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn non_public_literals_need_the_operators_word() {
        let guard = AddressGuard::new(["127.0.0.1:5000".to_string(), "10.0.0.7".to_string()]);
        assert!(guard.check_url(&url("http://127.0.0.1:5000/v2/")).is_ok());
        assert!(guard.check_url(&url("http://127.0.0.1:5001/v2/")).is_err());
        assert!(guard.check_url(&url("http://169.254.169.254/v2/")).is_err());
        assert!(guard.check_url(&url("https://10.0.0.7:443/v2/")).is_ok());
        assert!(guard.check_url(&url("https://[::1]/v2/")).is_err());
        assert!(guard.check_url(&url("https://8.8.8.8/v2/")).is_ok());
        assert!(guard
            .check_url(&url("https://registry.example/v2/"))
            .is_ok());
    }

    #[test]
    fn names_are_matched_without_their_port() {
        let guard = AddressGuard::new(["registry.internal:5000".to_string(), "[::1]:5000".into()]);
        assert!(guard.allows_name("registry.internal"));
        assert!(guard.allows_name("REGISTRY.internal"));
        assert!(guard.allows_name("::1"));
        assert!(!guard.allows_name("other.internal"));
    }
}
