//! Where artifacts may come from: which addresses a download may connect
//! to, and which folders a `file://` artifact may be read from.
//!
//! Refusals never say whether the target exists: a refused address is
//! refused before anything connects to it, and a path outside the roots
//! gets the same answer whether or not there is a file there.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::{Host, Url};

use crate::address::{classify, AddressClass};
use crate::ArtifactError;

/// What emberd's operator allows artifacts to be fetched from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Lets downloads reach loopback, private, link-local, metadata and
    /// every other non-public address (labs, local test servers).
    pub allow_private_hosts: bool,
    /// Non-public addresses let through one by one, e.g. an internal
    /// artifact mirror, while the rest stay refused.
    pub allowed_addresses: Vec<IpAddr>,
    /// Folders `file://` artifacts must resolve into (symlinks followed).
    /// Empty: any path emberd can read.
    pub file_roots: Vec<PathBuf>,
    /// The S3 endpoint and region for `s3://` artifacts: operator
    /// configuration, so not subject to the address checks above.
    pub s3: crate::S3Settings,
}

impl SourcePolicy {
    /// Canonicalises `roots` so containment is decided on real paths.
    pub fn with_file_roots(mut self, roots: &[PathBuf]) -> Result<Self, ArtifactError> {
        self.file_roots = roots
            .iter()
            .map(|root| {
                let real = root
                    .canonicalize()
                    .map_err(|e| ArtifactError::io(root, e))?;
                if !real.is_dir() {
                    return Err(ArtifactError::NotADirectory(root.clone()));
                }
                Ok(real)
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Whether a connection to `ip` may be made.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private_hosts
            || classify(ip) == AddressClass::Public
            || self.allowed_addresses.contains(&ip)
            || self.allowed_addresses.contains(&ip.to_canonical())
    }

    /// The real path of a `file://` artifact, which must lie inside one of
    /// the roots when there are any.
    pub(crate) fn check_file(&self, uri: &str, path: &Path) -> Result<PathBuf, ArtifactError> {
        if self.file_roots.is_empty() {
            return Ok(path.to_path_buf());
        }
        // Missing and outside get one answer, so the API cannot be used to
        // probe the host's filesystem.
        let outside = || ArtifactError::OutsideArtifactRoots {
            uri: format!("{uri:.200}"),
        };
        let real = path.canonicalize().map_err(|_| outside())?;
        if self.file_roots.iter().any(|root| real.starts_with(root)) {
            Ok(real)
        } else {
            Err(outside())
        }
    }

    /// Refuses a URL whose host is an IP literal this policy does not
    /// permit. Names are left to the resolver (which checks every address
    /// it returns): an IP literal never reaches it.
    pub(crate) fn check_literal(&self, url: &Url) -> Result<(), ArtifactError> {
        match literal_ip(url) {
            Some(ip) if !self.permits(ip) => Err(refused(url, ip)),
            _ => Ok(()),
        }
    }

    /// The API-time check of an `http(s)` URL: an IP literal, or every
    /// address its name resolves to now, must be permitted. A lookup that
    /// does not answer within `timeout` passes: the download checks every
    /// connection again. A name that does not resolve is refused with the
    /// same message as a refused address.
    pub async fn check_host(&self, url: &Url, timeout: Duration) -> Result<(), ArtifactError> {
        if self.allow_private_hosts {
            return Ok(());
        }
        self.check_literal(url)?;
        if literal_ip(url).is_some() {
            return Ok(());
        }
        let Some(host) = url.host_str() else {
            return Err(ArtifactError::RefusedHost {
                uri: url.to_string(),
            });
        };
        match tokio::time::timeout(timeout, resolve(host)).await {
            Err(_) => {
                tracing::debug!(%url, "artifact host lookup timed out; the download checks it");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(%url, error = %e, "artifact host does not resolve");
                Err(ArtifactError::RefusedHost {
                    uri: url.to_string(),
                })
            }
            Ok(Ok(addrs)) => match addrs.iter().find(|a| !self.permits(a.ip())) {
                Some(addr) => Err(refused(url, addr.ip())),
                None => Ok(()),
            },
        }
    }

    /// Resolves `host` and returns its addresses only if every one of them
    /// is permitted: a name with a single refused address is refused whole.
    pub(crate) async fn resolve_permitted(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let addrs = resolve(host).await?;
        if let Some(addr) = addrs.iter().find(|a| !self.permits(a.ip())) {
            tracing::warn!(host, address = %addr.ip(), class = ?classify(addr.ip()),
                "artifact download refused: the host resolves to a non-public address");
            return Err(Box::new(HostRefused {
                target: host.to_string(),
            }));
        }
        Ok(addrs)
    }
}

/// A refusal from inside reqwest (its resolver or redirect policy), found
/// again in the error chain it comes back in.
#[derive(Debug, thiserror::Error)]
#[error("{target}: the artifact host is refused")]
pub(crate) struct HostRefused {
    pub(crate) target: String,
}

fn refused(url: &Url, ip: IpAddr) -> ArtifactError {
    // The class goes to the log only: the message is the same for every
    // refused address.
    tracing::warn!(%url, address = %ip, class = ?classify(ip), "artifact URI refused");
    ArtifactError::RefusedHost {
        uri: url.to_string(),
    }
}

fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        // The URL parser turns every IPv4 spelling into `Host::Ipv4`; this
        // is for whatever a connector might still read as an address.
        Host::Domain(name) => name.trim_matches(['[', ']']).parse().ok(),
    }
}

