//! Image snapshots in an object store (`--blob-store s3://bucket/prefix`):
//! a build uploads its snapshot before its version is SUCCESSFUL, and a
//! node that runs a version another node built fetches it into its cache
//! (`DATA_DIR/cache/fetched/<digest>`), verified, once. The cache keeps
//! to `--blob-cache-mib` by removing the least recently used snapshot no
//! microVM of this node still needs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use ember_blobstore::{BlobError, BlobLocation, BlobStore, FetchLimits, Published};
use ember_vmm::{Hypervisor, PortableFile};

use crate::layout::DataDir;
use crate::microvms::DiskReserve;

#[derive(Debug, Clone, clap::Args)]
pub struct BlobArgs {
    /// Keep image snapshots in this S3 bucket (and key prefix), so every
    /// node of a cluster can run every image: a version is SUCCESSFUL once
    /// its snapshot is there, stored as content-addressed chunks. The
    /// endpoint is --s3-endpoint (AWS S3 in --region without it), the
    /// credentials emberd's own AWS chain.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub blob_store: Option<String>,
    /// The disk that snapshots fetched from --blob-store may take in the
    /// data dir; beyond it the least recently used one that no microVM of
    /// this node needs is removed.
    #[arg(long, value_name = "MIB", default_value_t = 20_480)]
    pub blob_cache_mib: u64,
}

