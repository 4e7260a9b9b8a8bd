//! Checks on the values instructions take, after substitution: the edge
//! where a Dockerfile's text becomes something the builder acts on.

use crate::build_plan::MANAGED_BASE_IMAGES;

const MAX_VERSION_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 256;

/// The longest registry reference a FROM may name (Docker's own limit on
/// a name is 255 bytes, plus a tag or a digest).
const MAX_REFERENCE_BYTES: usize = 512;

/// Whether `FROM image` names one of Ember's managed bases rather than a
/// registry image. A managed base's name shadows the Docker Hub image of
/// the same name (`docker.io/library/busybox` names that one); a digest or
/// a registry host always means a registry.
pub fn is_managed_base(image: &str) -> bool {
    let name = image.split(':').next().unwrap_or(image);
    !image.contains(['/', '@']) && MANAGED_BASE_IMAGES.contains(&name)
}

/// The reference of a registry image, checked only for what a reference
/// can never hold: its grammar is the builder's, which pulls it.
pub fn registry_image(image: &str) -> Result<String, String> {
    if image.is_empty() || image.len() > MAX_REFERENCE_BYTES {
        return Err(format!(
            "FROM {:.100}: an image reference is 1 to {MAX_REFERENCE_BYTES} bytes",
            image
        ));
    }
    if !image.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "FROM {image}: an image reference holds no spaces or control characters"
        ));
    }
    Ok(image.to_string())
}

/// `NAME[:VERSION]` of a managed base image.
pub fn base_image(image: &str) -> Result<(String, Option<String>), String> {
    let (name, version) = match image.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (image, None),
    };
    if !MANAGED_BASE_IMAGES.contains(&name) {
        return Err(format!(
            "FROM {image}: not one of Ember's managed base images ({})",
            MANAGED_BASE_IMAGES.join(", ")
        ));
    }
    if let Some(version) = version {
        let well_formed = !version.is_empty()
            && version.len() <= MAX_VERSION_BYTES
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !well_formed {
            return Err(format!(
                "FROM {image}: the version must be letters, digits, '.', '_' or '-' (at most {MAX_VERSION_BYTES})"
            ));
        }
    }
    Ok((name.to_string(), version.map(str::to_string)))
}

/// The port number of `PORT[/PROTOCOL]`.
pub fn port(spec: &str) -> Result<u16, String> {
    let (number, protocol) = match spec.split_once('/') {
        Some((number, protocol)) => (number, protocol),
        None => (spec, "tcp"),
    };
    if !["tcp", "udp", "sctp"].contains(&protocol.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "EXPOSE {spec}: the protocol must be tcp, udp or sctp"
        ));
    }
    if number.contains('-') {
        return Err(format!(
            "EXPOSE {spec}: port ranges are not supported; list the ports"
        ));
    }
    match number.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("EXPOSE {spec}: a port is a number from 1 to 65535")),
    }
}

/// A user name or id, optionally `:GROUP`, as USER and `--chown` take it.
pub fn user(keyword: &str, user: &str) -> Result<(), String> {
    let well_formed = !user.is_empty()
        && user.len() <= MAX_NAME_BYTES
        && !user.starts_with(':')
        && !user.ends_with(':')
        && user.matches(':').count() <= 1
        && !user.chars().any(|c| c.is_whitespace() || c.is_control());
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "{keyword} {user:?}: expected USER or USER:GROUP (names or numeric ids)"
        ))
    }
}

/// A signal as STOPSIGNAL takes it: a number, or a name with or without SIG.
pub fn stop_signal(signal: &str) -> Result<(), String> {
    let numeric = matches!(signal.parse::<u8>(), Ok(1..=64));
    let named = signal.starts_with(|c: char| c.is_ascii_uppercase())
        && signal.len() <= 16
        && signal
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-');
    if numeric || named {
        Ok(())
    } else {
        Err(format!(
            "STOPSIGNAL {signal:?}: expected a signal name like SIGTERM or a number from 1 to 64"
        ))
    }
}

/// An ENV or ARG name: it ends up in a process environment, where `=` and
/// NUL cannot appear in a name.
pub fn variable_name(keyword: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains(['=', '\0']) {
        return Err(format!(
            "{keyword} {name:?}: a variable name must be non-empty, without '=' or NUL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images() {
        assert_eq!(base_image("busybox"), Ok(("busybox".into(), None)));
        assert_eq!(
            base_image("debian12-minimal:2025.01"),
            Ok(("debian12-minimal".into(), Some("2025.01".into())))
        );
        for bad in [
            "ubuntu",
            "busybox:",
            "busybox@sha256:00",
            "docker.io/busybox",
            "busybox:a/b",
        ] {
            assert!(base_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn managed_bases_and_registry_images() {
        for managed in ["busybox", "busybox:1", "debian12-minimal:latest"] {
            assert!(is_managed_base(managed), "{managed}");
        }
        for registry in [
            "python:3.12-slim",
            "docker.io/library/busybox",
            "busybox@sha256:00",
            "public.ecr.aws/lambda/microvms:al2023-minimal",
            "127.0.0.1:5000/busybox",
        ] {
            assert!(!is_managed_base(registry), "{registry}");
            assert_eq!(registry_image(registry).as_deref(), Ok(registry));
        }
        assert!(registry_image("a b").is_err());
        assert!(registry_image(&"a".repeat(513)).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(port("80"), Ok(80));
        assert_eq!(port("80/tcp"), Ok(80));
        assert_eq!(port("53/UDP"), Ok(53));
        for bad in ["0", "65536", "80/icmp", "8000-8010", "http", ""] {
            assert!(port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_and_signals() {
        assert!(user("USER", "app").is_ok());
        assert!(user("USER", "1000:1000").is_ok());
        for bad in ["", "a b", ":g", "u:", "a:b:c"] {
            assert!(user("USER", bad).is_err(), "{bad}");
        }
        for good in ["SIGTERM", "TERM", "9", "SIGRTMIN+3"] {
            assert!(stop_signal(good).is_ok(), "{good}");
        }
        for bad in ["", "0", "65", "sig term", "sigterm"] {
            assert!(stop_signal(bad).is_err(), "{bad}");
        }
    }
}
