//! Registry credentials (docker's `config.json`) and the challenges a
//! registry answers 401 with.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::RegistryError;

/// A docker `config.json` is a few KiB; anything huge is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `user:password` per registry host, from `auths.<host>.auth`.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

// Passwords stay out of logs and error messages.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

impl Credentials {
    pub(crate) fn load(path: &Path) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::Credentials {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| RegistryError::io(path, e))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let bytes = std::fs::read(path).map_err(|e| RegistryError::io(path, e))?;
        let config: DockerConfig = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a docker config.json: {e}")))?;
        let mut by_host = HashMap::new();
        for (key, entry) in config.auths {
            let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
                continue;
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad(format!("auths.{key}.auth is not base64")))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{key}.auth is not user:password")))?;
            by_host.insert(
                normalize_host(&key),
                (user.to_string(), password.to_string()),
            );
        }
        Ok(Self { by_host })
    }

    pub(crate) fn for_host(&self, host: &str) -> Option<&(String, String)> {
        self.by_host.get(&normalize_host(host))
    }
}

/// `auths` keys come as hosts or URLs (`https://index.docker.io/v1/`).
fn normalize_host(key: &str) -> String {
    let host = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// What a 401's `WWW-Authenticate` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        // Quoted values may hold commas (a scope with several actions).
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, a)| (v, a))
        };
        fields.insert(key, value.to_string());
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
