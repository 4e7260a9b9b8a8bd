use super::*;
use axum::http::HeaderValue;
use serde_json::Value;

/// Requests signed by botocore itself (the AWS CLI's signer), captured from
/// the real client: an ARN label in the path, a repeated query parameter,
/// JSON bodies with non-ASCII text.
const BOTOCORE_SIGNED: &str = include_str!("../../tests/data/botocore_signed.json");

struct Captured {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
    signed_at: SystemTime,
}

fn botocore_requests() -> (Credentials, Vec<Captured>) {
    let data: Value = serde_json::from_str(BOTOCORE_SIGNED).unwrap();
    let credentials = Credentials {
        access_key_id: data["access_key_id"].as_str().unwrap().into(),
        secret_access_key: data["secret_access_key"].as_str().unwrap().into(),
    };
    let requests = data["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let url = r["url"].as_str().unwrap();
            let path = &url[url.find("/20").unwrap()..];
            let mut headers = HeaderMap::new();
            for (name, value) in r["headers"].as_object().unwrap() {
                headers.append(
                    axum::http::HeaderName::from_bytes(name.to_lowercase().as_bytes()).unwrap(),
                    HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
                );
            }
            headers.insert("host", HeaderValue::from_static("127.0.0.1:9999"));
            let signed_at = parse_amz_date(headers["x-amz-date"].to_str().unwrap()).unwrap();
            Captured {
                method: r["method"].as_str().unwrap().parse().unwrap(),
                uri: path.parse().unwrap(),
                headers,
                body: r["body"].as_str().unwrap().as_bytes().to_vec(),
                signed_at,
            }
        })
        .collect();
    (credentials, requests)
}

#[test]
fn botocore_signatures_verify() {
    let (credentials, requests) = botocore_requests();
    assert_eq!(requests.len(), 6);
    assert!(requests[5].headers.contains_key("x-amz-security-token"));
    for r in &requests {
        let context = credentials
            .verify(&r.method, &r.uri, &r.headers, &r.body, r.signed_at)
            .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.uri));
        assert_eq!(context.region, "us-west-2");
        assert_eq!(context.access_key_id, "AKIDEXAMPLE");
    }
}

#[test]
fn any_change_to_a_signed_request_is_refused() {
    let (credentials, requests) = botocore_requests();
    let with_body = requests.iter().find(|r| !r.body.is_empty()).unwrap();
    let mut body = with_body.body.clone();
    body[1] ^= 1;
    let err = credentials
        .verify(
            &with_body.method,
            &with_body.uri,
            &with_body.headers,
            &body,
            with_body.signed_at,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSignature);

    let arn_request = &requests[0];
    let other_path: Uri = arn_request
        .uri
        .path()
        .replace("my-image", "my-imagf")
        .parse()
        .unwrap();
    let err = credentials
        .verify(
            &arn_request.method,
            &other_path,
            &arn_request.headers,
            &[],
            arn_request.signed_at,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSignature);

    let query_request = &requests[1];
    let other_query: Uri = query_request
        .uri
        .to_string()
        .replace("tagKeys=team", "tagKeys=teams")
        .parse()
        .unwrap();
    let err = credentials
        .verify(
            &query_request.method,
            &other_query,
            &query_request.headers,
            &[],
            query_request.signed_at,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSignature);
}

#[test]
fn wrong_secret_unknown_key_and_missing_header() {
    let (credentials, requests) = botocore_requests();
    let r = &requests[0];
    let wrong_secret = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..credentials.clone()
    };
    let err = wrong_secret
        .verify(&r.method, &r.uri, &r.headers, &r.body, r.signed_at)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSignature);
    assert!(err.message().contains("does not match"), "{err}");

    let other_key = Credentials {
        access_key_id: "AKIDOTHER".into(),
        ..credentials.clone()
    };
    let err = other_key
        .verify(&r.method, &r.uri, &r.headers, &r.body, r.signed_at)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnrecognizedClient);

    let mut unsigned = r.headers.clone();
    unsigned.remove("authorization");
    let err = credentials
        .verify(&r.method, &r.uri, &unsigned, &r.body, r.signed_at)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingAuthenticationToken);
    assert_eq!(err.status(), 403);
}

#[test]
fn stale_or_future_dates_are_refused() {
    let (credentials, requests) = botocore_requests();
    let r = &requests[0];
    for now in [
        r.signed_at + Duration::from_secs(16 * 60),
        r.signed_at - Duration::from_secs(16 * 60),
    ] {
        let err = credentials
            .verify(&r.method, &r.uri, &r.headers, &r.body, now)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSignature);
        assert!(err.message().starts_with("Signature expired"), "{err}");
    }
    let within = r.signed_at + Duration::from_secs(14 * 60);
    credentials
        .verify(&r.method, &r.uri, &r.headers, &r.body, within)
        .unwrap();
}

#[test]
fn malformed_authorization_headers_are_incomplete() {
    let (credentials, requests) = botocore_requests();
    let r = &requests[0];
    let original = r.headers["authorization"].to_str().unwrap().to_owned();
    let cases = [
        "Basic dXNlcjpwYXNz".to_owned(),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/us-west-2/lambda/aws4_request".to_owned(),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=00".to_owned(),
        original.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date"),
        format!("AWS4-HMAC-SHA256 {}", "x".repeat(5000)),
    ];
    for case in cases {
        let mut headers = r.headers.clone();
        headers.insert("authorization", HeaderValue::from_str(&case).unwrap());
        let err = credentials
            .verify(&r.method, &r.uri, &headers, &r.body, r.signed_at)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IncompleteSignature, "{case}: {err}");
    }
    let mut headers = r.headers.clone();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&original.replace("/lambda/", "/s3/")).unwrap(),
    );
    let err = credentials
        .verify(&r.method, &r.uri, &headers, &r.body, r.signed_at)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSignature);
}

#[test]
fn amz_dates_parse_exactly() {
    let at = |s| parse_amz_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
    assert_eq!(at("19700101T000000Z"), Some(0));
    assert_eq!(at("20240101T000000Z"), Some(1_704_067_200));
    assert_eq!(at("20240229T235959Z"), Some(1_709_251_199));
    assert_eq!(at("20261129T051638Z"), Some(1_795_929_398));
    for bad in [
        "2024-01-01T00:00:00Z",
        "20241301T000000Z",
        "20240101T250000Z",
        "20240101T00000Z",
        "+0240101T000000Z",
        "",
    ] {
        assert_eq!(at(bad), None, "{bad}");
    }
}
