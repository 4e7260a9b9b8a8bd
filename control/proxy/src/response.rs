//! The proxy's own answers: a status and `x-aws-proxy-error` from the
//! code, JSON `{"message": ...}` saying it in words.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::error_code::{ProxyErrorCode, ERROR_HEADER};

/// Either a guest's streamed body or one of the proxy's small answers.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// An error answer. Messages are the proxy's own words, never a guest's or
/// a client's, so nothing needs escaping beyond what serde does.
pub(crate) fn error(code: ProxyErrorCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = code.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON.clone());
    headers.insert(&ERROR_HEADER, code.header_value());
    response
}
