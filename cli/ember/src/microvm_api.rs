//! The microVM calls the CLI and the benchmarks both make: one place for
//! the paths, the token shape and the polling rule.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api_client::ApiClient;

pub const MICROVMS: &str = "/2025-09-09/microvms";

pub async fn get(client: &ApiClient, id: &str) -> anyhow::Result<Value> {
    client
        .call(Method::GET, &format!("{MICROVMS}/{id}"), &[], None)
        .await
}

/// `SuspendMicrovm`, without waiting.
pub async fn suspend(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    client
        .call(Method::POST, &format!("{MICROVMS}/{id}/suspend"), &[], None)
        .await
        .map(drop)
}

/// Mints an endpoint token for one guest port.
pub async fn token(
    client: &ApiClient,
    id: &str,
    port: u16,
    minutes: u32,
) -> anyhow::Result<String> {
    let body = json!({"expirationInMinutes": minutes, "allowedPorts": [{"port": port}]});
    let out = client
        .call(
            Method::POST,
            &format!("{MICROVMS}/{id}/auth-token"),
            &[],
            Some(&body),
        )
        .await?;
    out["authToken"]["X-aws-proxy-auth"]
        .as_str()
        .map(str::to_string)
        .context("CreateMicrovmAuthToken answered without X-aws-proxy-auth")
}

/// Polls until the VM is `want`, every `poll`. Reaching TERMINATED when
/// something else was wanted is an error carrying the VM's reason.
pub async fn wait_state(
    client: &ApiClient,
    id: &str,
    want: &str,
    poll: Duration,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let vm = get(client, id).await?;
        let state = vm["state"].as_str().unwrap_or("?");
        if state == want {
            return Ok(vm);
        }
        if state == "TERMINATED" {
            bail!(
                "microVM {id} was terminated: {}",
                vm["stateReason"].as_str().unwrap_or("no reason given")
            );
        }
        if start.elapsed() > timeout {
            bail!("microVM {id} is still {state} after {timeout:?}, waiting for {want}");
        }
        tokio::time::sleep(poll).await;
    }
}
