//! The proxy's own answers: JSON `{"message": ...}` with a status.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Either a guest's streamed body or one of the proxy's small answers.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// An error answer. Messages are the proxy's own words, never a guest's or
/// a client's, so nothing needs escaping beyond what serde does.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, JSON.clone());
    response
}
