//! `ember image …`: build, list, inspect, delete images and follow build logs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use ember::api_client::ApiClient;

const IMAGES: &str = "/2025-09-09/microvm-images";

/// What a build is made from: create and update take the same.
#[derive(Args)]
pub struct BuildArgs {
    /// A folder, a .zip, or a file:// / http(s):// URI.
    #[arg(long)]
    code: String,
    /// Managed base image (must agree with the Dockerfile's FROM).
    #[arg(long, default_value = "busybox")]
    base: String,
    /// Egress connector for RUN steps: INTERNET_EGRESS grants outbound internet.
    #[arg(long)]
    egress: Option<String>,
    /// KEY=VALUE for the app's environment; repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u32>,
    #[arg(long, default_value = "arn:aws:iam::123456789012:role/ember-build")]
    build_role_arn: String,
    /// Return once the build is queued instead of following it.
    #[arg(long)]
    no_wait: bool,
}

impl BuildArgs {
    /// The request members both operations share.
    fn body(&self) -> anyhow::Result<Value> {
        let mut body = json!({
            "codeArtifact": {"uri": artifact_uri(&self.code)?},
            "baseImageArn": self.base,
            "buildRoleArn": self.build_role_arn,
        });
        if let Some(e) = &self.egress {
            body["egressNetworkConnectors"] = json!([e]);
        }
        if !self.env.is_empty() {
            let mut map = serde_json::Map::new();
            for kv in &self.env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
                map.insert(k.to_string(), json!(v));
            }
            body["environmentVariables"] = Value::Object(map);
        }
        if let Some(m) = self.memory {
            body["resources"] = json!([{"minimumMemoryInMiB": m}]);
        }
        Ok(body)
    }
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a new image from a folder or zip with a Dockerfile, showing
    /// the build as it runs.
    Create {
        name: String,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Build a new version of an existing image (same options as create).
    Update {
        name: String,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// List images.
    List,
    /// Show an image and its versions.
    Get { name: String },
    /// Delete an image and all its versions.
    Delete { name: String },
    /// Print a build's log (the latest version's, unless --version).
    Logs {
        name: String,
        #[arg(long)]
        version: Option<String>,
        /// Keep streaming until the build ends.
        #[arg(long, short)]
        follow: bool,
    },
}

pub async fn run(client: &ApiClient, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Create { name, build } => {
            let mut body = build.body()?;
            body["name"] = json!(name);
            let out = client.call(Method::POST, IMAGES, &[], Some(&body)).await?;
            finish_submit(client, &name, &out, build.no_wait).await
        }
        ImageCommand::Update { name, build } => {
            let body = build.body()?;
            let out = client
                .call(Method::PUT, &format!("{IMAGES}/{name}"), &[], Some(&body))
                .await?;
            finish_submit(client, &name, &out, build.no_wait).await
        }
        ImageCommand::List => {
            let mut token: Option<String> = None;
            println!("{:<32} {:<14} {:<8} CREATED", "NAME", "STATE", "ACTIVE");
            loop {
                let mut q = vec![("maxResults", "50")];
                if let Some(t) = &token {
                    q.push(("nextToken", t));
                }
                let page = client.call(Method::GET, IMAGES, &q, None).await?;
                for i in page["items"].as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:<14} {:<8} {}",
                        i["name"].as_str().unwrap_or("?"),
                        i["state"].as_str().unwrap_or("?"),
                        i["latestActiveImageVersion"].as_str().unwrap_or("-"),
                        timestamp(&i["createdAt"])
                    );
                }
                match page["nextToken"].as_str() {
                    Some(t) => token = Some(t.to_string()),
                    None => return Ok(()),
                }
            }
        }
        ImageCommand::Get { name } => {
            let image = client
                .call(Method::GET, &format!("{IMAGES}/{name}"), &[], None)
                .await?;
            let versions = client
                .call(Method::GET, &format!("{IMAGES}/{name}/versions"), &[], None)
                .await?;
            let out = json!({"image": image, "versions": versions["items"]});
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        ImageCommand::Delete { name } => {
            let out = client
                .call(Method::DELETE, &format!("{IMAGES}/{name}"), &[], None)
                .await?;
            println!("{name}: {}", out["state"].as_str().unwrap_or("deleted"));
            Ok(())
        }
        ImageCommand::Logs {
            name,
            version,
            follow,
        } => {
            let version = match version {
                Some(v) => v,
                None => latest_version(client, &name).await?,
            };
            let build = latest_build(client, &name, &version).await?;
            stream_log(client, &name, &version, &build, follow, None).await
        }
    }
}

