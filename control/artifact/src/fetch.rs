//! Fetches an artifact into a fresh directory, all or nothing.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::{copy_dir, download, s3, unzip, ArtifactError, ArtifactSource, Context, Limits};

/// Fetches and unpacks `source` into `dest`, which must not exist and is
/// created. Nothing is written outside `dest`; on any failure (or if the
/// future is dropped) `dest` is removed again.
pub async fn fetch(
    source: &ArtifactSource,
    dest: &Path,
    limits: &Limits,
) -> Result<Context, ArtifactError> {
    std::fs::create_dir(dest).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => ArtifactError::DestinationExists(dest.to_path_buf()),
        _ => ArtifactError::io(dest, e),
    })?;
    let guard = RemoveOnDrop(Some(dest.to_path_buf()));
    let total = match source {
        ArtifactSource::ZipFile(path) => {
            let path = &inside_roots(path, limits)?;
            let archive = File::open(path).map_err(|e| ArtifactError::io(path, e))?;
            unzip_blocking(archive, dest, limits).await?
        }
        ArtifactSource::Http(url) => {
            let archive = download::download(url, dest, limits).await?;
            unzip_blocking(archive, dest, limits).await?
        }
        ArtifactSource::S3 { bucket, key } => {
            let archive = s3::download(bucket, key, dest, limits).await?;
            // Unlike a folder, an object cannot be anything but a zip: say
            // so with the URI, not just that the bytes did not parse.
            unzip_blocking(archive, dest, limits)
                .await
                .map_err(|e| match e {
                    ArtifactError::BadZip(why) => ArtifactError::S3 {
                        uri: format!("s3://{bucket}/{key}"),
                        reason: format!("the object is not a readable zip archive ({why})"),
                    },
                    other => other,
                })?
        }
        ArtifactSource::Directory(path) => {
            let src = inside_roots(path, limits)?;
            let (dest, limits) = (dest.to_path_buf(), limits.clone());
            blocking(move || copy_dir::copy(&src, &dest, &limits)).await?
        }
    };
    let context = Context::unpacked(dest, total)?;
    guard.disarm();
    Ok(context)
}

/// The roots were checked when the request came in; a symlink swapped in
/// since must not take the build elsewhere.
fn inside_roots(path: &Path, limits: &Limits) -> Result<PathBuf, ArtifactError> {
    let uri = format!("file://{}", path.display());
    limits.sources.check_file(&uri, path)
}

async fn unzip_blocking(archive: File, dest: &Path, limits: &Limits) -> Result<u64, ArtifactError> {
    let (dest, limits) = (dest.to_path_buf(), limits.clone());
    blocking(move || unzip::unpack(archive, &dest, &limits)).await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ArtifactError::Task(e.to_string()))?
}

/// Removes a half-written destination unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dest) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dest) {
                tracing::warn!(dest = %dest.display(), error = %e, "cannot remove a failed artifact");
            }
        }
    }
}
