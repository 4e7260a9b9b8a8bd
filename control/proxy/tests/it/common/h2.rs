//! The HTTP/2 side of the stand-in guest: an h2-only app that ends its
//! answers with trailers (as gRPC does), and h2c client helpers.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use super::{Answer, BoxBody};

/// An HTTP/2-only app: answers with what it received (JSON, request
/// trailers included) and ends every answer with trailers, as gRPC does.
pub async fn start_h2_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(h2_app))
                    .await;
            });
        }
    });
    addr
}

async fn h2_app(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers: Vec<(String, String)> = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let json = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "trailers": trailers,
        "body": String::from_utf8_lossy(&collected.to_bytes()),
    });
    let mut answer_trailers = http::HeaderMap::new();
    answer_trailers.insert("grpc-status", "0".parse().unwrap());
    answer_trailers.insert("grpc-message", "all-good".parse().unwrap());
    let frames = futures_util::stream::iter([
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(json.to_string()))),
        Ok(Frame::trailers(answer_trailers)),
    ]);
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap())
}

/// One HTTP/2 client connection with prior knowledge (h2c) to `addr`.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// An HTTP/2 request: the authority rides in the URI (`:authority`).
pub fn h2_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: BoxBody,
) -> Request<BoxBody> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .version(http::Version::HTTP_2);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

/// Status, headers, body text and trailers of an answer on `sender`.
pub async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<BoxBody>,
    req: Request<BoxBody>,
) -> (Answer, Option<http::HeaderMap>, http::Version) {
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let version = response.version();
    let status = response.status();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (
        Answer {
            status,
            headers,
            body,
        },
        trailers,
        version,
    )
}
