//! Requests turned away: they get the proxy's JSON answer and never reach
//! the guest.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use ember_proxy::{Claims, PortRule, PortScope, TokenKind};

async fn expect(h: &Harness, addr: std::net::SocketAddr, headers: &[(&str, &str)], status: u16) {
    let before = h.app_requests();
    let (got, body) = send(addr, get("/", headers)).await;
    assert_eq!(got, status, "{headers:?}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        h.app_requests(),
        before,
        "a rejected request reached the guest"
    );
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let port = ("x-aws-proxy-port", "8080");

    expect(&h, addr, &[port], 401).await;
    expect(&h, addr, &[("x-aws-proxy-auth", "garbage"), port], 401).await;
    expect(&h, addr, &[("x-aws-proxy-auth", ""), port], 401).await;
    let huge = "a".repeat(5000) + "." + &"b".repeat(43);
    expect(&h, addr, &[("x-aws-proxy-auth", &huge), port], 401).await;

    // Expired: issued two minutes ago for one minute.
    let expired = h
        .key
        .mint(&Claims::new(
            "vm-a",
            PortScope::All,
            TokenKind::Endpoint,
            now() - 120,
            60,
        ))
        .unwrap();
    expect(&h, addr, &[("x-aws-proxy-auth", &expired), port], 401).await;

    // Tampered: the payload widened to every port, the MAC kept.
    let token = h.endpoint_token("vm-a");
    let (payload, mac) = token.split_once('.').unwrap();
    let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut claims: serde_json::Value = serde_json::from_str(&json).unwrap();
    claims["p"] = serde_json::json!("all");
    let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    expect(&h, addr, &[("x-aws-proxy-auth", &forged), port], 401).await;

    // Signed by another host's key.
    let stranger = ember_proxy::TokenKey::generate()
        .mint(&Claims::new(
            "vm-a",
            PortScope::All,
            TokenKind::Endpoint,
            now(),
            60,
        ))
        .unwrap();
    expect(&h, addr, &[("x-aws-proxy-auth", &stranger), port], 401).await;

    assert_eq!(h.upstream.touches("vm-a"), 0);
}

#[tokio::test]
async fn valid_tokens_outside_their_grant_are_403() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let for_b = h.endpoint_token("vm-b");
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &for_b), ("x-aws-proxy-port", "8080")],
        403,
    )
    .await;

    let token = h.endpoint_token("vm-a");
    for port in ["8081", "9011", "80"] {
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", port)],
            403,
        )
        .await;
    }

    let shell = h.token("vm-a", PortScope::All, TokenKind::Shell);
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &shell), ("x-aws-proxy-port", "8080")],
        403,
    )
    .await;
    assert_eq!(h.upstream.touches("vm-a"), 0);
}

#[tokio::test]
async fn malformed_port_is_400() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    for port in ["0", "99999", "http", "-1"] {
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", port)],
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn upstream_failures_map_to_404_503_502() {
    let h = Harness::new().await;
    let scope = PortScope::Only(vec![PortRule::Port(APP_PORT), PortRule::Port(CLOSED_PORT)]);
    for (vm, port, status) in [
        ("vm-gone", APP_PORT, 404),
        ("vm-asleep", APP_PORT, 503),
        ("vm-a", CLOSED_PORT, 502),
    ] {
        let addr = h.proxy.bind_vm(vm).await.unwrap();
        let token = h.token(vm, scope.clone(), TokenKind::Endpoint);
        let port = port.to_string();
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", &port)],
            status,
        )
        .await;
        // Authenticated requests count as activity even when they fail.
        assert_eq!(h.upstream.touches(vm), 1, "{vm}");
    }
}

#[tokio::test]
async fn a_guest_that_never_accepts_is_504() {
    let config = ember_proxy::ProxyConfig {
        connect_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let h = Harness::with_config(config).await;
    let addr = h.proxy.bind_vm("vm-hangs").await.unwrap();
    let token = h.endpoint_token("vm-hangs");
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "8080")],
        504,
    )
    .await;
}
