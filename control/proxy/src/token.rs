//! Endpoint tokens: `base64url(claims JSON) "." base64url(HMAC-SHA256)`.
//!
//! A token is self-contained so the proxy can check it on every request
//! without a database round trip; the key never leaves the host.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use crate::scope::{PortRule, PortScope};

type HmacSha256 = Hmac<Sha256>;

/// Longest token `verify` looks at; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest lifetime a token may have (the API's `expirationInMinutes` max).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 60 * 60;

const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token this host issued: wrong shape, bad encoding, bad MAC,
    /// or too long.
    #[error("the token is malformed or its signature does not match")]
    Invalid,
    #[error("the token expired")]
    Expired,
    #[error(
        "token lifetime {requested_secs} s exceeds the maximum of {MAX_TOKEN_LIFETIME_SECS} s"
    )]
    LifetimeTooLong { requested_secs: u64 },
    #[error("token claims are not valid: {0}")]
    BadClaims(&'static str),
    #[error("token key file {path}: {source}")]
    KeyIo { path: PathBuf, source: io::Error },
    #[error("token key file {path} holds {len} bytes, expected {KEY_LEN}; remove it to make a new key (issued tokens stop working)")]
    KeyLength { path: PathBuf, len: usize },
    #[error("token key file {path} has mode {mode:o}; others can read it: run chmod 600 on it")]
    KeyMode { path: PathBuf, mode: u32 },
}

/// What a token opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// `CreateMicrovmAuthToken`: HTTP/WebSocket to guest ports.
    Endpoint,
    /// `CreateMicrovmShellAuthToken`: the shell; never accepted by the
    /// endpoint proxy.
    Shell,
}

/// What a token says. Field names are short: they ride in every request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "vm")]
    pub microvm_id: String,
    #[serde(rename = "p")]
    pub ports: PortScope,
    #[serde(rename = "k")]
    pub kind: TokenKind,
    /// Unix seconds; the token is refused from this second on.
    #[serde(rename = "exp")]
    pub expires_at: u64,
    #[serde(rename = "iat")]
    pub issued_at: u64,
    /// Random, so two tokens minted in the same second differ.
    #[serde(rename = "n")]
    pub nonce: String,
}

impl Claims {
    /// Claims issued at `now` (unix seconds) for `lifetime_secs`, with a
    /// fresh random nonce.
    pub fn new(
        microvm_id: impl Into<String>,
        ports: PortScope,
        kind: TokenKind,
        now: u64,
        lifetime_secs: u64,
    ) -> Self {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        Claims {
            microvm_id: microvm_id.into(),
            ports,
            kind,
            expires_at: now.saturating_add(lifetime_secs),
            issued_at: now,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
        }
    }

    fn lifetime(&self) -> u64 {
        self.expires_at.saturating_sub(self.issued_at)
    }
}

/// The HMAC key tokens are signed with.
pub struct TokenKey {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh random key that lives only in memory (tests, or a host
    /// that accepts tokens dying with the process).
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::thread_rng().fill_bytes(&mut key);
        TokenKey { key }
    }

