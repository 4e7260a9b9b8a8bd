//! `{"bench":"hostile_guest"}`: what four guests attacking their agent
//! channel cost everyone else. One emberd runs the hostile agent (`make
//! hostile-agent`; it behaves until an image's `/ember-hostile` arms it);
//! the API's latency and emberd's RSS are measured with one normal VM
//! running, then again while four hostile VMs (flood, garbage, oversized,
//! channels) attack and are terminated, in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ember::api_client::ApiClient;
use ember::microvm_api::{self, MICROVMS};
use reqwest::Method;
use serde_json::{json, Value};

use crate::image_build::copy_tree;
use crate::microvm::{end_run, round3, Emberd, Opts};
use crate::procfs::rss_bytes;

const ATTACKS: [&str; 4] = ["flood", "garbage", "oversized", "channels"];
const PORT: u16 = 8080;
/// API calls timed with no attack, and at least as many during one.
const SAMPLES: usize = 200;
const ATTACK_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(data_dir: &Path, hostile_agent: &Path, accel: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(
        hostile_agent.is_file(),
        "the hostile agent is not built at {} (make hostile-agent)",
        hostile_agent.display()
    );
    let root = std::path::absolute(data_dir)?;
    let dir = root.join("bench-hostile");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let opts = Opts {
        runs: 1,
        running_vms: 8,
        suspended_vms: 0,
        accel: accel.to_string(),
    };
    let mut daemon = Emberd::start(&dir, &root.join("assets"), hostile_agent, &opts, &[]).await?;
    let result = measure(&dir, &daemon).await;
    end_run(&mut daemon, &dir, "hostile_guest", result)
}

