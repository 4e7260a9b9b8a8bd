//! The one key pair emberd accepts, kept in `DATA_DIR/credentials` in the
//! AWS shared-credentials format so `AWS_SHARED_CREDENTIALS_FILE` can point
//! the AWS CLI and boto3 straight at it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context as _;
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;

use ember_api::Credentials;

/// Loads the credentials, creating them with a fresh random key on first
/// start. An existing file is never rewritten.
pub fn load_or_create(path: &Path) -> anyhow::Result<Credentials> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "credentials file is readable by others (mode {:o}); chmod 600 it",
                    mode & 0o777
                );
            }
            parse(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<Credentials> {
    let mut rng = rand::thread_rng();
    let creds = Credentials {
        access_key_id: format!(
            "EMBR{}",
            Alphanumeric
                .sample_string(&mut rng, 16)
                .to_ascii_uppercase()
        ),
        secret_access_key: (0..40)
            .map(|_| {
                const CHARS: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                CHARS[rng.gen_range(0..CHARS.len())] as char
            })
            .collect(),
    };
    let text = format!(
        "# Created by emberd: the key pair it accepts. Point the AWS CLI at it with\n\
         # AWS_SHARED_CREDENTIALS_FILE={}\n\
         [default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        path.display(),
        creds.access_key_id,
        creds.secret_access_key
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created new API credentials");
    Ok(creds)
}

/// Reads the `[default]` profile of a shared-credentials file.
pub fn parse(text: &str) -> anyhow::Result<Credentials> {
    Credentials::from_shared_file(text).ok_or_else(|| {
        anyhow::anyhow!("no [default] profile with aws_access_key_id and aws_secret_access_key")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.access_key_id, b.access_key_id);
        assert_eq!(a.secret_access_key, b.secret_access_key);
        assert_eq!(a.secret_access_key.len(), 40);
        let other = tempfile::tempdir().unwrap();
        let c = load_or_create(&other.path().join("credentials")).unwrap();
        assert_ne!(
            a.secret_access_key, c.secret_access_key,
            "never a fixed key"
        );
    }

    #[test]
    fn parse_reads_only_the_default_profile() {
        let c = parse("[other]\naws_access_key_id=X\n[default]\naws_access_key_id = A\naws_secret_access_key=B\n")
            .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("A", "B")
        );
        assert!(parse("[other]\naws_access_key_id=X\naws_secret_access_key=Y\n").is_err());
    }
}
