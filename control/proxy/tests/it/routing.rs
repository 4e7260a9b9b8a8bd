//! The two ways a request finds its microVM: a port of its own, or the
//! first label of the host name on a shared listener.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn with_host(host: &str, token: &str) -> Request<BoxBody> {
    Request::get("/where")
        .header("host", host)
        .header("x-aws-proxy-auth", token)
        .header("x-aws-proxy-port", "8080")
        .body(body_of(""))
        .unwrap()
}

#[tokio::test]
async fn wildcard_host_names_pick_the_vm() {
    let h = Arc::new(Harness::new().await);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = h.clone();
    tokio::spawn(async move { serving.proxy.serve_shared(listener, "Ember.Test.").await });

    let token_a = h.endpoint_token("vm-a");
    let token_b = h.endpoint_token("vm-b");
    let mut sender = client(addr).await;
    let (status, _) = send_on(&mut sender, with_host("vm-a.ember.test", &token_a)).await;
    assert_eq!(status, 200);
    // Same connection, another VM by host name.
    let (status, _) = send_on(&mut sender, with_host("vm-b.ember.test:8443", &token_b)).await;
    assert_eq!(status, 200);
    // A token for one VM does not open another's host name.
    let (status, _) = send_on(&mut sender, with_host("vm-b.ember.test", &token_a)).await;
    assert_eq!(status, 403);
    assert_eq!(h.upstream.touches("vm-a"), 1);
    assert_eq!(h.upstream.touches("vm-b"), 1);

    for host in [
        "ember.test",
        "vm-a.other.test",
        "x.vm-a.ember.test",
        "127.0.0.1",
    ] {
        let (status, body) = send(addr, with_host(host, &token_a)).await;
        assert_eq!(status, 404, "{host}: {body}");
    }
    // An unknown VM with a valid token for it: the upstream says 404.
    let token = h.endpoint_token("vm-unknown");
    let (status, _) = send(addr, with_host("vm-unknown.ember.test", &token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn per_vm_port_ignores_host_and_unbind_closes_it() {
    let h = Harness::new().await;
    let addr_a = h.proxy.bind_vm("vm-a").await.unwrap();
    let addr_b = h.proxy.bind_vm("vm-b").await.unwrap();
    assert_ne!(addr_a, addr_b);
    assert!(addr_a.ip().is_loopback());
    assert_eq!(
        h.proxy.bind_vm("vm-a").await.unwrap(),
        addr_a,
        "bind is idempotent"
    );

    // Raw HTTP/1.1 as curl would send it, with a Host naming something else.
    let token = h.endpoint_token("vm-a");
    let mut stream = TcpStream::connect(addr_a).await.unwrap();
    let request = format!(
        "GET /raw HTTP/1.1\r\nHost: vm-b.example\r\nX-aws-proxy-auth: {token}\r\nX-aws-proxy-port: 8080\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"/raw\""), "{answer}");

    // An open keep-alive connection ends with the unbind too.
    let idle = client(addr_a).await;
    assert!(h.proxy.unbind_vm("vm-a"));
    assert!(!h.proxy.unbind_vm("vm-a"));
    assert_eq!(h.proxy.vm_addr("vm-a"), None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr_a).await.is_err());
    tokio::time::timeout(Duration::from_secs(5), async {
        while !idle.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the idle client connection stayed open after unbind");

    // After an emberd restart the stored address is bound again.
    assert_eq!(h.proxy.bind_vm_at("vm-a", addr_a).await.unwrap(), addr_a);
    let (status, _) = send(
        addr_a,
        get(
            "/",
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "8080")],
        ),
    )
    .await;
    assert_eq!(status, 200);
    // The VM's address is taken by another VM's listener: an error, not a steal.
    assert!(h.proxy.bind_vm_at("vm-b", addr_a).await.is_err());
    assert!(h.proxy.bind_vm_at("vm-c", addr_b).await.is_err());
}
