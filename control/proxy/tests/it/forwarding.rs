//! Requests that pass: keep-alive, streamed bodies both ways, headers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_connection_and_touch_each_time() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut sender = client(addr).await;
    for i in 0..5 {
        let req = post(
            &format!("/items/{i}?q=1"),
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "8080")],
            body_of(&format!("body {i}")),
        );
        let (status, echo) = send_on(&mut sender, req).await;
        assert_eq!(status, 200, "{echo}");
        let json: serde_json::Value = serde_json::from_str(&echo).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["uri"], format!("/items/{i}?q=1"));
        assert_eq!(json["body"], format!("body {i}"));
    }
    assert_eq!(h.app_stats.connections.load(Ordering::SeqCst), 1);
    assert_eq!(h.app_requests(), 5);
    assert_eq!(h.upstream.touches("vm-a"), 5);

    // Another port on the same client connection needs its own upstream.
    let req = get(
        "/",
        &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "9005")],
    );
    assert_eq!(send_on(&mut sender, req).await.0, 200);
    assert_eq!(h.app_stats.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn credentials_stripped_and_client_address_added() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let req = get(
        "/echo",
        &[
            ("x-aws-proxy-auth", &token),
            ("x-aws-proxy-port", "8080"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-custom", "kept"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "dropped"),
        ],
    );
    let (status, echo) = send(addr, req).await;
    assert_eq!(status, 200);
    assert!(
        !echo.contains(&token),
        "the token reached the guest: {echo}"
    );
    assert!(echoed_headers(&echo, "x-aws-proxy-auth").is_empty());
    assert!(echoed_headers(&echo, "x-aws-proxy-port").is_empty());
    assert!(echoed_headers(&echo, "x-hop").is_empty());
    assert_eq!(echoed_headers(&echo, "x-custom"), ["kept"]);
    assert_eq!(
        echoed_headers(&echo, "x-forwarded-for"),
        ["10.9.9.9", "127.0.0.1"]
    );
    assert_eq!(
        echoed_headers(&echo, "forwarded"),
        ["for=127.0.0.1;proto=http"]
    );
}

#[tokio::test]
async fn twenty_mib_upload_and_download_stream_through() {
    const SIZE: usize = 20 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let auth = [
        ("x-aws-proxy-auth", token.as_str()),
        ("x-aws-proxy-port", "8080"),
    ];
    let mut sender = client(addr).await;

    let chunks = futures_util::stream::iter(
        (0..SIZE)
            .step_by(CHUNK)
            .map(|offset| Ok::<_, std::io::Error>(Frame::data(pattern(offset, CHUNK)))),
    );
    let req = post("/upload", &auth, BodyExt::boxed(StreamBody::new(chunks)));
    let (status, answer) = send_on(&mut sender, req).await;
    assert_eq!(status, 200, "{answer}");
    let mut expected = Sha256::new();
    for offset in (0..SIZE).step_by(CHUNK) {
        expected.update(pattern(offset, CHUNK));
    }
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["len"], SIZE);
    assert_eq!(answer["sha256"], hex(&expected.finalize()));

    sender.ready().await.unwrap();
    let response = sender
        .send_request(get(&format!("/download?n={SIZE}"), &auth))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert_eq!(data, pattern(received, data.len()), "at byte {received}");
        received += data.len();
    }
    assert_eq!(received, SIZE);
}

#[tokio::test]
async fn slow_chunks_arrive_as_the_guest_sends_them() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut sender = client(addr).await;
    let start = Instant::now();
    let response = sender
        .send_request(get(
            "/slow",
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "8080")],
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from("chunk0\n"));
    // The guest takes 400 ms for the rest: a buffering proxy could not
    // deliver the first chunk before then.
    let first_at = start.elapsed();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from("chunk1\nchunk2\n"));
    let all_at = start.elapsed();
    assert!(all_at >= Duration::from_millis(400), "{all_at:?}");
    assert!(
        first_at < Duration::from_millis(350),
        "the first chunk waited for the rest: {first_at:?}"
    );
}

#[tokio::test]
async fn request_body_reaches_the_guest_before_the_client_finishes_sending() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, std::io::Error>(Frame::data(data)), rx))
    });
    let mut sender = client(addr).await;
    let req = post(
        "/first-chunk",
        &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "8080")],
        BodyExt::boxed(StreamBody::new(frames)),
    );
    tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
    // The rest is only sent once the answer came back.
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("the proxy held the request body back")
        .unwrap();
    tx.send(Bytes::from_static(b"rest")).await.unwrap();
    drop(tx);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from("first=1000"));
}
