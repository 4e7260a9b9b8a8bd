//! Content digests (`sha256:<hex>`), the names blobs and manifests go by.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::RegistryError;

/// A sha256 content digest. Other algorithms are refused: every registry
/// serves sha256, and a digest we cannot verify is worth nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    /// The 64 lowercase hex digits, safe as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = RegistryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| RegistryError::InvalidDigest {
            digest: text.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("expected 64 lowercase hex digits after sha256:"));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha512:abcd".parse::<Digest>().is_err());
        assert!("sha256:ABCD".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "../".repeat(21) + "a")
            .parse::<Digest>()
            .is_err());
    }
}