pub struct SnapshotBlobs {
    store: BlobStore,
    location: String,
    hv: Arc<dyn Hypervisor>,
    cache: PathBuf,
    budget_bytes: u64,
    /// A fetch writes at most what the data dir can spare above it.
    disk: DiskReserve,
    /// One fetch at a time: two runs of one new image share its fetch,
    /// and eviction never races a fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SnapshotBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBlobs")
            .field("location", &self.location)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl SnapshotBlobs {
    /// The object store of `--blob-store`, checked (the bucket answers),
    /// or `None` without the flag.
    pub async fn open(
        args: &BlobArgs,
        s3: &ember_artifact::S3Settings,
        hv: Arc<dyn Hypervisor>,
        layout: &DataDir,
        disk: DiskReserve,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(uri) = &args.blob_store else {
            return Ok(None);
        };
        let location = BlobLocation::parse(uri).context("--blob-store")?;
        let shown = location.to_string();
        let store = BlobStore::new(location, s3).await;
        store
            .check()
            .await
            .with_context(|| format!("--blob-store {shown}"))?;
        let cache = layout.fetched_snapshots();
        std::fs::create_dir_all(&cache).with_context(|| format!("{}", cache.display()))?;
        tracing::info!(store = %shown, cache_mib = args.blob_cache_mib, "image snapshots in an object store");
        Ok(Some(Arc::new(Self {
            store,
            location: shown,
            hv,
            cache,
            budget_bytes: args.blob_cache_mib.saturating_mul(1 << 20),
            disk,
            fetching: tokio::sync::Mutex::new(()),
        })))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Uploads the snapshot in `dir` with its disk's backing files.
    pub async fn publish(&self, dir: &Path) -> Result<Published, String> {
        let files = self.portable_files(dir).await?;
        self.store
            .publish(&to_pack(&files))
            .await
            .map_err(|e| format!("uploading the snapshot to {}: {e}", self.location))
    }

    async fn portable_files(&self, dir: &Path) -> Result<Vec<PortableFile>, String> {
        let (hv, dir) = (Arc::clone(&self.hv), dir.to_path_buf());
        tokio::task::spawn_blocking(move || hv.portable_files(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the snapshot's files: {e}"))
    }

    /// The class of the snapshots this node writes, hence of the ones it
    /// publishes.
    pub fn compatibility(&self) -> String {
        self.hv.compatibility()
    }

    /// Where the snapshot `digest` is (or would be) in this node's cache.
    pub fn local_dir(&self, digest: &str) -> PathBuf {
        self.cache.join(digest)
    }

    /// The snapshot `digest` in this node's cache, fetched first if it is
    /// not there; `in_use` are the digests this node's microVMs need,
    /// which eviction keeps.
    pub async fn ensure(&self, digest: &str, in_use: &HashSet<String>) -> Result<PathBuf, String> {
        if !is_digest(digest) {
            return Err(format!("{digest:?} is not a snapshot digest"));
        }
        let dir = self.local_dir(digest);
        let _one = self.fetching.lock().await;
        if self.hv.snapshot_info(&dir).is_ok() {
            touch(&dir);
            return Ok(dir);
        }
        let t0 = std::time::Instant::now();
        self.fetch(digest, &dir).await?;
        tracing::info!(snapshot = %digest, ms = t0.elapsed().as_millis() as u64, "snapshot fetched from the object store");
        let mut keep = in_use.clone();
        keep.insert(digest.to_string());
        evict_lru(&self.cache, self.budget_bytes, &keep);
        Ok(dir)
    }

    async fn fetch(&self, digest: &str, dir: &Path) -> Result<(), String> {
        // Under the lock, any temporary folder is an interrupted fetch's.
        remove_temporaries(&self.cache);
        let _ = std::fs::remove_dir_all(dir);
        let tmp = self.cache.join(format!(".fetch-{digest}"));
        std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        // The files' sizes, holes included (a base image is mostly one):
        // the cache's budget counts blocks, so it is no bound here. What
        // the fetch writes is: checked against the index before any byte
        // lands, so a snapshot too big for the disk fails at once.
        let spare = self.disk.free_mib().map_or(u64::MAX, |free| {
            free.saturating_sub(self.disk.reserve_mib)
                .saturating_mul(1 << 20)
        });
        let limits = FetchLimits {
            max_written_bytes: spare,
            ..FetchLimits::default()
        };
        let result = async {
            let fetched = self.store.fetch(digest, &tmp, &limits).await.map_err(|e| {
                let why = match e {
                    BlobError::TooLarge { bytes, limit, .. } if limit == spare => format!(
                        "it needs {} MiB of disk and the data dir has {} MiB free above \
                             the {} MiB kept for the host (--disk-reserve-mib)",
                        bytes.div_ceil(1 << 20),
                        limit >> 20,
                        self.disk.reserve_mib
                    ),
                    other => other.to_string(),
                };
                format!("fetching snapshot {digest} from {}: {why}", self.location)
            })?;
            let files: Vec<PortableFile> = fetched
                .into_iter()
                .map(|f| PortableFile {
                    path: tmp.join(&f.name),
                    name: f.name,
                    backing: f.backing,
                })
                .collect();
            let (hv, at) = (Arc::clone(&self.hv), tmp.clone());
            tokio::task::spawn_blocking(move || hv.relink_portable(&at, &files))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the fetched snapshot {digest}: {e}"))?;
            std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        // The relinked chain names files by their place in `dir` now.
        self.hv
            .snapshot_info(dir)
            .map(|_| ())
            .map_err(|e| format!("the fetched snapshot {digest}: {e}"))
    }
}

/// Removes the least recently used snapshots in `cache` not in `keep`
/// until the cache takes at most `budget` bytes of disk.
fn evict_lru(cache: &Path, budget: u64, keep: &HashSet<String>) {
    let mut entries: Vec<(SystemTime, u64, String)> = Vec::new();
    let Ok(list) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in list.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_digest(&name) {
            continue;
        }
        let used = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        entries.push((used, allocated(&entry.path()), name));
    }
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort();
    for (_, bytes, name) in entries {
        if total <= budget {
            break;
        }
        if keep.contains(&name) {
            continue;
        }
        match std::fs::remove_dir_all(cache.join(&name)) {
            Ok(()) => {
                tracing::info!(snapshot = %name, bytes, "fetched snapshot evicted from the cache");
                total = total.saturating_sub(bytes);
            }
            Err(e) => tracing::warn!(snapshot = %name, "evicting a fetched snapshot: {e}"),
        }
    }
}

fn to_pack(files: &[PortableFile]) -> Vec<ember_blobstore::PackFile> {
    files
        .iter()
        .map(|f| ember_blobstore::PackFile {
            name: f.name.clone(),
            path: f.path.clone(),
            backing: f.backing.clone(),
        })
        .collect()
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Marks a cached snapshot used now, for eviction's order.
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn remove_temporaries(cache: &Path) {
    let Ok(list) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in list.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".fetch-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Disk blocks a folder's files take (holes are free).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|list| {
            list.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks().saturating_mul(512))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_lowercase_hex() {
        assert!(is_digest(&"a1".repeat(32)));
        assert!(!is_digest(&"A1".repeat(32)));
        assert!(!is_digest("../etc"));
        assert!(!is_digest(&"a".repeat(63)));
    }

    #[test]
    fn eviction_removes_the_least_recently_used_snapshot_no_vm_needs() {
        let cache = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|c| c.repeat(64)).collect();
        for (age, name) in names.iter().enumerate() {
            let dir = cache.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("memory.ram"), vec![1u8; 1 << 20]).unwrap();
            // a is the oldest, d the newest.
            let used = SystemTime::now() - std::time::Duration::from_secs(100 - age as u64);
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(used)
                .unwrap();
        }
        std::fs::create_dir(cache.path().join(".fetch-x")).unwrap();
        let keep: HashSet<String> = [names[0].clone()].into();
        // Room for two: a is in use, so b and c go, oldest first.
        evict_lru(cache.path(), 2 << 20, &keep);
        let mut left: Vec<String> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![".fetch-x".to_string(), names[0].clone(), names[3].clone()]
        );
    }
}
