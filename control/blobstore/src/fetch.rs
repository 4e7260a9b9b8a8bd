//! Fetching a snapshot: the index checked in full, then every stored chunk
//! written at its offset into sparse files, each checked against its key.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{stream, StreamExt};

use crate::index::{self, SnapshotIndex};
use crate::s3::{self, Body};
use crate::{blocking, BlobError, BlobStore, FetchLimits, FetchedFile, IN_FLIGHT, MAX_INDEX_BYTES};

/// One stored chunk to download.
struct Job {
    file: usize,
    chunk: usize,
    digest: String,
    offset: u64,
    len: u64,
}

pub(crate) async fn fetch(
    store: &BlobStore,
    digest: &str,
    dest: &Path,
    limits: &FetchLimits,
) -> Result<Vec<FetchedFile>, BlobError> {
    if !index::is_digest(digest) {
        return Err(BlobError::Invalid(format!(
            "{digest:.100?} is not a snapshot digest (64 lowercase hex digits)"
        )));
    }
    let key = store.index_key(digest);
    let uri = store.uri(&key);
    let bucket = &store.location.bucket;
    let body = s3::timed(
        "GetObject",
        &uri,
        s3::get(&store.client, bucket, &key, &uri, MAX_INDEX_BYTES),
    )
    .await?;
    let bytes = match body {
        Body::Bytes(bytes) => bytes,
        Body::Missing => {
            return Err(BlobError::NotFound {
                digest: digest.to_string(),
                key: uri,
            })
        }
        Body::TooLong => {
            return Err(BlobError::Corrupt {
                what: format!("snapshot index {digest}"),
                reason: format!("larger than {MAX_INDEX_BYTES} bytes"),
            })
        }
    };
    let index = SnapshotIndex::decode(&bytes, digest, limits)?;

    let dir = dest.to_path_buf();
    let index = Arc::new(index);
    let files = {
        let index = Arc::clone(&index);
        blocking(dest, move || create_files(&dir, &index)).await?
    };

    let mut jobs = Vec::new();
    for (i, file) in index.files.iter().enumerate() {
        let stored = file.chunks.iter().flatten().count();
        tracing::debug!(file = %file.name, size = file.size, chunks = file.chunks.len(), stored, "fetching");
        for (c, chunk) in file.chunks.iter().enumerate() {
            if let Some(digest) = chunk {
                let offset = c as u64 * index.chunk_size;
                jobs.push(Job {
                    file: i,
                    chunk: c,
                    digest: digest.clone(),
                    offset,
                    len: index.chunk_size.min(file.size - offset),
                });
            }
        }
    }
    let count = jobs.len();
    let mut bytes_fetched = 0u64;
    let (files, index_ref) = (&files, &index);
    let mut done = stream::iter(jobs)
        .map(|job| async move {
            let (file, path) = &files[job.file];
            let name = &index_ref.files[job.file].name;
            chunk(store, Arc::clone(file), path, name, &job).await?;
            Ok::<_, BlobError>(job.len)
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = done.next().await {
        bytes_fetched += result?;
    }
    drop(done);

    for (file, path) in files {
        let file = Arc::clone(file);
        let at = path.clone();
        blocking(path, move || file.sync_all().map_err(BlobError::io(&at))).await?;
    }
    let dir = dest.to_path_buf();
    blocking(dest, move || {
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(BlobError::io(&dir))
    })
    .await?;

    tracing::info!(
        snapshot = %digest,
        store = %store.location,
        files = index.files.len(),
        bytes = index.files.iter().map(|f| f.size).sum::<u64>(),
        chunks_fetched = count,
        bytes_fetched,
        "snapshot fetched"
    );
    Ok(index
        .files
        .iter()
        .map(|f| FetchedFile {
            name: f.name.clone(),
            size: f.size,
            backing: f.backing.clone(),
        })
        .collect())
}

/// Creates every file of `index` in the empty directory `dir`, new (never
/// through a link) and sparse at its full size.
fn create_files(dir: &Path, index: &SnapshotIndex) -> Result<Vec<(Arc<File>, PathBuf)>, BlobError> {
    let mut entries = std::fs::read_dir(dir).map_err(BlobError::io(dir))?;
    if entries.next().is_some() {
        return Err(BlobError::Invalid(format!(
            "{} is not an empty directory",
            dir.display()
        )));
    }
    index
        .files
        .iter()
        .map(|f| {
            let path = dir.join(&f.name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(BlobError::io(&path))?;
            file.set_len(f.size).map_err(BlobError::io(&path))?;
            Ok((Arc::new(file), path))
        })
        .collect()
}

/// Downloads one chunk, checks its length and digest, writes it in place.
async fn chunk(
    store: &BlobStore,
    file: Arc<File>,
    path: &Path,
    name: &str,
    job: &Job,
) -> Result<(), BlobError> {
    let key = store.chunk_key(&job.digest);
    let uri = store.uri(&key);
    let corrupt = |reason: String| BlobError::Corrupt {
        what: format!("{name}, chunk {} ({uri})", job.chunk),
        reason,
    };
    let body = s3::timed(
        "GetObject",
        &uri,
        s3::get(&store.client, &store.location.bucket, &key, &uri, job.len),
    )
    .await?;
    let bytes = match body {
        Body::Bytes(bytes) if bytes.len() as u64 == job.len => bytes,
        Body::Bytes(bytes) => {
            return Err(corrupt(format!("{} bytes, not {}", bytes.len(), job.len)))
        }
        Body::TooLong => return Err(corrupt(format!("longer than {} bytes", job.len))),
        Body::Missing => return Err(corrupt("the chunk is missing from the store".to_string())),
    };
    let (at, offset, want) = (path.to_path_buf(), job.offset, job.digest.clone());
    let mismatch = blocking(path, move || {
        let found = index::sha256_hex(&bytes);
        if found != want {
            return Ok(Some(found));
        }
        file.write_all_at(&bytes, offset)
            .map_err(BlobError::io(&at))?;
        Ok(None)
    })
    .await?;
    match mismatch {
        Some(found) => Err(corrupt(format!("its content's sha256 is {found}"))),
        None => Ok(()),
    }
}