async fn measure(dir: &Path, daemon: &Emberd) -> anyhow::Result<Value> {
    let pid = daemon.pid().context("emberd has no pid")?;
    let api = Arc::new(ApiClient::from_data_dir(dir, None, "us-east-1")?);
    let mut names = vec![(
        "normal".to_string(),
        std::path::absolute("examples/hello-http")?,
    )];
    for attack in ATTACKS {
        names.push((attack.to_string(), hostile_source(dir, attack)?));
    }
    for (name, src) in &names {
        create_image(&api, name, src).await?;
    }
    for (name, _) in &names {
        wait_built(&api, name).await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let (normal_id, normal_endpoint) = run_vm(&api, "normal").await?;
    microvm_api::wait_state(&api, &normal_id, "RUNNING", poll(), ATTACK_TIMEOUT).await?;
    let normal_token = microvm_api::token(&api, &normal_id, PORT, 60).await?;
    get(&http, &normal_endpoint, &normal_token).await?;

    let mut quiet = Vec::new();
    for i in 0..SAMPLES {
        quiet.push(timed_call(&api, i, std::slice::from_ref(&normal_id)).await?);
    }
    let rss_quiet = rss_bytes(pid).unwrap_or(0);

    let mut hostile = Vec::new();
    for attack in ATTACKS {
        hostile.push(run_vm(&api, attack).await?);
    }
    for (id, _) in &hostile {
        microvm_api::wait_state(&api, id, "RUNNING", poll(), ATTACK_TIMEOUT).await?;
    }
    let ids: Vec<String> = hostile.iter().map(|(id, _)| id.clone()).collect();
    let started = Instant::now();
    for (id, endpoint) in &hostile {
        let token = microvm_api::token(&api, id, PORT, 60).await?;
        let (http, endpoint) = (http.clone(), endpoint.clone());
        // The connect that fires the attack; its answer is garbage.
        tokio::spawn(async move { get(&http, &endpoint, &token).await });
    }
    let mut attacked = Vec::new();
    let mut rss_peak = rss_quiet;
    let mut terminated_after = None;
    let mut i = 0;
    while attacked.len() < SAMPLES || terminated_after.is_none() {
        if started.elapsed() > ATTACK_TIMEOUT {
            bail!("the hostile VMs were not all terminated in {ATTACK_TIMEOUT:?}");
        }
        attacked.push(timed_call(&api, i, &ids).await?);
        rss_peak = rss_peak.max(rss_bytes(pid).unwrap_or(0));
        if terminated_after.is_none()
            && i.is_multiple_of(ids.len())
            && all_terminated(&api, &ids).await?
        {
            terminated_after = Some(started.elapsed());
        }
        i += 1;
    }
    let normal_answers = get(&http, &normal_endpoint, &normal_token).await.is_ok();
    Ok(json!({
        "bench": "hostile_guest",
        "hostile_vms": ATTACKS.len(),
        "api_calls_quiet": quiet.len(),
        "api_calls_attacked": attacked.len(),
        "api_p99_ms_quiet": p99(quiet),
        "api_p99_ms_attacked": p99(attacked),
        "emberd_rss_mib_quiet": mib(rss_quiet),
        "emberd_rss_mib_attacked_peak": mib(rss_peak),
        "hostile_all_terminated_s": terminated_after.map(|d| round3(d.as_secs_f64())),
        "normal_vm_answers_after": normal_answers,
    }))
}

/// hello-http with a build step that makes it hostile at run time.
fn hostile_source(dir: &Path, attack: &str) -> anyhow::Result<std::path::PathBuf> {
    let src = dir.join(format!("src-{attack}"));
    copy_tree(Path::new("examples/hello-http"), &src)?;
    let dockerfile = src.join("Dockerfile");
    let mut text = std::fs::read_to_string(&dockerfile)?;
    text.push_str(&format!("RUN echo {attack} > /ember-hostile\n"));
    std::fs::write(&dockerfile, text)?;
    Ok(std::path::absolute(src)?)
}

async fn create_image(api: &ApiClient, name: &str, src: &Path) -> anyhow::Result<()> {
    let body = json!({
        "name": name,
        "codeArtifact": {"uri": format!("file://{}", src.display())},
        "baseImageArn": "busybox",
        "buildRoleArn": "arn:aws:iam::123456789012:role/ember-build",
    });
    api.call(Method::POST, "/2025-09-09/microvm-images", &[], Some(&body))
        .await
        .map(drop)
}

async fn wait_built(api: &ApiClient, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let path = format!("/2025-09-09/microvm-images/{name}/versions/1");
    loop {
        let v = api.call(Method::GET, &path, &[], None).await?;
        match v["state"].as_str() {
            Some("SUCCESSFUL") => return Ok(()),
            Some("FAILED") => bail!("image {name} failed to build: {}", v["stateReason"]),
            _ if Instant::now() > deadline => bail!("image {name} did not build in time"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn run_vm(api: &ApiClient, image: &str) -> anyhow::Result<(String, String)> {
    let body = json!({"imageIdentifier": image});
    let out = api.call(Method::POST, MICROVMS, &[], Some(&body)).await?;
    let id = out["microvmId"].as_str().context("no id")?.to_string();
    let endpoint = out["endpoint"].as_str().context("no endpoint")?.to_string();
    Ok((id, endpoint))
}

/// One API call, alternating GetMicrovm (of one of `ids`) and
/// ListMicrovms, in milliseconds.
async fn timed_call(api: &ApiClient, i: usize, ids: &[String]) -> anyhow::Result<f64> {
    let t = Instant::now();
    if i.is_multiple_of(2) {
        microvm_api::get(api, &ids[(i / 2) % ids.len()]).await?;
    } else {
        api.call(Method::GET, MICROVMS, &[], None).await?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

async fn all_terminated(api: &ApiClient, ids: &[String]) -> anyhow::Result<bool> {
    for id in ids {
        if microvm_api::get(api, id).await?["state"] != "TERMINATED" {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn get(http: &reqwest::Client, endpoint: &str, token: &str) -> anyhow::Result<()> {
    let r = http
        .get(format!("{endpoint}/"))
        .header("X-aws-proxy-auth", token)
        .header("X-aws-proxy-port", PORT.to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "endpoint answered {}", r.status());
    r.bytes().await?;
    Ok(())
}

fn poll() -> Duration {
    Duration::from_millis(100)
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = (v.len() * 99).div_ceil(100).saturating_sub(1);
    round3(v.get(at).copied().unwrap_or(0.0))
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / f64::from(1 << 20))
}
