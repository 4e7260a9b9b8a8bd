//! Downloads a zip artifact over http(s) into an unnamed file.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use url::Url;

use crate::{ArtifactError, Limits};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 5;

/// Streams `url` into an unnamed temporary file inside `dir` (it vanishes
/// when dropped), counting bytes as they arrive. Returns it rewound.
pub(crate) async fn download(
    url: &Url,
    dir: &Path,
    limits: &Limits,
) -> Result<File, ArtifactError> {
    let fail = |source| ArtifactError::Download {
        url: url.to_string(),
        source,
    };
    // reqwest is built without a TLS crypto backend of its own; ring is the
    // one this workspace links. `Err` means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .build()
        .map_err(fail)?;
    let mut response = client.get(url.clone()).send().await.map_err(fail)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ArtifactError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let too_large = || ArtifactError::DownloadTooLarge {
        url: url.to_string(),
        limit: limits.max_download_bytes,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limits.max_download_bytes)
    {
        return Err(too_large());
    }
    let mut file = tempfile::tempfile_in(dir).map_err(|e| ArtifactError::io(dir, e))?;
    let mut received: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        received += chunk.len() as u64;
        if received > limits.max_download_bytes {
            return Err(too_large());
        }
        // Small blocking writes to a local file; a chunk is at most a few KiB.
        file.write_all(&chunk)
            .map_err(|e| ArtifactError::io(dir, e))?;
    }
    file.flush().map_err(|e| ArtifactError::io(dir, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| ArtifactError::io(dir, e))?;
    tracing::debug!(%url, received, "downloaded artifact");
    Ok(file)
}
