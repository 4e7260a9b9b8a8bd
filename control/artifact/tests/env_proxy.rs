//! A proxy in emberd's environment would connect on the download's behalf
//! to addresses nobody checked: it is ignored. Its own test binary, because
//! it sets process-wide environment variables.

#[path = "it/common/mod.rs"]
mod common;

use std::net::IpAddr;

use common::{serve_on, zip_bytes, Item, Response, Work};
use ember_artifact::{fetch, parse_uri, Limits, SourcePolicy};

#[tokio::test]
async fn proxies_from_the_environment_are_not_used() {
    let proxy = serve_on("127.0.0.1", vec![]).await;
    let zip = zip_bytes(&[Item::File("Dockerfile", b"FROM scratch\n")]);
    let origin = serve_on("127.0.0.2", vec![Response::ok("/a.zip", zip)]).await;
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        std::env::set_var(var, &proxy.base);
    }
    for var in ["no_proxy", "NO_PROXY"] {
        std::env::remove_var(var);
    }
    let limits = Limits {
        sources: SourcePolicy {
            allowed_addresses: vec!["127.0.0.2".parse::<IpAddr>().unwrap()],
            ..SourcePolicy::default()
        },
        ..Limits::default()
    };
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let source = parse_uri(&format!("{}/a.zip", origin.base), &limits.sources).unwrap();
    fetch(&source, &work.dest(), &limits).await.unwrap();
    assert_eq!(
        proxy.connections(),
        0,
        "the download went through the proxy"
    );
    assert_eq!(origin.connections(), 1);
}
