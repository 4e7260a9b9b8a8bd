//! `--role-credentials FILE`: static keys per execution role, read from a
//! JSON file only emberd's user can read.
//!
//! ```json
//! { "arn:aws:iam::123456789012:role/app": {
//!     "accessKeyId": "AKIA…", "secretAccessKey": "…",
//!     "sessionToken": "…", "expiration": "2027-01-01T00:00:00Z" } }
//! ```
//!
//! The file is checked again whenever it changes (its inode, size or
//! modification time), so keys rotate without a restart. A change that
//! breaks it (bad JSON, loosened permissions) is logged and the last good
//! keys stay in force: a half-written file must not take every VM's
//! credentials away.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Deserialize;

/// Far more than any real mapping; a bigger file is a mistake.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: owned by uid {owner}, but emberd runs as uid {euid}")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "{path}: mode {mode:04o} lets others read the keys; it must be 0600 or stricter (chmod 600)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
}

/// One role's keys, as the file gives them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
    /// RFC 3339; without it the keys are served with a rolling expiration.
    #[serde(default)]
    pub expiration: Option<String>,
}

/// What one version of the file said, and when it was written.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub roles: HashMap<String, RoleKeys>,
    pub written: SystemTime,
}

/// Identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    /// Changes on a chmod too, which the mode check must see.
    ctime_ns: i128,
}

impl Signature {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

struct State {
    current: Arc<Snapshot>,
    /// The version `current` came from, or the last broken one (logged once).
    seen: Signature,
}

pub struct RoleCredentials {
    path: PathBuf,
    state: Mutex<State>,
}

impl RoleCredentials {
    /// Reads and checks the file; any problem is an error (emberd exits).
    pub fn load(path: &Path) -> Result<Self, RolesError> {
        let (snapshot, seen) = read_checked(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                current: Arc::new(snapshot),
                seen,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys now in force, re-read first if the file changed.
    pub fn current(&self) -> Arc<Snapshot> {
        let mut state = self.lock();
        let changed = match std::fs::metadata(&self.path) {
            Ok(meta) => Signature::of(&meta) != state.seen,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "role credentials: {e}; keeping the last keys read");
                false
            }
        };
        if changed {
            match read_checked(&self.path) {
                Ok((snapshot, seen)) => {
                    tracing::info!(path = %self.path.display(), roles = snapshot.roles.len(), "role credentials reloaded");
                    state.current = Arc::new(snapshot);
                    state.seen = seen;
                }
                Err(e) => {
                    tracing::error!(
                        "role credentials not reloaded, keeping the last keys read: {e}"
                    );
                    if let Ok(meta) = std::fs::metadata(&self.path) {
                        state.seen = Signature::of(&meta);
                    }
                }
            }
        }
        Arc::clone(&state.current)
    }
}

/// Opens without following a final symlink, checks what was opened (not
/// the name, which may change meanwhile), then reads it.
fn read_checked(path: &Path) -> Result<(Snapshot, Signature), RolesError> {
    let io = |source| RolesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?
    };
    let meta = file.metadata().map_err(io)?;
    check_metadata(path, &meta)?;
    let text = read_bounded(&mut file).map_err(io)?;
    let roles = parse(&text).map_err(|message| RolesError::Malformed {
        path: path.to_path_buf(),
        message,
    })?;
    let snapshot = Snapshot {
        roles,
        written: meta.modified().unwrap_or_else(|_| SystemTime::now()),
    };
    Ok((snapshot, Signature::of(&meta)))
}

fn check_metadata(path: &Path, meta: &std::fs::Metadata) -> Result<(), RolesError> {
    let path = path.to_path_buf();
    if !meta.is_file() {
        return Err(RolesError::NotAFile { path });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(RolesError::WrongOwner {
            path,
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(RolesError::TooOpen { path, mode });
    }
    if meta.size() > MAX_FILE_BYTES {
        return Err(RolesError::TooLarge { path });
    }
    Ok(())
}

fn read_bounded(file: &mut File) -> std::io::Result<String> {
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file grew past the size limit while being read",
        ));
    }
    Ok(text)
}

