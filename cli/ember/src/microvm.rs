//! `ember run`, `fork`, `ls`, `get`, `suspend`, `resume`, `rm`, `curl`, `logs`:
//! microVMs through a running emberd.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use reqwest::Method;
use serde_json::json;

use crate::image::timestamp;
use ember::api_client::ApiClient;
use ember::microvm_api::{get, wait_state, MICROVMS};

/// How often waits ask for the state.
const POLL: Duration = Duration::from_millis(200);
/// What `ember curl` and `ember token` mint: short-lived tokens.
const TOKEN_MINUTES: u32 = 10;

#[derive(Args)]
pub struct RunArgs {
    /// Image name or ARN.
    pub image: String,
    /// Image version (default: the newest that can run).
    #[arg(long)]
    pub version: Option<String>,
    /// Suspend after this many seconds without requests (maxIdleDurationSeconds).
    #[arg(long)]
    pub idle: Option<u32>,
    /// Terminate after this many seconds suspended (suspendedDurationSeconds).
    #[arg(long, default_value_t = 3600)]
    pub suspended_for: u32,
    /// Do not resume on the next request after an idle suspend.
    #[arg(long)]
    pub no_auto_resume: bool,
    /// Terminate after this many seconds (maximumDurationInSeconds).
    #[arg(long)]
    pub max_duration: Option<u32>,
    /// Allow `ember shell` (the HTTP_INGRESS and SHELL_INGRESS connectors).
    #[arg(long)]
    pub shell: bool,
    /// The runHookPayload the /run hook receives.
    #[arg(long)]
    pub payload: Option<String>,
    /// Return at once (PENDING) instead of waiting for RUNNING.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn run(client: &ApiClient, a: RunArgs) -> anyhow::Result<()> {
    let mut body = json!({"imageIdentifier": a.image});
    if let Some(v) = &a.version {
        body["imageVersion"] = json!(v);
    }
    if let Some(idle) = a.idle {
        body["idlePolicy"] = json!({
            "maxIdleDurationSeconds": idle,
            "suspendedDurationSeconds": a.suspended_for,
            "autoResumeEnabled": !a.no_auto_resume,
        });
    }
    if let Some(d) = a.max_duration {
        body["maximumDurationInSeconds"] = json!(d);
    }
    if a.shell {
        body["ingressNetworkConnectors"] = json!(["HTTP_INGRESS", "SHELL_INGRESS"]);
    }
    if let Some(p) = &a.payload {
        body["runHookPayload"] = json!(p);
    }
    let out = client
        .call(Method::POST, MICROVMS, &[], Some(&body))
        .await?;
    let id = out["microvmId"]
        .as_str()
        .context("RunMicrovm answered without a microvmId")?
        .to_string();
    let vm = if a.no_wait {
        out
    } else {
        wait_state(client, &id, "RUNNING", POLL, Duration::from_secs(120)).await?
    };
    println!("{}", serde_json::to_string_pretty(&vm)?);
    Ok(())
}

/// Forks a running microVM into `count` new ones.
pub async fn fork(client: &ApiClient, id: &str, count: u32, wait: bool) -> anyhow::Result<()> {
    let path = format!("/ember/v1/microvms/{id}/fork");
    let out = client
        .call(Method::POST, &path, &[], Some(&json!({ "count": count })))
        .await?;
    let children = out["microvms"]
        .as_array()
        .context("the fork answered without its microvms")?;
    let mut shown = Vec::with_capacity(children.len());
    for child in children {
        let child_id = child["microvmId"]
            .as_str()
            .context("a forked microVM without a microvmId")?;
        shown.push(if wait {
            wait_state(client, child_id, "RUNNING", POLL, Duration::from_secs(120)).await?
        } else {
            child.clone()
        });
    }
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

pub async fn list(client: &ApiClient, all: bool) -> anyhow::Result<()> {
    let mut token: Option<String> = None;
    println!(
        "{:<38} {:<12} {:<20} {:<4} {:<24} STARTED",
        "MICROVM", "STATE", "IMAGE", "VER", "ENDPOINT"
    );
    loop {
        let mut q = vec![("maxResults", "50")];
        if let Some(t) = &token {
            q.push(("nextToken", t));
        }
        let page = client.call(Method::GET, MICROVMS, &q, None).await?;
        for i in page["items"].as_array().into_iter().flatten() {
            let state = i["state"].as_str().unwrap_or("?");
            if state == "TERMINATED" && !all {
                continue;
            }
            let id = i["microvmId"].as_str().unwrap_or("?");
            // The list item has no endpoint; one Get per row is fine for a
            // human-sized list.
            let endpoint = match get(client, id).await {
                Ok(vm) => vm["endpoint"].as_str().unwrap_or("-").to_string(),
                Err(_) => "-".into(),
            };
            let image = i["imageArn"]
                .as_str()
                .and_then(|a| a.rsplit(':').next())
                .unwrap_or("?");
            println!(
                "{id:<38} {state:<12} {image:<20} {:<4} {endpoint:<24} {}",
                i["imageVersion"].as_str().unwrap_or("?"),
                timestamp(&i["startedAt"])
            );
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(()),
        }
    }
}

pub async fn show(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&get(client, id).await?)?);
    Ok(())
}

