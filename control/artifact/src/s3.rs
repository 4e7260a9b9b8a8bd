//! `s3://bucket/key` artifacts: the names are checked when the request
//! comes in, the object is fetched at build time with the AWS SDK and
//! emberd's own credentials (the usual AWS chain), never the build's.
//!
//! The endpoint is the operator's configuration, not the request's: with
//! `--s3-endpoint` every request goes to that host (path-style, so the
//! bucket is only a path segment); without it, to AWS's regional endpoint,
//! where a bucket name that passed [`check_bucket`] can only form a label
//! under `s3.<region>.amazonaws.com`. Neither is checked against the
//! download [`SourcePolicy`](crate::SourcePolicy): no part of the request
//! chooses where the connection goes.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::spool::Spool;
use crate::{ArtifactError, Limits};

/// S3's own bound on an object key.
pub const MAX_KEY_LEN: usize = 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(600);

/// Where emberd fetches `s3://` artifacts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// An S3-compatible store's URL (path-style addressing); `None` is AWS.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: "us-east-1".to_string(),
        }
    }
}

/// Splits `s3://bucket/key` (the key taken literally, as the AWS CLI does)
/// and checks both parts.
pub(crate) fn parse(uri: &str) -> Result<(String, String), ArtifactError> {
    let invalid = |reason: &str| ArtifactError::InvalidUri(format!("{reason}: {uri:.200}"));
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("an S3 URI starts with s3://"))?;
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| invalid("an S3 URI is s3://bucket/key, and this one has no key"))?;
    check_bucket(bucket).map_err(|reason| invalid(&format!("bucket name {reason}")))?;
    if key.is_empty() {
        return Err(invalid("the object key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(&format!(
            "the object key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("the object key holds a control character"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// S3's rules for general-purpose bucket names (the blob store's bucket
/// is held to them too).
pub fn check_bucket(name: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("may hold only lowercase letters, digits, dots and hyphens");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err("must begin and end with a letter or a digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err("must not hold two adjacent dots or a dot next to a hyphen");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not be an IP address");
    }
    Ok(())
}

/// Streams the object into an unnamed temporary file inside `dir`, at most
/// `limits.max_download_bytes`, and returns it rewound.
pub(crate) async fn download(
    bucket: &str,
    key: &str,
    dir: &Path,
    limits: &Limits,
) -> Result<File, ArtifactError> {
    let uri = format!("s3://{bucket}/{key}");
    tokio::time::timeout(
        TOTAL_TIMEOUT,
        download_within(&uri, bucket, key, dir, limits),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ArtifactError::S3 {
            uri: uri.clone(),
            reason: format!("the download took longer than {}s", TOTAL_TIMEOUT.as_secs()),
        })
    })
}

async fn download_within(
    uri: &str,
    bucket: &str,
    key: &str,
    dir: &Path,
    limits: &Limits,
) -> Result<File, ArtifactError> {
    let failed = |reason: String| ArtifactError::S3 {
        uri: uri.to_string(),
        reason,
    };
    let client = client(&limits.sources.s3).await;
    let mut object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| failed(explain(&e)))?;
    let declared = object.content_length.and_then(|n| u64::try_from(n).ok());
    let mut spool = Spool::new(dir, uri, limits, declared)?;
    while let Some(chunk) = object.body.next().await {
        let chunk = chunk.map_err(|e| failed(format!("reading the object: {e}")))?;
        spool.push(&chunk)?;
    }
    spool.finish()
}

/// A client for one download: the credential chain is read afresh, so
/// rotated credentials are picked up without restarting emberd. Public as
/// `ember_artifact::s3_client`, so the blob store connects the same way.
pub async fn client(settings: &S3Settings) -> aws_sdk_s3::Client {
    // ring, like the rest of the workspace, rather than the SDK's aws-lc.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.endpoint.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// What a person can act on, from S3's answer.
fn explain(error: &SdkError<GetObjectError>) -> String {
    let Some(service) = error.as_service_error() else {
        return format!("cannot reach S3: {}", DisplayErrorContext(error));
    };
    if service.is_no_such_key() {
        return "the key does not exist".to_string();
    }
    let status = error.raw_response().map(|r| r.status().as_u16());
    match (service.code(), status) {
        (Some("NoSuchBucket"), _) => "the bucket does not exist".to_string(),
        (Some("AccessDenied"), _) | (None, Some(403)) => {
            "access denied to emberd's credentials".to_string()
        }
        (Some(code @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken")), _) => {
            format!("S3 refused emberd's credentials ({code})")
        }
        (None, Some(404)) => "the key does not exist".to_string(),
        _ => format!("S3 answered: {}", DisplayErrorContext(service)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_bucket_and_key() {
        assert_eq!(
            parse("s3://my-bucket.v2/apps/hello app.zip").unwrap(),
            ("my-bucket.v2".to_string(), "apps/hello app.zip".to_string())
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3://ab/key",
            "s3://Upper/key",
            "s3://-bucket/key",
            "s3://bucket-/key",
            "s3://a..b/key",
            "s3://192.168.1.1/key",
            "s3://under_score/key",
            "s3://bucket/a\nb",
        ] {
            assert!(
                matches!(parse(bad), Err(ArtifactError::InvalidUri(_))),
                "{bad:?} accepted"
            );
        }
        let long_bucket = format!("s3://{}/key", "a".repeat(64));
        assert!(parse(&long_bucket).is_err());
        let long_key = format!("s3://bucket/{}", "k".repeat(MAX_KEY_LEN + 1));
        assert!(parse(&long_key).is_err());
    }
}
