//! The S3 calls, each bounded in time, with errors a person can act on.

use std::future::Future;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::BlobError;

/// The bound on one call (or one chunk's calls), body included.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// `f` within [`OP_TIMEOUT`], or an S3 error naming `op` and `uri`.
pub(crate) async fn timed<T>(
    op: &'static str,
    uri: &str,
    f: impl Future<Output = Result<T, BlobError>>,
) -> Result<T, BlobError> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(BlobError::S3 {
                op,
                key: uri.to_string(),
                reason: format!("no answer within {}s", OP_TIMEOUT.as_secs()),
            })
        })
}

fn failed(op: &'static str, uri: &str, reason: String) -> BlobError {
    BlobError::S3 {
        op,
        key: uri.to_string(),
        reason,
    }
}

pub(crate) async fn head_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> Result<(), BlobError> {
    let uri = format!("s3://{bucket}");
    timed("HeadBucket", &uri, async {
        match client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Err(failed(
                "HeadBucket",
                &uri,
                "the bucket does not exist".to_string(),
            )),
            Err(e) => Err(failed("HeadBucket", &uri, explain(&e))),
        }
    })
    .await
}

/// The object's length, or `None` when there is no such object.
pub(crate) async fn head_len(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    uri: &str,
) -> Result<Option<u64>, BlobError> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(head) => Ok(Some(
            head.content_length
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
        )),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(failed("HeadObject", uri, explain(&e))),
    }
}

pub(crate) async fn put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<(), BlobError> {
    let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_length(len)
        .body(ByteStream::from(body))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| failed("PutObject", uri, explain(&e)))
}

/// An object read with a bound.
pub(crate) enum Body {
    Missing,
    /// More than the bound: the object is not what it should be.
    TooLong,
    Bytes(Vec<u8>),
}

/// Reads the object, never more than `max` bytes of it.
pub(crate) async fn get(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    uri: &str,
    max: u64,
) -> Result<Body, BlobError> {
    let mut object = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
            return Ok(Body::Missing)
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
            return Ok(Body::Missing)
        }
        Err(e) => return Err(failed("GetObject", uri, explain(&e))),
    };
    let declared = object.content_length.and_then(|n| u64::try_from(n).ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(Body::TooLong);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    while let Some(piece) = object.body.next().await {
        let piece =
            piece.map_err(|e| failed("GetObject", uri, format!("reading the body: {e}")))?;
        if (bytes.len() + piece.len()) as u64 > max {
            return Ok(Body::TooLong);
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(Body::Bytes(bytes))
}

/// What a person can act on, from S3's answer (as `ember-artifact` words
/// it for `s3://` artifacts).
fn explain<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(reason) = credentials_problem(error) {
        return reason;
    }
    let service = match error {
        SdkError::ServiceError(_) => error.as_service_error(),
        SdkError::TimeoutError(_) => return "S3 did not answer in time".to_string(),
        SdkError::DispatchFailure(_) => return format!("cannot reach S3: {}", chain(error)),
        SdkError::ConstructionFailure(_) => {
            return format!("the request could not be made: {}", chain(error))
        }
        _ => None,
    };
    let Some(service) = service else {
        return format!(
            "S3's answer could not be read: {}",
            DisplayErrorContext(error)
        );
    };
    let status = error.raw_response().map(|r| r.status().as_u16());
    match (service.code(), status) {
        (Some("NoSuchBucket"), _) => "the bucket does not exist".to_string(),
        (Some("AccessDenied"), _) => "access denied to emberd's credentials".to_string(),
        (None, Some(403)) => {
            "access denied (emberd's credentials are refused or lack permission)".to_string()
        }
        (Some(code @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken")), _) => {
            format!("S3 refused emberd's credentials ({code})")
        }
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _) | (None, Some(301)) => {
            "the bucket is in another region than emberd's --region".to_string()
        }
        (None, Some(404)) => "not found".to_string(),
        _ => format!("S3 answered: {}", DisplayErrorContext(service)),
    }
}

/// Why emberd had no credentials to sign with, if that is the failure.
fn credentials_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut at = Some(error);
    while let Some(e) = at {
        if let Some(e) = e.downcast_ref::<CredentialsError>() {
            return Some(match e {
                CredentialsError::CredentialsNotLoaded(_) => "emberd has no AWS credentials \
                    (none in the environment, the profile, web identity, ECS or instance \
                    metadata)"
                    .to_string(),
                other => format!("loading emberd's AWS credentials failed: {}", chain(other)),
            });
        }
        at = e.source();
    }
    None
}

/// `error` and its sources, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut at = Some(error);
    while let Some(e) = at {
        let part = e.to_string();
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        at = e.source();
    }
    parts.join(": ")
}
