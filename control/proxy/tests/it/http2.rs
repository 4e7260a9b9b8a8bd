//! HTTP/2 on both hops: h2c clients with prior knowledge, the app reached
//! over HTTP/1.1 by default or HTTP/2 with `X-aws-proxy-force-h2` (trailers
//! pass, so gRPC status arrives), and the bound on an h2 client's streams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn has_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn h2c_clients_reach_an_http1_app_by_default_on_port_8080() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut sender = h2_client(addr).await;

    // No X-aws-proxy-port: 8080, over HTTP/1.1 to the app.
    let req = h2_request(
        addr,
        "POST",
        "/items/1?q=2",
        &[("x-aws-proxy-auth", &token), ("te", "trailers")],
        body_of("h2 body"),
    );
    let (answer, _, version) = h2_send(&mut sender, req).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(version, http::Version::HTTP_2);
    let echo = json(&answer.body);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/items/1?q=2", "origin-form for HTTP/1.1");
    assert_eq!(echo["body"], "h2 body");
    assert_eq!(has_header(&echo, "host"), [addr.to_string()]);
    assert!(has_header(&echo, "te").is_empty(), "{echo}");
    assert!(!answer.body.contains(&token));

    // Many streams at once on the one client connection.
    let requests = (0..20).map(|i| {
        let mut sender = sender.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let req = h2_request(
                addr,
                "GET",
                &format!("/n/{i}"),
                &[("x-aws-proxy-auth", &token)],
                body_of(""),
            );
            let (answer, _, _) = h2_send(&mut sender, req).await;
            assert_eq!(answer.status, 200);
            assert_eq!(json(&answer.body)["uri"], format!("/n/{i}"));
        })
    });
    for request in requests {
        request.await.unwrap();
    }

    // A streamed download larger than HTTP/2's initial windows.
    let total = 3 * 1024 * 1024 + 17;
    let req = h2_request(
        addr,
        "GET",
        &format!("/download?n={total}"),
        &[("x-aws-proxy-auth", &token)],
        body_of(""),
    );
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), total);
    assert_eq!(
        hex(&Sha256::digest(&got)),
        hex(&Sha256::digest(pattern(0, total)))
    );
    assert_eq!(h.upstream.touches("vm-a"), 22);
}

#[tokio::test]
async fn h2c_rejections_carry_the_error_code() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut sender = h2_client(addr).await;
    for (headers, status, code) in [
        (vec![], 403, "UNAUTHORIZED"),
        (
            vec![
                ("x-aws-proxy-auth", token.as_str()),
                ("x-aws-proxy-port", "x"),
            ],
            400,
            "INVALID_PORT",
        ),
        (
            vec![
                ("x-aws-proxy-auth", token.as_str()),
                ("x-aws-proxy-port", "8081"),
            ],
            403,
            "PORT_NOT_ALLOWED",
        ),
    ] {
        let req = h2_request(addr, "GET", "/", &headers, body_of(""));
        let (answer, _, _) = h2_send(&mut sender, req).await;
        assert_eq!(answer.status, status, "{headers:?}");
        assert_eq!(answer.headers["x-aws-proxy-error"], code);
        assert!(json(&answer.body)["message"].is_string());
    }
    assert_eq!(h.app_requests(), 0);
}

