//! AWS Signature Version 4 verification. The expected signature is computed
//! by `aws-sigv4` from the request as received (method, raw path and query,
//! the headers the client says it signed, the body), so the canonical form
//! is the one the SDKs use, including the double percent-encoding of paths
//! that botocore applies for non-S3 services.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How far `X-Amz-Date` may be from the server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// The signing name of the service (`signingName` in the model).
pub const SIGNING_NAME: &str = "lambda";
const MAX_AUTHORIZATION_BYTES: usize = 4096;
const MAX_SIGNED_HEADERS: usize = 64;

/// The one key pair the server accepts.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Who signed a request that passed verification; inserted into the
/// request's extensions for handlers that care (e.g. the region for ARNs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthContext {
    pub access_key_id: String,
    pub region: String,
}

/// axum middleware: `.layer(axum::middleware::from_fn_with_state(creds, require_sigv4))`.
/// Buffers the body (at most [`MAX_BODY_BYTES`]) because the signature covers it.
pub async fn require_sigv4(
    State(credentials): State<Arc<Credentials>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    // Everything but the payload hash is checked before the body is read,
    // so a caller without the key cannot make the server buffer a body.
    let prechecked = match credentials.precheck(&parts.headers, SystemTime::now()) {
        Ok(prechecked) => prechecked,
        Err(error) => {
            tracing::info!(method = %parts.method, uri = %parts.uri, error = %error, "request refused before its body was read");
            return error.into_response();
        }
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return body_too_large().into_response(),
    };
    let verified =
        credentials.verify_prechecked(prechecked, &parts.method, &parts.uri, &parts.headers, &body);
    match verified {
        Ok(context) => {
            parts.extensions.insert(context);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(error) => {
            tracing::info!(method = %parts.method, uri = %parts.uri, error = %error, "request refused");
            error.into_response()
        }
    }
}

pub(crate) fn body_too_large() -> ApiError {
    ApiError::new(
        ErrorKind::RequestEntityTooLarge,
        format!("Request body is larger than {MAX_BODY_BYTES} bytes or could not be read"),
    )
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
struct AuthorizationHeader<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::IncompleteSignature, message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidSignature, message)
}