/// Suspend, resume or terminate, waiting for the state it leads to.
pub async fn transition(
    client: &ApiClient,
    id: &str,
    action: Transition,
    wait: bool,
) -> anyhow::Result<()> {
    let (method, path, done) = match action {
        Transition::Suspend => (
            Method::POST,
            format!("{MICROVMS}/{id}/suspend"),
            "SUSPENDED",
        ),
        Transition::Resume => (Method::POST, format!("{MICROVMS}/{id}/resume"), "RUNNING"),
        Transition::Terminate => (Method::DELETE, format!("{MICROVMS}/{id}"), "TERMINATED"),
    };
    client.call(method, &path, &[], None).await?;
    if wait {
        let vm = wait_state(client, id, done, POLL, Duration::from_secs(120)).await?;
        println!(
            "{id}: {}{}",
            vm["state"].as_str().unwrap_or("?"),
            vm["stateReason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub enum Transition {
    Suspend,
    Resume,
    Terminate,
}

/// Mints an endpoint token for `port`.
pub async fn token(client: &ApiClient, id: &str, port: u16) -> anyhow::Result<String> {
    ember::microvm_api::token(client, id, port, TOKEN_MINUTES).await
}

#[derive(Args)]
pub struct CurlArgs {
    pub microvm: String,
    /// Path (and query) on the app.
    #[arg(default_value = "/")]
    pub path: String,
    /// Guest port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Request body.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// Print the status line and headers too.
    #[arg(short = 'i', long)]
    pub include: bool,
}

/// Mints a token and makes one request through the VM's endpoint.
pub async fn curl(client: &ApiClient, a: CurlArgs) -> anyhow::Result<()> {
    let vm = get(client, &a.microvm).await?;
    let endpoint = vm["endpoint"].as_str().context("no endpoint")?;
    let token = token(client, &a.microvm, a.port).await?;
    let url = format!("{}{}", endpoint.trim_end_matches('/'), a.path);
    let method: Method = a.method.parse().context("--method")?;
    let mut req = client
        .http()
        .request(method, &url)
        .header("X-aws-proxy-auth", token)
        .header("X-aws-proxy-port", a.port.to_string());
    if let Some(d) = a.data {
        req = req.body(d);
    }
    let mut resp = req
        .send()
        .await
        .with_context(|| format!("requesting {url}"))?;
    if a.include {
        println!("{:?} {}", resp.version(), resp.status());
        for (k, v) in resp.headers() {
            println!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
        println!();
    }
    let status = resp.status();
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    if !status.is_success() {
        bail!("the endpoint answered {status}");
    }
    Ok(())
}

/// Prints the app's output; with `follow`, until the VM is terminated.
pub async fn logs(client: &ApiClient, id: &str, follow: bool) -> anyhow::Result<()> {
    let path = format!("/ember/v1/microvms/{id}/log");
    let q: &[(&str, &str)] = if follow { &[("follow", "true")] } else { &[] };
    let mut resp = client.send(Method::GET, &path, q, None).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!("log: {status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}
