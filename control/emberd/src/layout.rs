//! Where emberd keeps its files under `--data-dir`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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
