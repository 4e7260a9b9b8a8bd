//! Uploading a snapshot: chunks first (zero ones skipped, present ones not
//! sent again), the index last.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{stream, StreamExt};

use crate::index::{self, IndexFile, SnapshotIndex};
use crate::{blocking, s3, sparse, BlobError, BlobStore, PackFile, Published, CHUNK_SIZE};
use crate::{FetchLimits, IN_FLIGHT};

/// A file being published.
struct Source {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    /// Where it may hold data (elsewhere: holes).
    ranges: Vec<(u64, u64)>,
}

/// One chunk to read and, maybe, upload.
struct Job {
    file: usize,
    chunk: usize,
    offset: u64,
    len: u64,
}

enum Outcome {
    Zero,
    Present(String),
    Uploaded(String, u64),
}

pub(crate) async fn publish(store: &BlobStore, files: &[PackFile]) -> Result<Published, BlobError> {
    index::check_files(
        files
            .iter()
            .map(|f| (f.name.as_str(), f.backing.as_deref())),
    )
    .map_err(BlobError::Invalid)?;
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        let path = f.path.clone();
        sources.push(blocking(&f.path, move || open(path)).await?);
    }

    let mut chunks: Vec<Vec<Option<String>>> = Vec::with_capacity(sources.len());
    let mut jobs = Vec::new();
    for (i, (pack, source)) in files.iter().zip(&sources).enumerate() {
        let count = source.size.div_ceil(CHUNK_SIZE);
        let count = usize::try_from(count)
            .map_err(|_| BlobError::Invalid(format!("{} is too large", pack.name)))?;
        chunks.push(vec![None; count]);
        let mut holes = 0u64;
        for c in 0..count {
            let offset = c as u64 * CHUNK_SIZE;
            let len = CHUNK_SIZE.min(source.size - offset);
            if sparse::meets(&source.ranges, offset, offset + len) {
                jobs.push(Job {
                    file: i,
                    chunk: c,
                    offset,
                    len,
                });
            } else {
                holes += 1;
            }
        }
        tracing::debug!(file = %pack.name, size = source.size, chunks = count, holes, "publishing");
    }

    let mut published = Published {
        digest: String::new(),
        bytes: sources.iter().map(|s| s.size).sum(),
        chunks: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks_uploaded: 0,
        chunks_zero: 0,
        bytes_uploaded: 0,
    };
    let read = jobs.len() as u64;
    let sources = &sources;
    let mut outcomes = stream::iter(jobs)
        .map(|job| async move {
            let outcome = chunk(store, &sources[job.file], job.offset, job.len).await?;
            Ok::<_, BlobError>((job.file, job.chunk, outcome))
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = outcomes.next().await {
        let (file, c, outcome) = result?;
        chunks[file][c] = match outcome {
            Outcome::Zero => None,
            Outcome::Present(digest) => Some(digest),
            Outcome::Uploaded(digest, len) => {
                published.chunks_uploaded += 1;
                published.bytes_uploaded += len;
                Some(digest)
            }
        };
    }
    drop(outcomes);
    published.chunks_zero = chunks.iter().flatten().filter(|c| c.is_none()).count() as u64;

    let index = SnapshotIndex {
        chunk_size: CHUNK_SIZE,
        files: files
            .iter()
            .zip(chunks)
            .zip(sources)
            .map(|((pack, chunks), source)| IndexFile {
                name: pack.name.clone(),
                size: source.size,
                backing: pack.backing.clone(),
                chunks,
            })
            .collect(),
    };
    let bytes = index.encode()?;
    let digest = index::sha256_hex(&bytes);
    let no_limit = FetchLimits {
        max_total_bytes: u64::MAX,
        max_written_bytes: u64::MAX,
    };
    index.validate(&digest, &no_limit)?;
    if bytes.len() as u64 > crate::MAX_INDEX_BYTES {
        return Err(BlobError::Invalid(format!(
            "the snapshot's index would be {} bytes, more than {}",
            bytes.len(),
            crate::MAX_INDEX_BYTES
        )));
    }
    let key = store.index_key(&digest);
    let uri = store.uri(&key);
    let bucket = &store.location.bucket;
    // Small, and always sent: a damaged copy is replaced.
    s3::timed(
        "PutObject",
        &uri,
        s3::put(&store.client, bucket, &key, &uri, bytes),
    )
    .await?;
    published.digest = digest;
    tracing::info!(
        snapshot = %published.digest,
        store = %store.location,
        files = files.len(),
        bytes = published.bytes,
        chunks = published.chunks,
        chunks_read = read,
        chunks_zero = published.chunks_zero,
        chunks_uploaded = published.chunks_uploaded,
        bytes_uploaded = published.bytes_uploaded,
        "snapshot published"
    );
    Ok(published)
}

fn open(path: PathBuf) -> Result<Source, BlobError> {
    let file = File::open(&path).map_err(BlobError::io(&path))?;
    let meta = file.metadata().map_err(BlobError::io(&path))?;
    if !meta.is_file() {
        return Err(BlobError::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    let ranges = sparse::data_ranges(&file, size);
    Ok(Source {
        file: Arc::new(file),
        path,
        size,
        ranges,
    })
}

/// Reads one chunk and uploads it unless it is zeros or already stored.
async fn chunk(
    store: &BlobStore,
    source: &Source,
    offset: u64,
    len: u64,
) -> Result<Outcome, BlobError> {
    let (file, path) = (Arc::clone(&source.file), source.path.clone());
    let read = blocking(&source.path, move || read_chunk(&file, &path, offset, len)).await?;
    let Some((bytes, digest)) = read else {
        return Ok(Outcome::Zero);
    };
    let key = store.chunk_key(&digest);
    let uri = store.uri(&key);
    let bucket = &store.location.bucket;
    s3::timed("PutObject", &uri, async {
        if s3::head_len(&store.client, bucket, &key, &uri).await? == Some(len) {
            return Ok(Outcome::Present(digest));
        }
        s3::put(&store.client, bucket, &key, &uri, bytes).await?;
        Ok(Outcome::Uploaded(digest, len))
    })
    .await
}

/// The chunk's bytes and sha256, or `None` when it is all zeros.
fn read_chunk(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Option<(Vec<u8>, String)>, BlobError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(BlobError::io(path))?;
    if sparse::is_zero(&buf) {
        return Ok(None);
    }
    let digest = index::sha256_hex(&buf);
    Ok(Some((buf, digest)))
}
