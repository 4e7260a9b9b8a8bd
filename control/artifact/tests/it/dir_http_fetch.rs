//! Directory and http(s) artifacts.

use std::os::unix::fs::PermissionsExt;

use crate::common::{relative_files, serve, zip_bytes, Item, Response, Work};
use ember_artifact::{fetch, parse_uri, ArtifactError, ArtifactSource, Limits, SourcePolicy};

/// These tests serve artifacts from 127.0.0.1, which only a lab's policy
/// lets through (`address_guard.rs` tests the refusal).
fn lab() -> SourcePolicy {
    SourcePolicy {
        allow_private_hosts: true,
        ..SourcePolicy::default()
    }
}

fn lab_limits() -> Limits {
    Limits {
        sources: lab(),
        ..Limits::default()
    }
}

fn validate_uri(uri: &str) -> Result<ArtifactSource, ArtifactError> {
    parse_uri(uri, &lab())
}

#[tokio::test]
async fn a_directory_is_copied_not_referenced() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::write(s.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::create_dir_all(s.join("app/lib")).unwrap();
    std::fs::write(s.join("app/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        s.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(s.join("app/lib/x.py"), "x = 1\n").unwrap();
    std::os::unix::fs::symlink("lib/x.py", s.join("app/current")).unwrap();

    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let source = validate_uri(&format!("file://{}", s.display())).unwrap();
    assert_eq!(source, ArtifactSource::Directory(s.to_path_buf()));
    let ctx = fetch(&source, &work.dest(), &Limits::default())
        .await
        .unwrap();
    let root = work.dest();
    assert_eq!(
        relative_files(&root),
        [
            "Dockerfile",
            "app",
            "app/current",
            "app/lib",
            "app/lib/x.py",
            "app/run.sh"
        ]
    );
    assert_eq!(ctx.total_bytes(), 13 + 10 + 6);
    let mode = std::fs::metadata(root.join("app/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid stripped");
    assert_eq!(
        std::fs::read_link(root.join("app/current"))
            .unwrap()
            .to_str(),
        Some("lib/x.py")
    );

    // Later changes to the source do not reach the copy.
    std::fs::write(s.join("app/lib/x.py"), "x = 2\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("app/lib/x.py")).unwrap(),
        "x = 1\n"
    );
    work.assert_contained();
}

#[tokio::test]
async fn a_directory_with_an_outside_symlink_is_refused() {
    for target in ["/etc", "../../outside", "s/s/../.."] {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/ok"), "1").unwrap();
        std::os::unix::fs::symlink(".", src.path().join("s")).unwrap();
        std::os::unix::fs::symlink(target, src.path().join("sub/zz-link")).unwrap();
        let work = Work::new();
        std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
        let err = fetch(
            &ArtifactSource::Directory(src.path().into()),
            &work.dest(),
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("zz-link"), "{target}: {err}");
        assert!(!work.dest().exists());
        work.assert_contained();
    }
}

#[tokio::test]
async fn a_directory_with_a_fifo_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let fifo = src.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let err = fetch(
        &ArtifactSource::Directory(src.path().into()),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
    assert!(!work.dest().exists());
}

#[tokio::test]
async fn http_downloads_and_unpacks() {
    let zip = zip_bytes(&[
        Item::File("Dockerfile", b"FROM scratch\n"),
        Item::File("app/main.py", b"print(1)\n"),
    ]);
    let base = serve(vec![Response {
        path: "/app.zip",
        status: 200,
        body: zip,
        no_length: false,
        location: None,
    }])
    .await;
    let source = validate_uri(&format!("{base}/app.zip")).unwrap();
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let ctx = fetch(&source, &work.dest(), &lab_limits()).await.unwrap();
    assert_eq!(
        relative_files(ctx.root()),
        ["Dockerfile", "app", "app/main.py"]
    );
    assert_eq!(ctx.dockerfile().unwrap(), "FROM scratch\n");
    work.assert_contained();
}

#[tokio::test]
async fn http_404_names_the_status() {
    let base = serve(vec![]).await;
    let source = validate_uri(&format!("{base}/missing.zip")).unwrap();
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let err = fetch(&source, &work.dest(), &lab_limits())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("404"));
    assert!(!work.dest().exists());
}

#[tokio::test]
async fn http_download_over_the_cap_is_cut_off() {
    let body = vec![b'z'; 256 * 1024];
    let base = serve(vec![
        Response {
            path: "/declared.zip",
            status: 200,
            body: body.clone(),
            no_length: false,
            location: None,
        },
        Response {
            path: "/streamed.zip",
            status: 200,
            body,
            no_length: true,
            location: None,
        },
    ])
    .await;
    let limits = Limits {
        max_download_bytes: 100 * 1024,
        ..lab_limits()
    };
    for path in ["/declared.zip", "/streamed.zip"] {
        let work = Work::new();
        std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
        let source = validate_uri(&format!("{base}{path}")).unwrap();
        let err = fetch(&source, &work.dest(), &limits).await.unwrap_err();
        assert!(
            matches!(err, ArtifactError::DownloadTooLarge { .. }),
            "{path}: {err}"
        );
        assert!(!work.dest().exists());
        work.assert_contained();
    }
}

#[tokio::test]
async fn http_connection_refused_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let source = validate_uri(&format!("http://{addr}/a.zip")).unwrap();
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let err = fetch(&source, &work.dest(), &lab_limits())
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::Download { .. }), "{err}");
    assert!(!work.dest().exists());
}
