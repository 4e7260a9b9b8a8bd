//! IMDSv2 semantics over an in-memory connection, spoken to by hyper's
//! client the way an SDK speaks to the real endpoint.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1 as client;

use super::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/app";

struct Answer {
    status: StatusCode,
    ttl: Option<String>,
    content_type: Option<String>,
    body: String,
}

fn imds_with_roles(dir: &Path, text: &str) -> Arc<Imds> {
    let path = dir.join("roles.json");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let roles = RoleCredentials::load(&path).unwrap();
    Arc::new(Imds::new(
        "eu-west-3".into(),
        "123456789012".into(),
        Some(Arc::new(roles)),
    ))
}

fn vm(id: &str, role: Option<&str>) -> Arc<VmIdentity> {
    Arc::new(VmIdentity {
        vm_id: id.into(),
        role_arn: role.map(str::to_string),
    })
}

/// Sends `requests` one after another on one keep-alive connection.
async fn exchange(
    imds: &Arc<Imds>,
    vm: &Arc<VmIdentity>,
    requests: Vec<Request<Empty<Bytes>>>,
) -> Vec<Answer> {
    let (host, guest) = tokio::io::duplex(64 * 1024);
    tokio::spawn(Arc::clone(imds).serve_connection(Arc::clone(vm), host));
    let (mut sender, conn) = client::handshake(TokioIo::new(guest)).await.unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for req in requests {
        let reply = sender.send_request(req).await.unwrap();
        let header = |name: &str| {
            reply
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (status, ttl, content_type) =
            (reply.status(), header(TTL_HEADER), header("content-type"));
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        answers.push(Answer {
            status,
            ttl,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
        });
    }
    answers
}

fn put_token(ttl: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::put(TOKEN_PATH).header("host", "169.254.169.254");
    if let Some(ttl) = ttl {
        req = req.header(TTL_HEADER, ttl);
    }
    req.body(Empty::new()).unwrap()
}

fn get(path: &str, token: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(path).header("host", "169.254.169.254");
    if let Some(token) = token {
        req = req.header(TOKEN_HEADER, token);
    }
    req.body(Empty::new()).unwrap()
}

async fn token_for(imds: &Arc<Imds>, vm: &Arc<VmIdentity>) -> String {
    let answers = exchange(imds, vm, vec![put_token(Some("21600"))]).await;
    assert_eq!(answers[0].status, StatusCode::OK);
    answers[0].body.clone()
}

const KEYS: &str = r#"{"arn:aws:iam::123456789012:role/app": {
    "accessKeyId": "AKIAEXAMPLEKEY1234", "secretAccessKey": "wJalrXUtnFEMI/K7MDENG",
    "sessionToken": "IQoJb3JpZ2luX2VjE", "expiration": "2030-01-02T03:04:05Z"}}"#;

#[tokio::test]
async fn an_sdk_reads_the_roles_credentials_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let vm = vm("mvm-one", Some(ROLE));
    let token = token_for(&imds, &vm).await;
    let answers = exchange(
        &imds,
        &vm,
        vec![
            get(CREDENTIALS_PATH, Some(&token)),
            get(&format!("{CREDENTIALS_PATH}{ROLE_NAME}"), Some(&token)),
            get("/latest/meta-data/placement/region", Some(&token)),
            get("/latest/dynamic/instance-identity/document", Some(&token)),
        ],
    )
    .await;
    assert_eq!(answers[0].status, StatusCode::OK);
    assert_eq!(answers[0].body, ROLE_NAME);
    assert_eq!(answers[1].status, StatusCode::OK);
    assert_eq!(answers[1].content_type.as_deref(), Some("application/json"));
    let creds: serde_json::Value = serde_json::from_str(&answers[1].body).unwrap();
    assert_eq!(creds["Code"], "Success");
    assert_eq!(creds["Type"], "AWS-HMAC");
    assert_eq!(creds["AccessKeyId"], "AKIAEXAMPLEKEY1234");
    assert_eq!(creds["SecretAccessKey"], "wJalrXUtnFEMI/K7MDENG");
    assert_eq!(creds["Token"], "IQoJb3JpZ2luX2VjE");
    assert_eq!(creds["Expiration"], "2030-01-02T03:04:05Z");
    assert!(humantime::parse_rfc3339(creds["LastUpdated"].as_str().unwrap()).is_ok());
    assert_eq!(answers[2].body, "eu-west-3");
    let doc: serde_json::Value = serde_json::from_str(&answers[3].body).unwrap();
    assert_eq!(doc["region"], "eu-west-3");
    assert_eq!(doc["instanceId"], "mvm-one");
}