/// The mapping, with every entry checked so a typo fails at start rather
/// than when a guest asks.
pub fn parse(text: &str) -> Result<HashMap<String, RoleKeys>, String> {
    let roles: HashMap<String, RoleKeys> = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON object of role ARNs to keys: {e}"))?;
    for (arn, keys) in &roles {
        if !arn.starts_with("arn:") || !arn.contains(":role/") {
            return Err(format!(
                "{arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
            ));
        }
        if keys.access_key_id.is_empty() || keys.secret_access_key.is_empty() {
            return Err(format!(
                "{arn}: accessKeyId and secretAccessKey must not be empty"
            ));
        }
        if let Some(exp) = &keys.expiration {
            humantime::parse_rfc3339_weak(exp)
                .map_err(|e| format!("{arn}: expiration {exp:?} is not an RFC 3339 time: {e}"))?;
        }
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = r#"{"arn:aws:iam::123456789012:role/app":
        {"accessKeyId":"AKIAEXAMPLE1234","secretAccessKey":"s3cr3t"}}"#;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("roles.json");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_well_formed_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let roles = RoleCredentials::load(&write(dir.path(), GOOD, 0o600)).unwrap();
        let keys = &roles.current().roles["arn:aws:iam::123456789012:role/app"];
        assert_eq!(keys.access_key_id, "AKIAEXAMPLE1234");
        assert_eq!(keys.session_token, None);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let err = RoleCredentials::load(&write(dir.path(), GOOD, mode)).err();
            assert!(matches!(err, Some(RolesError::TooOpen { .. })), "{mode:o}");
        }
        assert!(RoleCredentials::load(&write(dir.path(), GOOD, 0o400)).is_ok());
    }

    #[test]
    fn malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "[]",
            "{not json",
            r#"{"app": {"accessKeyId":"a","secretAccessKey":"b"}}"#,
            r#"{"arn:aws:iam::1:role/a": {"accessKeyId":"a"}}"#,
            r#"{"arn:aws:iam::1:role/a": {"accessKeyId":"","secretAccessKey":"b"}}"#,
            r#"{"arn:aws:iam::1:role/a": {"accessKeyId":"a","secretAccessKey":"b","expiration":"soon"}}"#,
            r#"{"arn:aws:iam::1:role/a": {"accessKeyId":"a","secretAccessKey":"b","sessiontoken":"t"}}"#,
        ] {
            let err = RoleCredentials::load(&write(dir.path(), bad, 0o600)).err();
            assert!(matches!(err, Some(RolesError::Malformed { .. })), "{bad}");
        }
    }

    #[test]
    fn a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = write(dir.path(), GOOD, 0o600);
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            RoleCredentials::load(&link),
            Err(RolesError::Io { .. })
        ));
    }

    #[test]
    fn keys_rotate_when_the_file_changes_and_a_broken_change_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), GOOD, 0o600);
        let roles = RoleCredentials::load(&path).unwrap();
        let arn = "arn:aws:iam::123456789012:role/app";
        let rotated = GOOD.replace("AKIAEXAMPLE1234", "AKIAROTATED99999");
        write(dir.path(), &rotated, 0o600);
        assert_eq!(roles.current().roles[arn].access_key_id, "AKIAROTATED99999");
        write(dir.path(), "{half a fi", 0o600);
        assert_eq!(roles.current().roles[arn].access_key_id, "AKIAROTATED99999");
        write(
            dir.path(),
            &GOOD.replace("AKIAEXAMPLE1234", "AKIATHIRD0000000"),
            0o644,
        );
        assert_eq!(roles.current().roles[arn].access_key_id, "AKIAROTATED99999");
    }
}
