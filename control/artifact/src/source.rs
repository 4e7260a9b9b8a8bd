use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::{ArtifactError, SourcePolicy};

/// Longest `codeArtifact.uri` accepted.
pub const MAX_URI_LEN: usize = 2048;

/// How long [`validate_uri`] waits for a host's addresses: a request
/// should not hang on a slow resolver, and the download checks again.
pub const HOST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a code artifact comes from, after [`validate_uri`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A zip file on the emberd host.
    ZipFile(PathBuf),
    /// A directory on the emberd host, copied (never referenced).
    Directory(PathBuf),
    /// A zip to download over `http` or `https`.
    Http(Url),
    /// A zip object in S3 (or the S3-compatible store emberd is set up for).
    S3 { bucket: String, key: String },
}

/// The request-time check of a `codeArtifact.uri`: [`parse_uri`], then, for
/// `http(s)`, the addresses its host resolves to now must be ones `policy`
/// permits (see [`SourcePolicy::check_host`]).
pub async fn validate_uri(
    uri: &str,
    policy: &SourcePolicy,
) -> Result<ArtifactSource, ArtifactError> {
    let source = parse_uri(uri, policy)?;
    if let ArtifactSource::Http(url) = &source {
        policy.check_host(url, HOST_LOOKUP_TIMEOUT).await?;
    }
    Ok(source)
}

/// Syntactic and existence check of a `codeArtifact.uri`, without network:
/// scheme `file`, `http`, `https` or `s3` (`s3://bucket/key`, S3's bucket
/// name rules, a key of 1 to 1024 bytes); no NUL; at most [`MAX_URI_LEN`] bytes;
/// a `file` path must be absolute, exist and, when `policy` has roots,
/// resolve inside one of them (the source then holds the real path).
pub fn parse_uri(uri: &str, policy: &SourcePolicy) -> Result<ArtifactSource, ArtifactError> {
    let invalid = |reason: &str| ArtifactError::InvalidUri(format!("{reason}: {uri:.200}"));
    if uri.len() > MAX_URI_LEN {
        return Err(ArtifactError::InvalidUri(format!(
            "longer than {MAX_URI_LEN} bytes"
        )));
    }
    if uri.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if uri.starts_with("s3://") {
        let (bucket, key) = crate::s3::parse(uri)?;
        return Ok(ArtifactSource::S3 { bucket, key });
    }
    let url = Url::parse(uri).map_err(|e| invalid(&format!("not a URI ({e})")))?;
    match url.scheme() {
        "http" | "https" => {
            if url.host_str().map_or(true, str::is_empty) {
                return Err(invalid("no host"));
            }
            Ok(ArtifactSource::Http(url))
        }
        "file" => {
            // `file://host/path` would mean a path on another machine.
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(invalid("a file URI must not name a host"));
            }
            let path = url
                .to_file_path()
                .map_err(|()| invalid("not an absolute file path"))?;
            // Percent-decoding can produce a NUL the raw check could not see.
            if path.as_os_str().as_encoded_bytes().contains(&0) {
                return Err(invalid("contains a NUL byte"));
            }
            let path = policy.check_file(uri, &path)?;
            let meta = std::fs::metadata(&path)
                .map_err(|e| invalid(&format!("cannot access {} ({e})", path.display())))?;
            if meta.is_dir() {
                Ok(ArtifactSource::Directory(path))
            } else if meta.is_file() {
                Ok(ArtifactSource::ZipFile(path))
            } else {
                Err(invalid("neither a regular file nor a directory"))
            }
        }
        other => Err(invalid(&format!(
            "scheme {other:?} is not s3, file, http or https"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<ArtifactSource, ArtifactError> {
        parse_uri(uri, &SourcePolicy::default())
    }

    #[test]
    fn accepts_the_four_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("app.zip");
        std::fs::write(&zip, b"x").unwrap();
        let file_uri = format!("file://{}", zip.display());
        assert_eq!(
            parse(&file_uri).unwrap(),
            ArtifactSource::ZipFile(zip.clone())
        );
        let dir_uri = format!("file://{}", dir.path().display());
        assert_eq!(
            parse(&dir_uri).unwrap(),
            ArtifactSource::Directory(dir.path().to_path_buf())
        );
        assert!(matches!(
            parse("https://example.com/a.zip").unwrap(),
            ArtifactSource::Http(_)
        ));
        assert_eq!(
            parse("s3://bucket/app.zip").unwrap(),
            ArtifactSource::S3 {
                bucket: "bucket".to_string(),
                key: "app.zip".to_string()
            }
        );
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "ftp://example.com/a.zip",
            "file:///definitely/not/here.zip",
            "file://otherhost/etc/passwd",
            "file:relative.zip",
            "/abs/path/without/scheme",
            "http://",
            "file:///tmp/a%00b",
            "s3://bucket",
            "S3://bucket/key",
        ] {
            assert!(
                matches!(parse(bad), Err(ArtifactError::InvalidUri(_))),
                "{bad} accepted"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URI_LEN));
        assert!(parse(&long).is_err());
        assert!(parse("file:///dev/null").is_err());
    }
}
