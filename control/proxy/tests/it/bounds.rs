//! Callers are bounded: connections past a listener's cap (or, on the
//! shared listener, a microVM's cap) are refused with a 503; idle connections, plain or upgraded, are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use ember_proxy::ProxyConfig;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Guards the reads below against a proxy that never closes: a hang
/// fails the test instead of stalling the suite.
const AT_MOST: Duration = Duration::from_secs(20);

fn raw_get(path: &str, token: &str) -> String {
    raw_get_at("127.0.0.1", path, token)
}

fn raw_get_at(host: &str, path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nx-aws-proxy-auth: {token}\r\n\r\n")
}

/// Sends one request on `stream` and reads until the answer's body (small
/// and with a length) is in.
async fn answer_on(stream: &mut TcpStream, path: &str, token: &str) -> String {
    answer_with(stream, raw_get(path, token)).await
}

/// Sends `request` on `stream` and reads until the answer's body is in.
async fn answer_with(stream: &mut TcpStream, request: String) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&read).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|l| l.trim().parse::<usize>().ok());
            if len.is_some_and(|len| body.len() >= len) {
                return text;
            }
        }
        let n = tokio::time::timeout(AT_MOST, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the answer: {text}");
        read.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the proxy closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    tokio::time::timeout(AT_MOST, stream.read_to_end(&mut read))
        .await
        .expect("the proxy kept the connection open")
        .unwrap();
    String::from_utf8_lossy(&read).into_owned()
}

async fn harness(config: ProxyConfig) -> (Harness, SocketAddr, String) {
    let h = Harness::with_config(config).await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    (h, addr, token)
}

#[tokio::test]
async fn a_connection_past_the_cap_gets_503_and_is_closed() {
    let (_h, addr, token) = harness(ProxyConfig {
        max_connections_per_vm: 2,
        ..Default::default()
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(answer_on(&mut first, "/", &token)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(answer_on(&mut second, "/", &token)
        .await
        .starts_with("HTTP/1.1 200"));

    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(raw_get("/", &token).as_bytes())
        .await
        .unwrap();
    let refused = read_to_close(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("x-aws-proxy-error: microvm_unavailable"),
        "{refused}"
    );

    // A closed connection frees its place (once the proxy saw it close).
    drop(first);
    let mut served = false;
    for _ in 0..100 {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if answer_on(&mut next, "/", &token)
            .await
            .starts_with("HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the place of a closed connection was never freed");
    drop(second);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_not_a_busy_one() {
    let (_h, addr, token) = harness(ProxyConfig {
        idle_timeout: Duration::from_millis(150),
        ..Default::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // /slow streams three chunks 200 ms apart: longer than the idle
    // timeout, but a request in flight is not idle.
    stream
        .write_all(raw_get("/slow", &token).as_bytes())
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for chunk in ["chunk0", "chunk1", "chunk2"] {
        assert!(answer.contains(chunk), "{answer}");
    }
    // The final zero-size chunk: the answer ended before the close.
    assert!(answer.ends_with("0\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn an_idle_websocket_is_closed_an_active_one_is_not() {
    let (_h, addr, token) = harness(ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-aws-proxy-auth", token.parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.next().await.unwrap().unwrap();
    // Traffic more often than the timeout keeps it open.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = format!("ping {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    // Then silence: the proxy ends the connection.
    let ended = tokio::time::timeout(AT_MOST, ws.next())
        .await
        .expect("an idle WebSocket was kept open");
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
}

#[tokio::test]
async fn the_shared_listener_caps_connections_per_microvm() {
    let h = Arc::new(
        Harness::with_config(ProxyConfig {
            max_connections_per_vm: 2,
            ..Default::default()
        })
        .await,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = Arc::clone(&h);
    tokio::spawn(async move { serving.proxy.serve_shared(listener, "ember.test").await });
    let (token_a, token_b) = (h.endpoint_token("vm-a"), h.endpoint_token("vm-b"));
    let get_a = || raw_get_at("vm-a.ember.test", "/", &token_a);

    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    for held in [&mut first, &mut second] {
        let answer = answer_with(held, get_a()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let refused = answer_with(&mut third, get_a()).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("x-aws-proxy-error: microvm_unavailable"),
        "{refused}"
    );
    // Another microVM on the same listener is not held back.
    let answer = answer_with(&mut third, raw_get_at("vm-b.ember.test", "/", &token_b)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A closed connection frees its place (once the proxy saw it close).
    drop(first);
    let mut served = false;
    for _ in 0..100 {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if answer_with(&mut next, get_a())
            .await
            .starts_with("HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the place of a closed connection was never freed");
    drop(second);
}