fn grpc_like_request(addr: std::net::SocketAddr, token: &str) -> http::Request<BoxBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "sent".parse().unwrap());
    let frames = futures_util::stream::iter([
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"\0\0\0\0\x04ping"))),
        Ok(Frame::trailers(trailers)),
    ]);
    h2_request(
        addr,
        "POST",
        "/ember.Test/Echo",
        &[
            ("x-aws-proxy-auth", token),
            ("x-aws-proxy-port", "50051"),
            ("x-aws-proxy-force-h2", "true"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
        BodyExt::boxed(StreamBody::new(frames)),
    )
}

#[tokio::test]
async fn force_h2_reaches_an_h2_app_and_trailers_pass_both_ways() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut sender = h2_client(addr).await;

    let (answer, trailers, _) = h2_send(&mut sender, grpc_like_request(addr, &token)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let trailers = trailers.expect("the app's trailers were lost");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
    let echo = json(&answer.body);
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["uri"], format!("http://{addr}/ember.Test/Echo"));
    assert_eq!(echo["body"], "\0\0\0\0\x04ping");
    assert_eq!(has_header(&echo, "te"), ["trailers"]);
    assert_eq!(has_header(&echo, "content-type"), ["application/grpc"]);
    for name in [
        "x-aws-proxy-auth",
        "x-aws-proxy-port",
        "x-aws-proxy-force-h2",
        "host",
    ] {
        assert!(has_header(&echo, name).is_empty(), "{name} reached the app");
    }
    assert_eq!(
        echo["trailers"],
        serde_json::json!([["x-client-trailer", "sent"]])
    );

    // Streams of one client connection share one upstream connection.
    let calls = (0..10).map(|_| {
        let mut sender = sender.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let (answer, trailers, _) = h2_send(&mut sender, grpc_like_request(addr, &token)).await;
            assert_eq!(answer.status, 200);
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(h.upstream.h2_connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http1_clients_may_force_h2_too() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let req = get(
        "/from-h1?x=1",
        &[
            ("x-aws-proxy-auth", &token),
            ("x-aws-proxy-port", "50051"),
            ("x-aws-proxy-force-h2", "TRUE"),
            ("connection", "keep-alive"),
        ],
    );
    let answer = send_full(addr, req).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let echo = json(&answer.body);
    assert_eq!(echo["version"], "HTTP/2.0");
    // The Host header became :authority.
    assert_eq!(echo["uri"], "http://127.0.0.1/from-h1?x=1");
    assert!(has_header(&echo, "connection").is_empty());
    assert!(has_header(&echo, "x-aws-proxy-force-h2").is_empty());
}

#[tokio::test]
async fn force_h2_to_an_http1_app_is_a_prompt_502() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let headers = [
        ("x-aws-proxy-auth", token.as_str()),
        ("x-aws-proxy-force-h2", "true"),
    ];
    let h1 = tokio::time::timeout(Duration::from_secs(10), send_full(addr, get("/", &headers)))
        .await
        .expect("an h1 client waited on an HTTP/1.1-only app");
    assert_eq!(h1.status, 502, "{}", h1.body);
    assert_eq!(h1.headers["x-aws-proxy-error"], "APP_PROTOCOL_ERROR");

    let mut sender = h2_client(addr).await;
    let req = h2_request(addr, "GET", "/", &headers, body_of(""));
    let (h2, _, _) = tokio::time::timeout(Duration::from_secs(10), h2_send(&mut sender, req))
        .await
        .expect("an h2 client waited on an HTTP/1.1-only app");
    assert_eq!(h2.status, 502, "{}", h2.body);
    assert_eq!(h2.headers["x-aws-proxy-error"], "APP_PROTOCOL_ERROR");
    assert_eq!(h.app_requests(), 0, "the preface is not a request");
}

/// HPACK: an integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_string(out: &mut Vec<u8>, text: &str) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A client that ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS (a
/// compliant client library queues instead, so this one writes frames by
/// hand): the stream past the limit is refused, the others are served.
#[tokio::test]
async fn an_h2_stream_flood_is_refused_past_the_limit() {
    const LIMIT: u32 = 100;
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");

    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal value
    hpack_string(&mut block, "/slow");
    block.push(0x01); // :authority, literal value
    hpack_string(&mut block, "127.0.0.1");
    block.push(0x00); // a new name, literal value
    hpack_string(&mut block, "x-aws-proxy-auth");
    hpack_string(&mut block, &token);

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let streams: Vec<u32> = (0..=LIMIT).map(|i| 2 * i + 1).collect();
    for &id in &streams {
        out.extend(frame(1, 0x5, id, &block)); // END_STREAM | END_HEADERS
    }
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&out).await.unwrap();

    let last = *streams.last().unwrap();
    let mut answered = std::collections::HashSet::new();
    let mut refused = None;
    let reading = async {
        loop {
            let mut head = [0u8; 9];
            if conn.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await.unwrap();
            match head[3] {
                // HEADERS: an answer began.
                1 => {
                    answered.insert(stream);
                }
                3 => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    assert_eq!(stream, last, "stream {stream} reset with {code}");
                    refused = Some(code);
                }
                7 => panic!("GOAWAY instead of refusing one stream"),
                4 if head[4] & 1 == 0 => {
                    conn.write_all(&frame(4, 1, 0, &[])).await.unwrap();
                }
                _ => {}
            }
            if refused.is_some() && answered.len() == LIMIT as usize {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the flood was neither served nor refused");
    assert_eq!(refused, Some(7), "REFUSED_STREAM");
    assert_eq!(answered.len(), LIMIT as usize);
    assert!(!answered.contains(&last));
    assert!(h.app_stats.connections.load(Ordering::SeqCst) <= LIMIT as usize);
}

#[tokio::test]
async fn silent_and_half_preface_clients_are_dropped_and_unbind_ends_h2() {
    let config = ember_proxy::ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let h = Harness::with_config(config).await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    for sent in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..], &b"GET / HT"[..]] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("a client that sent {sent:?} was kept"));
        // Closed (or reset), and the proxy never answered the half request.
        assert!(
            closed.is_err() || !rest.starts_with(b"HTTP/1.1 2"),
            "{rest:?}"
        );
    }

    let token = h.endpoint_token("vm-a");
    let mut sender = h2_client(addr).await;
    let req = h2_request(
        addr,
        "GET",
        "/",
        &[("x-aws-proxy-auth", &token)],
        body_of(""),
    );
    assert_eq!(h2_send(&mut sender, req).await.0.status, 200);
    assert!(h.proxy.unbind_vm("vm-a"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while !sender.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the h2 client connection stayed open after unbind");
}
