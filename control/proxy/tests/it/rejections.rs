//! Requests turned away: they get the proxy's JSON answer and never reach
//! the guest.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ember_proxy::{Claims, PortRule, PortScope, TokenKind};

async fn expect(
    h: &Harness,
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    status: u16,
    code: &str,
) {
    let before = h.app_requests();
    let response = send_full(addr, get("/", headers)).await;
    let (got, body) = (response.status, response.body);
    assert_eq!(got, status, "{headers:?}: {body}");
    assert_eq!(
        response.headers.get("x-aws-proxy-error").unwrap(),
        code,
        "{headers:?}: {body}"
    );
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
async fn bad_tokens_are_403_unauthorized() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let port = ("x-aws-proxy-port", "8080");

    expect(&h, addr, &[port], 403, "UNAUTHORIZED").await;
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", "garbage"), port],
        403,
        "UNAUTHORIZED",
    )
    .await;
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", ""), port],
        403,
        "UNAUTHORIZED",
    )
    .await;
    let huge = "a".repeat(5000) + "." + &"b".repeat(43);
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &huge), port],
        403,
        "UNAUTHORIZED",
    )
    .await;

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
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &expired), port],
        403,
        "UNAUTHORIZED",
    )
    .await;

    // Tampered: the payload widened to every port, the MAC kept.
    let token = h.endpoint_token("vm-a");
    let (payload, mac) = token.split_once('.').unwrap();
    let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut claims: serde_json::Value = serde_json::from_str(&json).unwrap();
    claims["p"] = serde_json::json!("all");
    let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &forged), port],
        403,
        "UNAUTHORIZED",
    )
    .await;

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
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &stranger), port],
        403,
        "UNAUTHORIZED",
    )
    .await;

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
        "UNAUTHORIZED",
    )
    .await;

    let token = h.endpoint_token("vm-a");
    for port in ["8081", "9011", "80"] {
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", port)],
            403,
            "PORT_NOT_ALLOWED",
        )
        .await;
    }

    let shell = h.token("vm-a", PortScope::All, TokenKind::Shell);
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &shell), ("x-aws-proxy-port", "8080")],
        403,
        "UNAUTHORIZED",
    )
    .await;
    assert_eq!(h.upstream.touches("vm-a"), 0);
}

#[tokio::test]
async fn malformed_port_is_400() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let subprotocols = format!("lambda-microvms.authentication.{token}, lambda-microvms.port.80a");
    expect(
        &h,
        addr,
        &[("sec-websocket-protocol", &subprotocols)],
        400,
        "INVALID_PORT",
    )
    .await;
    for port in ["0", "99999", "http", "-1"] {
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", port)],
            400,
            "INVALID_PORT",
        )
        .await;
    }
}

#[tokio::test]
async fn upstream_failures_map_to_404_503_502() {
    let h = Harness::new().await;
    let scope = PortScope::Only(vec![PortRule::Port(APP_PORT), PortRule::Port(CLOSED_PORT)]);
    for (vm, port, status, code) in [
        ("vm-gone", APP_PORT, 404, "MICROVM_NOT_FOUND"),
        ("vm-asleep", APP_PORT, 503, "MICROVM_UNAVAILABLE"),
        ("vm-a", CLOSED_PORT, 502, "APP_CONNECT_FAILED"),
    ] {
        let addr = h.proxy.bind_vm(vm).await.unwrap();
        let token = h.token(vm, scope.clone(), TokenKind::Endpoint);
        let port = port.to_string();
        expect(
            &h,
            addr,
            &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", &port)],
            status,
            code,
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
        "APP_TIMEOUT",
    )
    .await;
}

#[tokio::test]
async fn no_port_means_8080_and_the_token_must_allow_it() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let (status, echo) = send(addr, get("/no-port", &[("x-aws-proxy-auth", &token)])).await;
    assert_eq!(status, 200, "{echo}");
    assert!(echo.contains("/no-port"), "{echo}");

    // A token for 9000 alone does not open the default port.
    let only_9000 = h.token(
        "vm-a",
        PortScope::Only(vec![PortRule::Port(OTHER_APP_PORT)]),
        TokenKind::Endpoint,
    );
    expect(
        &h,
        addr,
        &[("x-aws-proxy-auth", &only_9000)],
        403,
        "PORT_NOT_ALLOWED",
    )
    .await;
    // Missing token, no port: the token is checked first.
    expect(&h, addr, &[], 403, "UNAUTHORIZED").await;
}
