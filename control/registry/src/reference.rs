//! Image references, parsed the way Docker parses them.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use crate::{Digest, RegistryError};

/// Docker's own bound on a repository name (without the registry).
const MAX_NAME_LEN: usize = 255;
/// Longer than any real reference; bounds work on hostile input.
const MAX_REFERENCE_LEN: usize = 512;
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API lives on another host than its name.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

static COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$").expect("static regex"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("static regex"));
static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?$")
        .expect("static regex")
});

/// A fully qualified image reference: `registry/repository[:tag][@digest]`.
/// When both are given the digest decides what is pulled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// As users write it (`docker.io`, `ghcr.io`, `host:5000`).
    pub registry: String,
    /// With Docker Hub's implicit `library/` for official images.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// The host (and port) the distribution API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry's manifest endpoint for.
    pub(crate) fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl FromStr for ImageReference {
    type Err = RegistryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| RegistryError::InvalidReference {
            reference: text.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text.len() > MAX_REFERENCE_LEN {
            return Err(invalid("longer than 512 characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (text, None),
        };
        // A tag's colon comes after the last slash; an earlier one is a port.
        let (name, tag) = match rest.rfind(':') {
            Some(at) if !rest[at..].contains('/') => (&rest[..at], Some(&rest[at + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            if !TAG.is_match(tag) {
                return Err(invalid(
                    "a tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), path.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        let registry = match registry.as_str() {
            "index.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if !DOMAIN.is_match(&registry) {
            return Err(invalid(
                "the registry must be a host name with an optional :port",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > MAX_NAME_LEN {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        if !repository.split('/').all(|c| COMPONENT.is_match(c)) {
            return Err(invalid(
                "a repository is '/'-separated lowercase letters and digits, joined by '.', '_', '__' or '-'",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag: tag
                .map(str::to_string)
                .or_else(|| digest.is_none().then(|| "latest".to_string())),
            digest,
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ImageReference {
        text.parse().unwrap()
    }

    #[test]
    fn docker_shorthands() {
        let r = parse("python:3.12-slim");
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            parse("ubuntu").to_string(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(parse("org/app").to_string(), "docker.io/org/app:latest");
        assert_eq!(
            parse("index.docker.io/library/alpine:3").api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn other_registries() {
        let r = parse("public.ecr.aws/docker/library/python:3.11-slim");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("public.ecr.aws", "docker/library/python")
        );
        assert_eq!(r.tag.as_deref(), Some("3.11-slim"));
        let hex = "a".repeat(64);
        let r = parse(&format!("ghcr.io/org/img@sha256:{hex}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        let r = parse("host:5000/name:tag");
        assert_eq!((r.api_host(), r.repository.as_str()), ("host:5000", "name"));
        let r = parse("localhost/name");
        assert_eq!(r.registry, "localhost");
        let r = parse(&format!("host:5000/a/b:v1@sha256:{hex}"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "org/Upper",
            "name:",
            "name:-tag",
            "a//b",
            "name@sha256:short",
            "name@md5:abc",
            "host:99999999/x",
            "-host.com/x",
            "x/../y",
        ] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad:?} parsed");
        }
        assert!("a".repeat(600).parse::<ImageReference>().is_err());
        assert!(format!("x/{}", "a".repeat(300))
            .parse::<ImageReference>()
            .is_err());
    }
}
