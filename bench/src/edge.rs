//! `{"bench":"edge"}`: one hello-http microVM's endpoint through TLS and
//! through plain HTTP: the same VM, its emberd restarted on the same data
//! folder without `--tls-self-signed` (the VM is re-attached, its endpoint
//! port kept). Requests/s and p50/p99 each, on kept-alive connections and
//! on new ones. Then, with TLS, the VM's endpoint held at its connection
//! cap while the API's p99 is timed against the same with nothing held.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember::api_client::ApiClient;
use ember::microvm_api::MICROVMS;
use reqwest::Method;
use serde_json::{json, Value};

use crate::microvm::{self, end_run, round3, Emberd, Opts};

/// The endpoint's connection cap in this bench (`--max-connections-per-vm`).
const CAP: usize = 64;
const REQUESTS: usize = 400;
const NEW_CONNECTIONS: usize = 100;
const RPS_WINDOW: Duration = Duration::from_secs(3);
const RPS_CLIENTS: usize = 8;
/// busybox httpd serves it without forking a CGI: the edge's cost shows.
const PATH: &str = "/health";

pub async fn run(data_dir: &Path, agent: &Path, opts: &Opts) -> anyhow::Result<Value> {
    let (_, dir, assets) = microvm::fresh_dir(data_dir, "bench-edge")?;
    let cap = CAP.to_string();
    let tls_args = ["--tls-self-signed", "--max-connections-per-vm", &cap];
    let mut daemon = Emberd::start(&dir, &assets, agent, opts, &tls_args).await?;
    let tls = measure_tls(&dir).await;
    let (vm, mut figures) = match tls {
        Ok(v) => v,
        Err(e) => return end_run(&mut daemon, &dir, "edge", Err(e)),
    };
    // Only emberd goes: the VM keeps running and is taken back.
    daemon.kill_only().await;
    let mut daemon = Emberd::start(
        &dir,
        &assets,
        agent,
        opts,
        &["--max-connections-per-vm", &cap],
    )
    .await?;
    let plain = measure_plain(&dir, &vm).await;
    let result = plain.map(|more| {
        if let (Some(all), Value::Object(more)) = (figures.as_object_mut(), more) {
            all.extend(more);
        }
        figures
    });
    end_run(&mut daemon, &dir, "edge", result)
}

/// The VM the bench runs, as the TLS half left it.
struct Vm {
    id: String,
    endpoint: String,
    token: String,
}

async fn measure_tls(dir: &Path) -> anyhow::Result<(Vm, Value)> {
    let ca = dir.join("tls").join("cert.pem");
    let api = ApiClient::from_data_dir(dir, None, "us-east-1")?.with_ca_bundle(Some(&ca))?;
    microvm::build_image(&api).await?;
    let out = api
        .call(
            Method::POST,
            MICROVMS,
            &[],
            Some(&json!({"imageIdentifier": microvm::IMAGE})),
        )
        .await?;
    let id = out["microvmId"].as_str().context("no id")?.to_string();
    let endpoint = out["endpoint"].as_str().context("no endpoint")?.to_string();
    anyhow::ensure!(
        endpoint.starts_with("https://"),
        "endpoint {endpoint} is not https"
    );
    microvm::wait_running(&api, &id).await?;
    let token = microvm::token(&api, &id).await?;
    let vm = Vm {
        id,
        endpoint,
        token,
    };
    let pem = std::fs::read(&ca)?;
    let client = |pool: bool| http_client(pool, Some(&pem));
    let kept = latencies(&client(true)?, &vm.endpoint, &vm.token, REQUESTS).await?;
    let fresh = latencies(&client(false)?, &vm.endpoint, &vm.token, NEW_CONNECTIONS).await?;
    let rps = requests_per_second(&client(true)?, &vm.endpoint, &vm.token).await?;

    let api = Arc::new(api);
    let api_idle = api_latencies(&api, &vm.id).await?;
    let held = hold_connections(&vm.endpoint, CAP).await?;
    let api_at_cap = api_latencies(&api, &vm.id).await?;
    drop(held);
    Ok((
        vm,
        json!({
            "bench": "edge",
            "example": microvm::IMAGE,
            "path": PATH,
            "tls_p50_ms": pct(&kept, 50.0),
            "tls_p99_ms": pct(&kept, 99.0),
            "tls_new_connection_p50_ms": pct(&fresh, 50.0),
            "tls_new_connection_p99_ms": pct(&fresh, 99.0),
            "tls_rps": rps.round(),
            "held_connections": CAP,
            "api_p99_ms": pct(&api_idle, 99.0),
            "api_p99_at_cap_ms": pct(&api_at_cap, 99.0),
        }),
    ))
}

async fn measure_plain(dir: &Path, vm: &Vm) -> anyhow::Result<Value> {
    let api = ApiClient::from_data_dir(dir, None, "us-east-1")?;
    microvm::wait_running(&api, &vm.id).await?;
    let endpoint = vm.endpoint.replacen("https://", "http://", 1);
    let client = |pool: bool| http_client(pool, None);
    let kept = latencies(&client(true)?, &endpoint, &vm.token, REQUESTS).await?;
    let fresh = latencies(&client(false)?, &endpoint, &vm.token, NEW_CONNECTIONS).await?;
    let rps = requests_per_second(&client(true)?, &endpoint, &vm.token).await?;
    api.call(Method::DELETE, &format!("{MICROVMS}/{}", vm.id), &[], None)
        .await?;
    Ok(json!({
        "plain_p50_ms": pct(&kept, 50.0),
        "plain_p99_ms": pct(&kept, 99.0),
        "plain_new_connection_p50_ms": pct(&fresh, 50.0),
        "plain_new_connection_p99_ms": pct(&fresh, 99.0),
        "plain_rps": rps.round(),
    }))
}

/// A client that keeps its connections (`pool`) or opens one per
/// request, trusting `ca_pem` when given.
fn http_client(pool: bool, ca_pem: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(pem) = ca_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    if !pool {
        b = b.pool_max_idle_per_host(0);
    }
    Ok(b.build()?)
}

async fn get(http: &reqwest::Client, endpoint: &str, token: &str) -> anyhow::Result<()> {
    let r = http
        .get(format!("{endpoint}{PATH}"))
        .header("X-aws-proxy-auth", token)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "endpoint answered {}", r.status());
    r.bytes().await?;
    Ok(())
}

async fn latencies(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    get(http, endpoint, token).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        get(http, endpoint, token).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

async fn requests_per_second(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
) -> anyhow::Result<f64> {
    let until = Instant::now() + RPS_WINDOW;
    let mut clients = Vec::new();
    for _ in 0..RPS_CLIENTS {
        let (http, endpoint, token) = (http.clone(), endpoint.to_string(), token.to_string());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                get(&http, &endpoint, &token).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for c in clients {
        total += c.await??;
    }
    Ok(total as f64 / RPS_WINDOW.as_secs_f64())
}

/// 200 GetMicrovm calls, each timed.
async fn api_latencies(api: &ApiClient, id: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        api.call(Method::GET, &format!("{MICROVMS}/{id}"), &[], None)
            .await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// `n` connections to the endpoint that send nothing, held open (within
/// the endpoint idle timeout) until dropped.
async fn hold_connections(endpoint: &str, n: usize) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let url = reqwest::Url::parse(endpoint)?;
    let addr = format!(
        "{}:{}",
        url.host_str().context("endpoint host")?,
        url.port_or_known_default().context("endpoint port")?
    );
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(tokio::net::TcpStream::connect(&addr).await?);
    }
    Ok(held)
}

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    round3(v[i.min(v.len() - 1)])
}