async fn resolve(host: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host, 0)).await?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_and_the_switch() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let strict = SourcePolicy::default();
        assert!(!strict.permits(loopback));
        assert!(strict.permits("8.8.8.8".parse().unwrap()));
        let open = SourcePolicy {
            allow_private_hosts: true,
            ..SourcePolicy::default()
        };
        assert!(open.permits(loopback));
        let one = SourcePolicy {
            allowed_addresses: vec![loopback],
            ..SourcePolicy::default()
        };
        assert!(one.permits(loopback));
        assert!(one.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!one.permits("127.0.0.2".parse().unwrap()));
        assert!(!one.permits("::1".parse().unwrap()));
    }

    #[test]
    fn literals_in_every_spelling_are_checked() {
        let strict = SourcePolicy::default();
        for uri in [
            "http://127.0.0.1/a.zip",
            "http://2130706433/a.zip",
            "http://0x7f.1/a.zip",
            "http://0177.0.0.1/a.zip",
            "http://[::1]/a.zip",
            "http://[::ffff:127.0.0.1]/a.zip",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://0.0.0.0:8080/",
            "https://10.1.2.3/a.zip",
        ] {
            let url = Url::parse(uri).unwrap();
            assert!(
                matches!(
                    strict.check_literal(&url),
                    Err(ArtifactError::RefusedHost { .. })
                ),
                "{uri} passed"
            );
        }
        let public = Url::parse("https://93.184.215.14/a.zip").unwrap();
        assert!(strict.check_literal(&public).is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        let strict = SourcePolicy::default();
        let url = Url::parse("http://localhost:1/a.zip").unwrap();
        let err = strict
            .check_host(&url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::RefusedHost { .. }), "{err}");
        let err = strict.resolve_permitted("localhost").await.unwrap_err();
        assert!(err.is::<HostRefused>(), "{err}");
        let open = SourcePolicy {
            allow_private_hosts: true,
            ..SourcePolicy::default()
        };
        assert!(open.check_host(&url, Duration::from_secs(5)).await.is_ok());
        assert!(!open
            .resolve_permitted("localhost")
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn file_roots_contain_real_paths_and_say_nothing_about_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("in.zip"), b"x").unwrap();
        std::fs::write(outside.path().join("out.zip"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        let policy = SourcePolicy::default()
            .with_file_roots(&[root.path().to_path_buf()])
            .unwrap();
        let inside = root.path().join("in.zip");
        assert_eq!(
            policy.check_file("u", &inside).unwrap(),
            inside.canonicalize().unwrap()
        );
        let message = |path: PathBuf| policy.check_file("u", &path).unwrap_err().to_string();
        let existing = message(outside.path().join("out.zip"));
        assert_eq!(existing, message(outside.path().join("missing.zip")));
        assert_eq!(existing, message(root.path().join("escape/out.zip")));
        assert_eq!(existing, message(root.path().join("../etc/passwd")));
        assert!(existing.contains("artifact root"), "{existing}");
        // No roots: today's behaviour, any path.
        let anywhere = SourcePolicy::default();
        let out = outside.path().join("out.zip");
        assert_eq!(anywhere.check_file("u", &out).unwrap(), out);
    }
}