fn parse_authorization(header: &str) -> Result<AuthorizationHeader<'_>, ApiError> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return Err(incomplete("Authorization header is too long"));
    }
    let rest = header.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        incomplete("Authorization header must use the AWS4-HMAC-SHA256 algorithm")
    })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or_else(|| {
            incomplete(format!(
                "Authorization header has a malformed part: '{part}'"
            ))
        })?;
        match key {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let missing =
        |name: &str| incomplete(format!("Authorization header requires '{name}' parameter"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(format!(
            "Credential must have the form ACCESS_KEY/DATE/REGION/SERVICE/aws4_request, got '{credential}'"
        )));
    };
    if terminator != "aws4_request" {
        return Err(invalid(
            "Credential should be scoped with a valid terminator: 'aws4_request'",
        ));
    }
    let signed_headers: Vec<&str> = signed_headers.split(';').collect();
    if signed_headers.len() > MAX_SIGNED_HEADERS {
        return Err(incomplete("Too many signed headers"));
    }
    Ok(AuthorizationHeader {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Parses `YYYYMMDDTHHMMSSZ` (the `X-Amz-Date` format).
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
}

impl Credentials {
    /// The `[default]` profile's key pair from the text of an AWS
    /// shared-credentials file (the format emberd keeps its key in).
    pub fn from_shared_file(text: &str) -> Option<Credentials> {
        let mut in_default = false;
        let (mut id, mut secret) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                in_default = section.trim() == "default";
            } else if let (true, Some((k, v))) = (in_default, line.split_once('=')) {
                match k.trim() {
                    "aws_access_key_id" => id = Some(v.trim().to_string()),
                    "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key))
                if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
            {
                Some(Credentials {
                    access_key_id,
                    secret_access_key,
                })
            }
            _ => None,
        }
    }

    /// Checks one request's signature at time `now`.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<AuthContext, ApiError> {
        let prechecked = self.precheck(headers, now)?;
        self.verify_prechecked(prechecked, method, uri, headers, body)
    }

    /// The checks that need no body: the Authorization header's form, the
    /// access key, the scope, the date and the signed headers' presence.
    /// A payload left unsigned (`UNSIGNED-PAYLOAD`) is refused: this
    /// service's clients sign their payloads.
    pub fn precheck(&self, headers: &HeaderMap, now: SystemTime) -> Result<Prechecked, ApiError> {
        let auth = authorization_of(headers)?;
        if auth.access_key_id != self.access_key_id {
            return Err(ApiError::new(
                ErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ));
        }
        if auth.service != SIGNING_NAME {
            return Err(invalid(format!(
                "Credential should be scoped to correct service: '{SIGNING_NAME}'."
            )));
        }
        for required in ["host", "x-amz-date"] {
            if !auth.signed_headers.contains(&required) {
                return Err(incomplete(format!(
                    "'{required}' must be a 'SignedHeader' in the AWS Authorization."
                )));
            }
        }
        let amz_date = header_text(headers, "x-amz-date")?;
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            incomplete(format!(
                "X-Amz-Date '{amz_date}' is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?;
        let skew = now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if skew > MAX_CLOCK_SKEW {
            return Err(invalid(format!(
                "Signature expired: {amz_date} is more than {} minutes away from the server's time",
                MAX_CLOCK_SKEW.as_secs() / 60
            )));
        }
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                auth.date,
                amz_date.get(..8).unwrap_or(amz_date)
            )));
        }

        signed_header_values(&auth, headers)?;
        if headers
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes() == b"UNSIGNED-PAYLOAD")
        {
            return Err(invalid(
                "UNSIGNED-PAYLOAD is not accepted by this service: sign the payload",
            ));
        }
        Ok(Prechecked { signed_at })
    }

    /// The full signature over the body, for a request whose headers
    /// passed [`precheck`](Self::precheck).
    pub fn verify_prechecked(
        &self,
        prechecked: Prechecked,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<AuthContext, ApiError> {
        let auth = authorization_of(headers)?;
        let signed_at = prechecked.signed_at;
        let signed = signed_header_values(&auth, headers)?;
        let signable_body = SignableBody::Bytes(body);
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let expected = self.expected_signature(
            method.as_str(),
            path_and_query,
            signed,
            signable_body,
            auth.region,
            signed_at,
        )?;
        if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
            Ok(AuthContext {
                access_key_id: auth.access_key_id.to_owned(),
                region: auth.region.to_owned(),
            })
        } else {
            Err(invalid(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            ))
        }
    }

    fn expected_signature(
        &self,
        method: &str,
        path_and_query: &str,
        headers: Vec<(&str, &str)>,
        body: SignableBody<'_>,
        region: &str,
        time: SystemTime,
    ) -> Result<String, ApiError> {
        let identity = aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "ember",
        )
        .into();
        let mut settings = SigningSettings::default();
        // Sign exactly the headers the client listed, whatever they are.
        settings.excluded_headers = Some(Vec::new());
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SIGNING_NAME)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| ApiError::internal(format!("signing parameters: {e}")))?
            .into();
        let request = SignableRequest::new(method, path_and_query, headers.into_iter(), body)
            .map_err(|e| incomplete(format!("The request cannot be canonicalized: {e}")))?;
        let output = sign(request, &params)
            .map_err(|e| incomplete(format!("The request cannot be canonicalized: {e}")))?;
        Ok(output.signature().to_owned())
    }
}

/// What [`Credentials::precheck`] learnt, for the full verification.
#[derive(Debug, Clone, Copy)]
pub struct Prechecked {
    signed_at: SystemTime,
}

fn authorization_of(headers: &HeaderMap) -> Result<AuthorizationHeader<'_>, ApiError> {
    let authorization = headers.get("authorization").ok_or_else(|| {
        ApiError::new(
            ErrorKind::MissingAuthenticationToken,
            "Missing Authentication Token",
        )
    })?;
    let authorization = authorization
        .to_str()
        .map_err(|_| incomplete("Authorization header is not ASCII"))?;
    parse_authorization(authorization)
}

/// Every value of every signed header, in the order signed; each must be
/// present and ASCII.
fn signed_header_values<'a>(
    auth: &AuthorizationHeader<'a>,
    headers: &'a HeaderMap,
) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let values = headers.get_all(*name);
        if values.iter().next().is_none() {
            return Err(incomplete(format!(
                "Signed header '{name}' is missing from the request"
            )));
        }
        for value in values {
            let text = value
                .to_str()
                .map_err(|_| incomplete(format!("Signed header '{name}' is not ASCII")))?;
            signed.push((*name, text));
        }
    }
    Ok(signed)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .ok_or_else(|| incomplete(format!("Authorization requires the '{name}' header")))?
        .to_str()
        .map_err(|_| incomplete(format!("Header '{name}' is not ASCII")))
}

#[cfg(test)]
mod tests;