/// Local paths become file:// URIs (absolute: emberd may run elsewhere).
fn artifact_uri(code: &str) -> anyhow::Result<String> {
    if code.contains("://") {
        return Ok(code.to_string());
    }
    let path =
        std::path::absolute(PathBuf::from(code)).with_context(|| format!("--code {code}"))?;
    if !path.exists() {
        bail!("--code {}: no such file or folder", path.display());
    }
    Ok(format!("file://{}", path.display()))
}

async fn finish_submit(
    client: &ApiClient,
    name: &str,
    out: &Value,
    no_wait: bool,
) -> anyhow::Result<()> {
    let version = out["imageVersion"].as_str().unwrap_or("1").to_string();
    eprintln!(
        "{name}: version {version} queued ({})",
        out["imageArn"].as_str().unwrap_or("")
    );
    if no_wait {
        return Ok(());
    }
    let build = latest_build(client, name, &version).await?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed:>4} {msg}",
    )?);
    bar.enable_steady_tick(Duration::from_millis(120));
    stream_log(client, name, &version, &build, true, Some(&bar)).await?;
    bar.finish_and_clear();
    let v = client
        .call(
            Method::GET,
            &format!("{IMAGES}/{name}/versions/{version}"),
            &[],
            None,
        )
        .await?;
    match v["state"].as_str() {
        Some("SUCCESSFUL") => {
            eprintln!("{name}: version {version} SUCCESSFUL");
            Ok(())
        }
        state => bail!(
            "{name}: version {version} {}: {}",
            state.unwrap_or("?"),
            v["stateReason"].as_str().unwrap_or("")
        ),
    }
}

async fn latest_version(client: &ApiClient, name: &str) -> anyhow::Result<String> {
    let mut token: Option<String> = None;
    let mut last = None;
    loop {
        let mut q = vec![("maxResults", "50")];
        if let Some(t) = &token {
            q.push(("nextToken", t));
        }
        let page = client
            .call(Method::GET, &format!("{IMAGES}/{name}/versions"), &q, None)
            .await?;
        if let Some(v) = page["items"].as_array().and_then(|a| a.last()) {
            last = v["imageVersion"].as_str().map(str::to_string);
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    last.with_context(|| format!("{name} has no versions"))
}

async fn latest_build(client: &ApiClient, name: &str, version: &str) -> anyhow::Result<String> {
    let page = client
        .call(
            Method::GET,
            &format!("{IMAGES}/{name}/versions/{version}/builds"),
            &[],
            None,
        )
        .await?;
    page["items"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|b| b["buildId"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{name} version {version} has no builds"))
}

/// Prints a build log; with `follow`, until the build ends. With a
/// progress bar, lines print above it and the current step is its message.
async fn stream_log(
    client: &ApiClient,
    name: &str,
    version: &str,
    build: &str,
    follow: bool,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    let path = format!("/ember/v1/microvm-images/{name}/versions/{version}/builds/{build}/log");
    let q: &[(&str, &str)] = if follow { &[("follow", "true")] } else { &[] };
    let mut resp = client.send(Method::GET, &path, q, None).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "build log: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match bar.filter(|b| !b.is_hidden()) {
                Some(bar) => {
                    if let Some(step) = line
                        .split_once(' ')
                        .map(|x| x.1)
                        .filter(|l| l.starts_with("step "))
                    {
                        bar.set_message(step.chars().take(100).collect::<String>());
                    }
                    bar.println(&line);
                }
                None => println!("{line}"),
            }
        }
    }
    if !pending.is_empty() {
        println!("{}", String::from_utf8_lossy(&pending));
    }
    Ok(())
}

pub fn timestamp(v: &Value) -> String {
    match v.as_f64() {
        Some(secs) if secs >= 0.0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(secs as u64),
        )
        .to_string(),
        _ => "-".into(),
    }
}
