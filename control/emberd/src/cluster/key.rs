//! The secret every node of a cluster shares (`--cluster-key-file`), and
//! the two keys derived from it: the endpoint token key, so a token minted
//! through any node opens the microVM's endpoint on every node, and the
//! key that signs requests between nodes.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Shorter secrets are guessable; longer files are not secrets.
const MIN_SECRET: usize = 32;
const MAX_SECRET: usize = 4096;

/// How far a signed request's clock may be from this node's: bounds the
/// window in which a captured request could be replayed.
pub const MAX_SKEW_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    #[error("--cluster-key-file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--cluster-key-file {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("--cluster-key-file {path}: owned by uid {owner}, but emberd runs as uid {euid}")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "--cluster-key-file {path}: mode {mode:04o} lets others read the cluster's secret; \
         it must be 0600 or stricter (chmod 600)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "--cluster-key-file {path}: {len} bytes; the secret must be {MIN_SECRET} to \
         {MAX_SECRET} bytes (e.g. `head -c 32 /dev/urandom > FILE`, the same file on every node)"
    )]
    BadLength { path: PathBuf, len: usize },
}

/// Why a request between nodes was refused; the words go back to the
/// sender (another node of the same cluster, or someone probing).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the request is not signed with the cluster key (missing {0})")]
    Missing(&'static str),
    #[error("the request's time is more than {MAX_SKEW_SECS} s from this node's clock")]
    Skewed,
    #[error("the request's signature does not verify with this node's cluster key")]
    Invalid,
    #[error("the request was seen before (a replay)")]
    Replayed,
    #[error("a nonce must be 16 to 64 hex digits")]
    BadNonce,
}

/// The cluster's secret, as the two keys emberd uses.
pub struct ClusterKey {
    token_key: [u8; 32],
    peer_key: [u8; 32],
    tls_seed: [u8; 32],
}

impl ClusterKey {
    /// Reads the secret, refusing a file others can read or a short one.
    pub fn load(path: &Path) -> Result<Self, ClusterKeyError> {
        let io = |source| ClusterKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ClusterKeyError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(ClusterKeyError::WrongOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                euid,
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(ClusterKeyError::TooOpen {
                path: path.to_path_buf(),
                mode: meta.mode() & 0o7777,
            });
        }
        let mut secret = Vec::new();
        (&mut file)
            .take(MAX_SECRET as u64 + 1)
            .read_to_end(&mut secret)
            .map_err(io)?;
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(ClusterKeyError::BadLength {
                path: path.to_path_buf(),
                len: secret.len(),
            });
        }
        Ok(Self::from_secret(&secret))
    }

    /// Each use gets its own key, so a leaked token key signs no
    /// node-to-node request and the other way round.
    pub fn from_secret(secret: &[u8]) -> Self {
        ClusterKey {
            token_key: derive(secret, b"ember endpoint tokens v1"),
            peer_key: derive(secret, b"ember node requests v1"),
            tls_seed: derive(secret, b"ember internal tls v1"),
        }
    }

    /// The Ed25519 seed of the internal listener's TLS key, the same on
    /// every node (`tls.rs`).
    pub(super) fn tls_seed(&self) -> &[u8; 32] {
        &self.tls_seed
    }

    pub fn token_key(&self) -> ember_proxy::TokenKey {
        ember_proxy::TokenKey::from_bytes(self.token_key)
    }

    /// The signature of a request between nodes: it covers the method, the
    /// path with its query, the sending node, the time and the body.
    pub fn sign(&self, req: &SignedParts<'_>) -> String {
        hex(&self.mac(req).finalize().into_bytes())
    }

    /// Checks a request's signature and time against `now` (unix seconds).
    pub fn verify(
        &self,
        req: &SignedParts<'_>,
        signature: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        if req.time.abs_diff(now) > MAX_SKEW_SECS {
            return Err(SignatureError::Skewed);
        }
        let expected = self.sign(req);
        if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        }
    }

    fn mac(&self, req: &SignedParts<'_>) -> HmacSha256 {
        let mut mac = hmac_with(&self.peer_key);
        let body = Sha256::digest(req.body);
        // Each field on its own line and none may hold a newline (a node
        // id and a path cannot), so no two requests sign alike.
        for field in [
            req.method.as_bytes(),
            req.path_and_query.as_bytes(),
            req.node.as_bytes(),
            req.time.to_string().as_bytes(),
            req.nonce.as_bytes(),
            hex(&body).as_bytes(),
        ] {
            mac.update(field);
            mac.update(b"\n");
        }
        mac
    }
}

/// What a signature covers.
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    /// The sending node's id.
    pub node: &'a str,
    /// Unix seconds when it was sent.
    pub time: u64,
    /// Random per request, so two alike requests in one second sign
    /// differently and a receiver can refuse a replay.
    pub nonce: &'a str,
    pub body: &'a [u8],
}

/// A fresh nonce for [`SignedParts::nonce`].
pub fn nonce() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = hmac_with(secret);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail; the match keeps
    // it without an unwrap.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body: &[u8]) -> SignedParts<'_> {
        SignedParts {
            method: "POST",
            path_and_query: "/ember/internal/v1/microvms/m-1/ports/8080",
            node: "n1",
            time: 1_000,
            nonce: "00ff",
            body,
        }
    }

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_fields_and_time() {
        let key = ClusterKey::from_secret(&[7; 32]);
        let sig = key.sign(&parts(b""));
        assert_eq!(key.verify(&parts(b""), &sig, 1_010), Ok(()));
        assert_eq!(
            key.verify(&parts(b""), &sig, 1_000 + MAX_SKEW_SECS + 1),
            Err(SignatureError::Skewed)
        );
        assert_eq!(
            key.verify(&parts(b"x"), &sig, 1_000),
            Err(SignatureError::Invalid)
        );
        let mut other_nonce = parts(b"");
        other_nonce.nonce = "00fe";
        assert_eq!(
            key.verify(&other_nonce, &sig, 1_000),
            Err(SignatureError::Invalid)
        );
        let mut other_node = parts(b"");
        other_node.node = "n2";
        assert_eq!(
            key.verify(&other_node, &sig, 1_000),
            Err(SignatureError::Invalid)
        );
        let other = ClusterKey::from_secret(&[8; 32]);
        assert_eq!(
            other.verify(&parts(b""), &sig, 1_000),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn the_token_key_and_the_node_key_differ() {
        let key = ClusterKey::from_secret(&[7; 32]);
        assert_ne!(key.token_key, key.peer_key);
        assert_eq!(key.token_key, ClusterKey::from_secret(&[7; 32]).token_key);
    }

    #[test]
    fn short_or_readable_secrets_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [1u8; 16]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(ClusterKeyError::BadLength { len: 16, .. })
        ));
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(ClusterKeyError::TooOpen { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterKey::load(&path).is_ok());
    }
}
