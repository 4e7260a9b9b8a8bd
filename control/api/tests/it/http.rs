//! The router served on a real socket, called the way an SDK calls it:
//! requests signed with aws-sigv4 on the client side, sent over HTTP/1.1.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::common::{serve, ACCESS_KEY, ARN, ENCODED_ARN, SECRET};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use ember_api::Action;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

fn request(addr: SocketAddr, method: &str, path_and_query: &str, body: &str) -> Request<Bytes> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder.body(Bytes::from(body.to_owned())).unwrap()
}

/// Signs like an SDK: aws-sigv4 with its default settings for a non-S3 service.
fn signed(mut request: Request<Bytes>, secret: &str, time: SystemTime) -> Request<Bytes> {
    let identity =
        aws_credential_types::Credentials::new(ACCESS_KEY, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-central-1")
        .name("lambda")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.uri().to_string(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(request.body()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut request);
    request
}

async fn send(addr: SocketAddr, request: Request<Bytes>) -> (StatusCode, HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request.map(Full::new)).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = send(
        addr,
        signed(request(addr, method, path, body), SECRET, SystemTime::now()),
    )
    .await;
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, headers, json)
}

fn assert_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Value,
    want_status: u16,
    want_type: &str,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(headers["x-amzn-errortype"], want_type);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["__type"], want_type);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn signed_requests_reach_the_service_as_typed_actions() {
    let (addr, recorder) = serve().await;

    // An ARN label, percent-encoded once in the path as botocore sends it.
    let (status, headers, body) =
        call(addr, "GET", &format!("/2017-03-31/tags/{ENCODED_ARN}"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"Tags": {"team": "ember"}}));
    assert!(headers.contains_key("x-amzn-requestid"));

    // A repeated query parameter, 204 without a body.
    let path = format!("/2017-03-31/tags/{ENCODED_ARN}?tagKeys=team&tagKeys=cost%20center");
    let (status, _, body) = call(addr, "DELETE", &path, "").await;
    assert_eq!((status.as_u16(), body), (204, Value::Null));

    // A JSON body, 201 from the model.
    let create = json!({
        "name": "hello",
        "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian12",
        "buildRoleArn": "arn:aws:iam::123456789012:role/build",
        "codeArtifact": {"uri": "s3://bucket/app.zip"},
        "tags": {"née": "ü"},
    });
    let (status, _, body) = call(
        addr,
        "POST",
        "/2025-09-09/microvm-images",
        &create.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["imageArn"], ARN);
    assert_eq!(body["state"], "CREATING");
    assert_eq!(body["createdAt"], 1_700_000_000.0);
    assert_eq!(body["tags"], json!({"née": "ü"}));

    let (status, _, body) = call(
        addr,
        "GET",
        "/2025-09-09/microvms?maxResults=5&imageIdentifier=hello",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"items": []}));

    let actions = recorder.actions.lock().unwrap().clone();
    assert_eq!(actions.len(), 4);
    assert!(matches!(&actions[0], Action::ListTags(r) if r.resource == ARN));
    assert!(
        matches!(&actions[1], Action::UntagResource(r) if r.resource == ARN && r.tag_keys == ["team", "cost center"])
    );
    assert!(matches!(&actions[2], Action::CreateMicrovmImage(r) if r.name == "hello"));
    assert!(
        matches!(&actions[3], Action::ListMicrovms(r) if r.max_results == Some(5) && r.image_identifier.as_deref() == Some("hello"))
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_before_the_service() {
    let (addr, recorder) = serve().await;
    let path = format!("/2017-03-31/tags/{ENCODED_ARN}");

    let (status, headers, body) = send(
        addr,
        signed(request(addr, "GET", &path, ""), "wrong", SystemTime::now()),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &headers, &body, 403, "InvalidSignatureException");

    let (status, headers, body) = send(addr, request(addr, "GET", &path, "")).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(
        status,
        &headers,
        &body,
        403,
        "MissingAuthenticationTokenException",
    );

    let stale = SystemTime::now() - Duration::from_secs(20 * 60);
    let (status, headers, body) =
        send(addr, signed(request(addr, "GET", &path, ""), SECRET, stale)).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &headers, &body, 403, "InvalidSignatureException");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("Signature expired"));

    // A body swapped after signing.
    let mut tampered = signed(
        request(addr, "POST", &path, r#"{"Tags":{"a":"b"}}"#),
        SECRET,
        SystemTime::now(),
    );
    *tampered.body_mut() = Bytes::from_static(br#"{"Tags":{"a":"c"}}"#);
    let (status, headers, body) = send(addr, tampered).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &headers, &body, 403, "InvalidSignatureException");

    assert!(recorder.actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn errors_are_json_with_the_model_status() {
    let (addr, recorder) = serve().await;

    let (status, headers, body) = call(
        addr,
        "POST",
        "/2025-09-09/microvm-images",
        r#"{"name": "x y"}"#,
    )
    .await;
    assert_error(status, &headers, &body, 400, "ValidationException");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("Value 'x y' at 'name' failed to satisfy constraint"));

    let (status, headers, body) = call(addr, "GET", "/2025-09-09/microvms?maxResults=x", "").await;
    assert_error(status, &headers, &body, 400, "ValidationException");

    let (status, headers, body) = call(addr, "GET", "/2025-09-09/microvms/vm-404", "").await;
    assert_error(status, &headers, &body, 404, "ResourceNotFoundException");
    assert_eq!(body["resourceId"], "vm-404");
    assert_eq!(body["resourceType"], "Microvm");

    let (status, headers, body) = call(addr, "POST", "/2025-09-09/microvms/vm-1/suspend", "").await;
    assert_error(status, &headers, &body, 500, "InternalServerException");

    let (status, headers, body) = call(addr, "GET", "/2025-09-09/no-such-thing", "").await;
    assert_error(status, &headers, &body, 404, "UnknownOperationException");

    let (status, headers, body) = call(addr, "PUT", "/2025-09-09/microvms", "").await;
    assert_error(status, &headers, &body, 405, "MethodNotAllowedException");

    let huge = format!(
        r#"{{"imageIdentifier": "{}"}}"#,
        "a".repeat(1024 * 1024 + 1)
    );
    let (status, headers, body) = call(addr, "POST", "/2025-09-09/microvms", &huge).await;
    assert_error(
        status,
        &headers,
        &body,
        413,
        "RequestEntityTooLargeException",
    );

    // Only the two valid requests reached the service.
    assert_eq!(recorder.actions.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_bad_key_is_refused_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, recorder) = serve().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A head announcing 1 MiB that never comes: the answer cannot wait
    // for the body.
    let head = format!(
        "POST /2017-03-31/tags/{ENCODED_ARN} HTTP/1.1\r\nhost: {addr}\r\n\
         content-type: application/json\r\ncontent-length: 1048576\r\n\
         x-amz-date: 20260101T000000Z\r\n\
         authorization: AWS4-HMAC-SHA256 Credential=AKIDNOTOURS/20260101/eu-central-1/lambda/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=00\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.contains(&b'}') {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed without an answer: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("UnrecognizedClientException"), "{text}");
    assert!(recorder.actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unsigned_payload_is_refused() {
    let (addr, recorder) = serve().await;
    let path = format!("/2017-03-31/tags/{ENCODED_ARN}");
    let mut request = request(addr, "POST", &path, r#"{"Tags":{"a":"b"}}"#);
    request.headers_mut().insert(
        "x-amz-content-sha256",
        http::HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    // Signed correctly, just without the payload's hash.
    let identity =
        aws_credential_types::Credentials::new(ACCESS_KEY, SECRET, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-central-1")
        .name("lambda")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        "POST",
        path.clone(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let (status, headers, body) = send(addr, request).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &headers, &body, 403, "InvalidSignatureException");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("UNSIGNED-PAYLOAD"));
    assert!(recorder.actions.lock().unwrap().is_empty());
}
