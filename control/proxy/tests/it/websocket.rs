//! WebSocket echo through the proxy, authenticated by headers or by
//! subprotocol entries (what browsers can send).

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn echo_round_trips<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..3 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_with_header_auth() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-aws-proxy-auth", token.parse().unwrap());
    request
        .headers_mut()
        .insert("x-aws-proxy-port", "8080".parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let seen = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(seen.as_str(), "protocols=none auth=none");
    echo_round_trips(&mut ws).await;
    assert_eq!(h.upstream.touches("vm-a"), 1);
}

#[tokio::test]
async fn websocket_with_subprotocol_auth() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let offer = format!(
        "lambda-microvms, lambda-microvms.authentication.{token}, lambda-microvms.port.9003"
    );
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offer.parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "lambda-microvms"
    );
    // The guest saw neither the token nor the proxy's subprotocols.
    let seen = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(seen.as_str(), "protocols=none auth=none");
    echo_round_trips(&mut ws).await;
}

#[tokio::test]
async fn websocket_with_bad_subprotocol_token_is_refused() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-b");
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let offer = format!(
        "lambda-microvms, lambda-microvms.authentication.{token}, lambda-microvms.port.8080"
    );
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offer.parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let err = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    assert_eq!(h.app_requests(), 0);
}
