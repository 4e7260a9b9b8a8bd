//! The build cache: disk layers keyed by everything that shaped them, and
//! finished snapshots keyed by their layer plus everything the running
//! app saw. An unchanged rebuild finds both and boots nothing.
//!
//! Entries are written under a temporary name and renamed into place, so
//! a crash mid-write never leaves a half entry that a later build trusts.
//! Entries are never modified after that; image versions hard-link them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct BuildCache {
    root: PathBuf,
}

/// A running hash over the inputs of a build, one step at a time.
#[derive(Clone)]
pub struct CacheKey(Sha256);

impl CacheKey {
    /// Starts from the base image and the versions of the guest pieces a
    /// build runs on (a new agent or kernel invalidates everything).
    pub fn new(base: &str, base_version: &str, guest: &str) -> Self {
        let mut h = Sha256::new();
        for part in ["ember-build-cache-v1", base, base_version, guest] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Self(h)
    }

    pub fn add(&mut self, part: &str) {
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part.as_bytes());
    }

    pub fn hex(&self) -> String {
        self.0
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl BuildCache {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        for sub in ["layers", "snapshots", "tmp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        // Leftovers of builds that died mid-write.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn layer(&self, key: &str) -> Option<PathBuf> {
        let p = self.layer_path(key);
        p.is_file().then_some(p)
    }

    pub fn layer_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!("{key}.qcow2"))
    }

    pub fn snapshot(&self, key: &str) -> Option<PathBuf> {
        let p = self.root.join("snapshots").join(key);
        p.join(ember_vmm::snapshot::MANIFEST_FILE)
            .is_file()
            .then_some(p)
    }

    /// A fresh path under the cache's scratch folder.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.join("tmp").join(name)
    }

    /// Where a build freezes its layer for `key`: a name of its own, found
    /// by no other build until [`Self::publish_layer`] (the VM that writes
    /// it could still change it until it is gone). Layers above refer to
    /// it by this path, so it is never reused.
    pub fn new_layer_path(&self, key: &str, build_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{key}.{build_id}.qcow2"))
    }

    /// Makes a layer frozen by a build whose VM has ended findable under
    /// its key. Two builds of the same step may both get here: the first
    /// one's layer is kept, and either is as good.
    pub fn publish_layer(&self, key: &str, layer: &Path) -> std::io::Result<()> {
        match std::fs::hard_link(layer, self.layer_path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves a finished snapshot directory into the cache.
    pub fn put_snapshot(&self, key: &str, dir: &Path) -> std::io::Result<PathBuf> {
        let dest = self.root.join("snapshots").join(key);
        // No exists-then-rename: two builds of the same image finish at
        // once. A directory renamed onto a non-empty one fails, and the
        // one already there was renamed whole, so it is as good as ours.
        match std::fs::rename(dir, &dest) {
            Ok(()) => Ok(dest),
            Err(e) if dest.join(ember_vmm::snapshot::MANIFEST_FILE).is_file() => {
                tracing::debug!(error = %e, key, "snapshot already cached by another build");
                std::fs::remove_dir_all(dir)?;
                Ok(dest)
            }
            Err(e) => Err(e),
        }
    }
}

/// Hard-links every file of `src` into the new directory `dest`.
pub fn link_dir(src: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::hard_link(entry.path(), dest.join(entry.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_dir(root: &Path, name: &str, content: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ember_vmm::snapshot::MANIFEST_FILE), content).unwrap();
        dir
    }

    #[test]
    fn concurrent_puts_of_one_snapshot_all_succeed_and_share_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(BuildCache::open(&tmp.path().join("cache")).unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = snapshot_dir(tmp.path(), &format!("build{i}"), &format!("{i}"));
                let (cache, barrier) = (cache.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let put = cache.put_snapshot("k", &dir);
                    (put, dir)
                })
            })
            .collect();
        for t in threads {
            let (put, dir) = t.join().unwrap();
            assert_eq!(put.unwrap(), cache.snapshot("k").unwrap());
            assert!(!dir.exists(), "the build's own copy is moved or removed");
        }
        let kept = std::fs::read_to_string(
            cache
                .snapshot("k")
                .unwrap()
                .join(ember_vmm::snapshot::MANIFEST_FILE),
        )
        .unwrap();
        assert!(kept.parse::<u32>().unwrap() < 8);
    }

    #[test]
    fn concurrent_publishes_of_one_layer_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BuildCache::open(&tmp.path().join("cache")).unwrap();
        let a = cache.new_layer_path("k", "b1");
        let b = cache.new_layer_path("k", "b2");
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        cache.publish_layer("k", &a).unwrap();
        cache.publish_layer("k", &b).unwrap();
        assert_eq!(std::fs::read(cache.layer("k").unwrap()).unwrap(), b"a");
    }

    #[test]
    fn keys_depend_on_every_part_and_its_boundaries() {
        let k = |parts: &[&str]| {
            let mut key = CacheKey::new("busybox", "1", "agent");
            for p in parts {
                key.add(p);
            }
            key.hex()
        };
        assert_eq!(k(&["RUN a"]), k(&["RUN a"]));
        assert_ne!(k(&["RUN a"]), k(&["RUN b"]));
        assert_ne!(k(&["ab", "c"]), k(&["a", "bc"]));
        assert_ne!(
            CacheKey::new("busybox", "1", "agent").hex(),
            CacheKey::new("busybox", "2", "agent").hex()
        );
    }
}