    /// A key every node of a cluster derives from the secret they share,
    /// so a token minted on one host verifies on all of them.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        TokenKey { key }
    }

    /// Reads the key at `path`, or creates it (mode 0600) on first start.
    /// The key is written under a temporary name and linked into place, so
    /// a crash never leaves a half-written key and two racing starts agree.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        match Self::load(path) {
            Err(TokenError::KeyIo { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::generate();
        let io_err = |source| TokenError::KeyIo {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&key.key)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(key),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io_err(e)),
        }
    }

    fn load(path: &Path) -> Result<Self, TokenError> {
        let io_err = |source| TokenError::KeyIo {
            path: path.to_path_buf(),
            source,
        };
        let mut file = fs::File::open(path).map_err(io_err)?;
        let mode = file.metadata().map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::KeyMode {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        // One byte more than a key, so a longer file is noticed.
        let mut buf = Vec::with_capacity(KEY_LEN + 1);
        (&mut file)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        let key: [u8; KEY_LEN] = buf
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::KeyLength {
                path: path.to_path_buf(),
                len: buf.len(),
            })?;
        Ok(TokenKey { key })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; a 32-byte key cannot fail.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts every key length"),
        }
    }

    /// Signs `claims`. Refuses lifetimes over 60 minutes and port scopes
    /// that grant nothing or are malformed.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        if claims.expires_at <= claims.issued_at {
            return Err(TokenError::BadClaims("expires_at is not after issued_at"));
        }
        if claims.lifetime() > MAX_TOKEN_LIFETIME_SECS {
            return Err(TokenError::LifetimeTooLong {
                requested_secs: claims.lifetime(),
            });
        }
        if claims.microvm_id.is_empty() || claims.microvm_id.len() > 256 {
            return Err(TokenError::BadClaims(
                "the microVM id is empty or over 256 bytes",
            ));
        }
        claims.ports.validate()?;
        let json = serde_json::to_vec(claims)
            .map_err(|_| TokenError::BadClaims("the claims do not serialize"))?;
        let mut token = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::BadClaims("the token would exceed 4 KiB"));
        }
        Ok(token)
    }

    /// Checks the signature, then the expiry, against `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let mut tag_bytes = [0u8; MAC_LEN];
        match URL_SAFE_NO_PAD.decode_slice(tag, &mut tag_bytes) {
            Ok(MAC_LEN) => {}
            _ => return Err(TokenError::Invalid),
        }
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&tag_bytes)
            .map_err(|_| TokenError::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        // Only this key signs, and mint refuses long lifetimes; this guards
        // against a key that was shared with a laxer issuer.
        if claims.lifetime() > MAX_TOKEN_LIFETIME_SECS {
            return Err(TokenError::Invalid);
        }
        if now >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims::new(
            "mvm-1",
            PortScope::Only(vec![
                PortRule::Port(8080),
                PortRule::Range {
                    start: 9000,
                    end: 9010,
                },
            ]),
            TokenKind::Endpoint,
            now,
            600,
        )
    }

    #[test]
    fn round_trip_and_header_safe() {
        let key = TokenKey::generate();
        let c = claims(1000);
        let token = key.mint(&c).unwrap();
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert_eq!(key.verify(&token, 1000).unwrap(), c);
        assert_eq!(key.verify(&token, 1599).unwrap(), c);
    }

    #[test]
    fn expired_at_the_expiry_second() {
        let key = TokenKey::generate();
        let token = key.mint(&claims(1000)).unwrap();
        assert!(matches!(key.verify(&token, 1600), Err(TokenError::Expired)));
    }

    #[test]
    fn other_key_tampered_and_garbage_are_invalid() {
        let key = TokenKey::generate();
        let token = key.mint(&claims(1000)).unwrap();
        let other = TokenKey::generate();
        assert!(matches!(
            other.verify(&token, 1000),
            Err(TokenError::Invalid)
        ));

        // Re-sign nothing, only swap the VM id in the payload.
        let (payload, tag) = token.split_once('.').unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace("mvm-1", "mvm-2"));
        let tampered = format!("{forged}.{tag}");
        assert!(matches!(
            key.verify(&tampered, 1000),
            Err(TokenError::Invalid)
        ));

        for junk in [
            "",
            ".",
            "abc",
            "a.b",
            &"x".repeat(5000),
            &format!("{payload}."),
        ] {
            assert!(
                matches!(key.verify(junk, 1000), Err(TokenError::Invalid)),
                "{junk}"
            );
        }
    }

    #[test]
    fn mint_refuses_long_lifetimes_and_empty_scopes() {
        let key = TokenKey::generate();
        let mut c = claims(1000);
        c.expires_at = c.issued_at + MAX_TOKEN_LIFETIME_SECS;
        assert!(key.mint(&c).is_ok());
        c.expires_at += 1;
        assert!(matches!(
            key.mint(&c),
            Err(TokenError::LifetimeTooLong { .. })
        ));
        let mut c = claims(1000);
        c.ports = PortScope::Only(vec![]);
        assert!(key.mint(&c).is_err());
        c.ports = PortScope::Only(vec![PortRule::Range { start: 10, end: 9 }]);
        assert!(key.mint(&c).is_err());
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.key");
        let a = TokenKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = TokenKey::load_or_create(&path).unwrap();
        let token = a.mint(&claims(1000)).unwrap();
        assert!(b.verify(&token, 1000).is_ok());
        // Two hosts never share a key.
        let other = TokenKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.verify(&token, 1000).is_err());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            TokenKey::load_or_create(&path),
            Err(TokenError::KeyMode { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            TokenKey::load_or_create(&path),
            Err(TokenError::KeyLength { len: 5, .. })
        ));
    }
}
