//! Artifact URIs turned against the host (SSRF): downloads refused before
//! they connect, checked on the resolved address of every hop, against
//! real servers that count the connections they get.

use std::net::IpAddr;

use crate::common::{serve_on, zip_bytes, Item, Response, Server, Work};
use ember_artifact::{
    fetch, parse_uri, validate_uri, ArtifactError, ArtifactSource, Limits, SourcePolicy,
};

fn strict() -> Limits {
    Limits::default()
}

/// Refuses everything non-public but `ip`: the one server a test lets
/// through as the first hop.
fn allowing(ip: &str) -> Limits {
    Limits {
        sources: SourcePolicy {
            allowed_addresses: vec![ip.parse::<IpAddr>().unwrap()],
            ..SourcePolicy::default()
        },
        ..Limits::default()
    }
}

fn app_zip() -> Vec<u8> {
    zip_bytes(&[Item::File("Dockerfile", b"FROM scratch\n")])
}

async fn fetch_uri(uri: &str, limits: &Limits) -> Result<(), ArtifactError> {
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let source = parse_uri(uri, &limits.sources)?;
    let result = fetch(&source, &work.dest(), limits).await.map(|_| ());
    if result.is_err() {
        assert!(!work.dest().exists());
    }
    work.assert_contained();
    result
}

fn assert_refused(result: Result<impl std::fmt::Debug, ArtifactError>, what: &str) -> String {
    match result {
        Err(e @ ArtifactError::RefusedHost { .. }) => e.to_string(),
        other => panic!("{what}: not refused: {other:?}"),
    }
}

async fn zip_server(ip: &str) -> Server {
    serve_on(ip, vec![Response::ok("/a.zip", app_zip())]).await
}

#[tokio::test]
async fn loopback_is_refused_at_the_api_and_at_the_fetch_without_a_connection() {
    let server = zip_server("127.0.0.1").await;
    let uri = format!("{}/a.zip", server.base);
    assert_refused(validate_uri(&uri, &strict().sources).await, "api check");
    assert_refused(fetch_uri(&uri, &strict()).await, "fetch");
    assert_eq!(server.connections(), 0, "the server was reached");
    // The same server is fine once the address is allowed: the refusal
    // above was the policy, not a broken server.
    fetch_uri(&uri, &allowing("127.0.0.1")).await.unwrap();
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused() {
    let server = zip_server("127.0.0.1").await;
    let uri = format!("http://localhost:{}/a.zip", server.addr.port());
    assert_refused(validate_uri(&uri, &strict().sources).await, "api check");
    // What a rebinding name does after passing the API check: the fetch
    // resolves it again and refuses what it gets.
    assert_refused(fetch_uri(&uri, &strict()).await, "fetch");
    assert_eq!(server.connections(), 0, "the server was reached");
}

#[tokio::test]
async fn metadata_and_other_literals_are_refused_before_connecting() {
    for uri in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/a.zip",
        "http://0.0.0.0/a.zip",
        "http://2130706433/a.zip",
    ] {
        // Refused up front: a connect attempt to an unroutable address
        // would show up as a timeout or a connection error instead.
        assert_refused(validate_uri(uri, &strict().sources).await, uri);
        let started = std::time::Instant::now();
        assert_refused(fetch_uri(uri, &strict()).await, uri);
        assert!(started.elapsed().as_secs() < 5, "{uri} was tried");
    }
}

#[tokio::test]
async fn refusals_read_the_same_whatever_is_listening() {
    let listening = zip_server("127.0.0.1").await;
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let uris = [
        format!("http://127.0.0.1:{}/a.zip", listening.addr.port()),
        format!("http://127.0.0.1:{}/a.zip", closed.port()),
        "http://169.254.169.254/a.zip".to_string(),
    ];
    let mut shapes = Vec::new();
    for uri in &uris {
        for message in [
            assert_refused(validate_uri(uri, &strict().sources).await, uri),
            assert_refused(fetch_uri(uri, &strict()).await, uri),
        ] {
            assert!(message.contains(uri.as_str()), "{message}");
            shapes.push(message.replace(uri.as_str(), "URI"));
        }
    }
    shapes.dedup();
    assert_eq!(shapes.len(), 1, "{shapes:#?}");
    assert_eq!(listening.connections(), 0);
}

#[tokio::test]
async fn a_redirect_to_loopback_is_refused_before_connecting() {
    // The first hop is the only address let through (127.0.0.2, any
    // 127/8 address is loopback on Linux); the targets are on 127.0.0.1.
    let target = zip_server("127.0.0.1").await;
    let port = target.addr.port();
    let first = serve_on(
        "127.0.0.2",
        vec![
            Response::redirect("/literal.zip", format!("http://127.0.0.1:{port}/a.zip")),
            Response::redirect("/name.zip", format!("http://localhost:{port}/a.zip")),
            Response::redirect(
                "/mapped.zip",
                format!("http://[::ffff:127.0.0.1]:{port}/a.zip"),
            ),
            Response::redirect("/metadata.zip", "http://169.254.169.254/a.zip".into()),
            Response::redirect("/file.zip", "file:///etc/passwd".into()),
            Response::redirect("/self.zip", "/a.zip".into()),
            Response::ok("/a.zip", app_zip()),
        ],
    )
    .await;
    let limits = allowing("127.0.0.2");
    for path in ["/literal.zip", "/name.zip", "/mapped.zip", "/metadata.zip"] {
        let uri = format!("{}{path}", first.base);
        let message = assert_refused(fetch_uri(&uri, &limits).await, path);
        assert!(message.contains("public addresses only"), "{message}");
    }
    assert!(fetch_uri(&format!("{}/file.zip", first.base), &limits)
        .await
        .is_err());
    assert_eq!(target.connections(), 0, "a redirect reached the target");
    // A redirect that stays on an allowed address is followed.
    fetch_uri(&format!("{}/self.zip", first.base), &limits)
        .await
        .unwrap();
    assert_eq!(first.connections(), 5 + 2);
}

#[tokio::test]
async fn a_file_root_swapped_for_a_symlink_after_the_check_is_refused_at_fetch() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("Dockerfile"), "FROM scratch\n").unwrap();
    let limits = Limits {
        sources: SourcePolicy::default()
            .with_file_roots(&[root.path().to_path_buf()])
            .unwrap(),
        ..Limits::default()
    };
    let source = parse_uri(&format!("file://{}", app.display()), &limits.sources).unwrap();
    assert!(matches!(source, ArtifactSource::Directory(_)));
    std::fs::remove_dir_all(&app).unwrap();
    std::os::unix::fs::symlink(outside.path(), &app).unwrap();
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let err = fetch(&source, &work.dest(), &limits).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::OutsideArtifactRoots { .. }),
        "{err}"
    );
    assert!(!work.dest().exists());
    // Through the symlink at request time: refused up front, too.
    let err = parse_uri(&format!("file://{}", app.display()), &limits.sources).unwrap_err();
    assert!(
        matches!(err, ArtifactError::OutsideArtifactRoots { .. }),
        "{err}"
    );
}
