//! Where emberd keeps its files under `--data-dir`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// Where this data dir was when emberd last started, if it has moved
    /// since: paths stored before the move name that folder.
    moved_from: Option<PathBuf>,
}

/// The file that remembers where the data dir was last opened.
const LOCATION_FILE: &str = "location";
/// A path is at most this long (Linux's PATH_MAX).
const MAX_LOCATION: u64 = 4096;

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            moved_from: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the data dir was before it moved here, read from the record
    /// the last start left (none on a first start, or when it has not
    /// moved). Paths stored before the move resolve from there.
    pub fn read_moved_from(&mut self) -> std::io::Result<Option<PathBuf>> {
        use std::io::Read;
        let file = match std::fs::File::open(self.root.join(LOCATION_FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        file.take(MAX_LOCATION + 1).read_to_string(&mut text)?;
        let previous = PathBuf::from(text.trim_end_matches('\n'));
        if text.len() as u64 > MAX_LOCATION || !previous.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{LOCATION_FILE} does not hold an absolute path"),
            ));
        }
        self.moved_from = (previous != self.root).then_some(previous);
        Ok(self.moved_from.clone())
    }

    /// Records where the data dir is now, once everything that named the
    /// old place has been moved along.
    pub fn record_location(&self) -> std::io::Result<()> {
        let tmp = self.root.join(format!("{LOCATION_FILE}.tmp"));
        let text = format!("{}\n", self.root.display());
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.root.join(LOCATION_FILE))
    }

    /// How the store names a file of this data dir: relative to it, so
    /// the folder can move.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// The file a stored path names: relative ones are in this data dir,
    /// absolute ones in the folder this data dir was before it moved are
    /// here now, any other stays as it is.
    pub fn resolve(&self, stored: impl AsRef<Path>) -> PathBuf {
        let stored = stored.as_ref();
        if stored.is_relative() {
            return self.root.join(stored);
        }
        match self
            .moved_from
            .as_ref()
            .and_then(|from| stored.strip_prefix(from).ok())
        {
            Some(rest) => self.root.join(rest),
            None => stored.to_path_buf(),
        }
    }

    /// Creates the folders emberd writes into, and makes the data folder
    /// root's alone: it holds the database (environment variables, which
    /// the model marks sensitive), credentials, keys and every VM's memory.
    /// Files written by an older emberd with looser modes are tightened.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        for file in [self.database(), self.credentials(), self.token_key()] {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        for dir in [
            self.root.clone(),
            self.root.join("images"),
            self.root.join("builds"),
            self.root.join("logs/builds"),
            self.root.join("vms"),
            self.root.join("microvms"),
            self.root.join("logs/microvms"),
            self.pool(),
            self.forks(),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("ember.db")
    }

    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials")
    }

    /// `--tls-self-signed`'s certificate and key.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The URL emberd serves on, for the `ember` CLI and scripts.
    pub fn endpoint_file(&self) -> PathBuf {
        self.root.join("endpoint")
    }

    pub fn assets(&self) -> PathBuf {
        self.root.join("assets")
    }

    pub fn build_cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Image snapshots fetched from the object store, by digest.
    pub fn fetched_snapshots(&self) -> PathBuf {
        self.root.join("fetched")
    }

    /// QEMU runtime folders of running VMs.
    pub fn vm_state(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn build_work(&self, build_id: &str) -> PathBuf {
        self.root.join("builds").join(build_id)
    }

    pub fn build_log(&self, build_id: &str) -> PathBuf {
        self.root
            .join("logs/builds")
            .join(format!("{build_id}.log"))
    }

    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.root.join("images").join(image)
    }

    /// A microVM's files that outlive its QEMU process (its suspended
    /// state).
    pub fn microvm_dir(&self, id: &str) -> PathBuf {
        self.microvms().join(id)
    }

    pub fn microvms(&self) -> PathBuf {
        self.root.join("microvms")
    }

    /// Snapshots of running microVMs that forks start from; each lives
    /// until its children have started.
    pub fn forks(&self) -> PathBuf {
        self.root.join("forks")
    }

    /// The app's output of one microVM, kept across suspend and resume.
    pub fn microvm_log(&self, id: &str) -> PathBuf {
        self.root.join("logs/microvms").join(format!("{id}.log"))
    }

    /// One empty file per VM in the warm pool, named by its id: what a
    /// restarted emberd must end (pooled VMs have no microVM record).
    pub fn pool(&self) -> PathBuf {
        self.root.join("pool")
    }

    /// The key endpoint tokens are signed with.
    pub fn token_key(&self) -> PathBuf {
        self.root.join("token.key")
    }

    pub fn snapshot(&self, image: &str, version: u32) -> PathBuf {
        self.image_dir(image)
            .join(version.to_string())
            .join("snapshot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_follow_a_moved_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old");
        let new = tmp.path().join("new");
        std::fs::create_dir_all(&old).unwrap();
        let first = DataDir::new(&old);
        let stored = first.relative(&first.snapshot("img", 1));
        assert_eq!(stored, "images/img/1/snapshot");
        first.record_location().unwrap();
        // What an older emberd stored: an absolute path.
        let legacy = first.build_log("b1");
        std::fs::rename(&old, &new).unwrap();

        let mut moved = DataDir::new(&new);
        assert_eq!(moved.read_moved_from().unwrap(), Some(old.clone()));
        assert_eq!(moved.resolve(&stored), new.join("images/img/1/snapshot"));
        assert_eq!(moved.resolve(&legacy), new.join("logs/builds/b1.log"));
        assert_eq!(moved.resolve("/elsewhere/x"), PathBuf::from("/elsewhere/x"));
        moved.record_location().unwrap();
        assert_eq!(DataDir::new(&new).read_moved_from().unwrap(), None);

        std::fs::write(new.join(LOCATION_FILE), "relative/path\n").unwrap();
        assert!(DataDir::new(&new).read_moved_from().is_err());
    }
}