#[tokio::test]
async fn keys_without_token_or_expiration_get_an_empty_token_and_a_future_expiration() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(
        dir.path(),
        r#"{"arn:aws:iam::123456789012:role/app": {"accessKeyId": "AKIA2", "secretAccessKey": "s"}}"#,
    );
    let vm = vm("mvm-one", Some(ROLE));
    let token = token_for(&imds, &vm).await;
    let path = format!("{CREDENTIALS_PATH}{ROLE_NAME}");
    let answers = exchange(&imds, &vm, vec![get(&path, Some(&token))]).await;
    let creds: serde_json::Value = serde_json::from_str(&answers[0].body).unwrap();
    assert_eq!(creds["Token"], "");
    let expires = humantime::parse_rfc3339(creds["Expiration"].as_str().unwrap()).unwrap();
    assert!(expires > SystemTime::now() + Duration::from_secs(3600));
}

#[tokio::test]
async fn every_get_needs_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let vm = vm("mvm-one", Some(ROLE));
    let answers = exchange(
        &imds,
        &vm,
        vec![
            get(CREDENTIALS_PATH, None),
            get(CREDENTIALS_PATH, Some("not-a-token")),
            get("/latest/meta-data/placement/region", Some(&"A".repeat(54))),
            get(TOKEN_PATH, None),
        ],
    )
    .await;
    for a in &answers[..3] {
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(!a.body.contains("AKIA"));
    }
    assert_eq!(answers[3].status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_token_ttl_must_be_between_1_and_21600_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let vm = vm("mvm-one", Some(ROLE));
    let cases = [
        (None, StatusCode::BAD_REQUEST),
        (Some("0"), StatusCode::BAD_REQUEST),
        (Some("21601"), StatusCode::BAD_REQUEST),
        (Some("-5"), StatusCode::BAD_REQUEST),
        (Some("ten"), StatusCode::BAD_REQUEST),
        (Some("1"), StatusCode::OK),
        (Some("21600"), StatusCode::OK),
    ];
    let requests = cases.iter().map(|(ttl, _)| put_token(*ttl)).collect();
    let answers = exchange(&imds, &vm, requests).await;
    for ((ttl, want), got) in cases.iter().zip(&answers) {
        assert_eq!(got.status, *want, "ttl {ttl:?}");
        if *want == StatusCode::OK {
            assert_eq!(got.ttl.as_deref(), *ttl);
        }
    }
}

#[tokio::test]
async fn a_forwarded_token_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let vm = vm("mvm-one", Some(ROLE));
    let mut req = put_token(Some("60"));
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
    let answers = exchange(&imds, &vm, vec![req]).await;
    assert_eq!(answers[0].status, StatusCode::FORBIDDEN);
    assert!(answers[0].body.len() < 20);
}

#[tokio::test]
async fn a_token_from_another_vm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let (mine, other) = (vm("mvm-one", Some(ROLE)), vm("mvm-two", Some(ROLE)));
    let foreign = token_for(&imds, &other).await;
    let path = format!("{CREDENTIALS_PATH}{ROLE_NAME}");
    let answers = exchange(&imds, &mine, vec![get(&path, Some(&foreign))]).await;
    assert_eq!(answers[0].status, StatusCode::UNAUTHORIZED);
    // Nor does a token survive its TTL.
    let req = get(&path, Some(&foreign));
    let later = SystemTime::now() + Duration::from_secs(21_601);
    assert_eq!(
        imds.answer(&other, &req, SystemTime::now()).status(),
        StatusCode::OK
    );
    assert_eq!(
        imds.answer(&other, &req, later).status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_vm_without_a_role_or_without_keys_for_its_role_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let no_file = Arc::new(Imds::new("us-east-1".into(), "123456789012".into(), None));
    let entry = format!("{CREDENTIALS_PATH}{ROLE_NAME}");
    for (imds, vm) in [
        (&imds, vm("mvm-none", None)),
        (
            &imds,
            vm("mvm-other", Some("arn:aws:iam::123456789012:role/other")),
        ),
        (&no_file, vm("mvm-nofile", Some(ROLE))),
    ] {
        let token = token_for(imds, &vm).await;
        let answers = exchange(
            imds,
            &vm,
            vec![
                get(CREDENTIALS_PATH, Some(&token)),
                get(&entry, Some(&token)),
                get("/latest/meta-data/placement/region", Some(&token)),
            ],
        )
        .await;
        assert_eq!(answers[0].status, StatusCode::OK, "{}", vm.vm_id);
        assert_eq!(answers[0].body, "", "{}", vm.vm_id);
        assert_eq!(answers[1].status, StatusCode::NOT_FOUND, "{}", vm.vm_id);
        assert_eq!(answers[2].status, StatusCode::OK, "{}", vm.vm_id);
    }
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let imds = imds_with_roles(dir.path(), KEYS);
    let vm = vm("mvm-one", Some(ROLE));
    let (host, mut guest) = tokio::io::duplex(64 * 1024);
    tokio::spawn(Arc::clone(&imds).serve_connection(vm, host));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES * 2)
    );
    let _ = guest.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = guest.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}
