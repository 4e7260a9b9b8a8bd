//! `{"bench":"microvm"}`: a real emberd on its own data folder, driven
//! through its API like a user would: run and auto-resume timed to the
//! first byte of the app's answer, suspend, proxy overhead, and how many
//! idle running and suspended microVMs this host holds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ember::api_client::ApiClient;
use ember::microvm_api::{self, MICROVMS};
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{AccelChoice, Hypervisor, VmConfig};
use reqwest::Method;
use serde_json::{json, Value};

use crate::median;
use crate::procfs::{cpu_ticks, dir_allocated, qemu_pids, rss_bytes};

pub(crate) const IMAGE: &str = "hello-http";
const PORT: u16 = 8080;
/// Polling while a figure is being timed, and while filling the host.
pub(crate) const FAST_POLL: Duration = Duration::from_millis(5);
const SLOW_POLL: Duration = Duration::from_millis(100);
/// emberd's `--compact-after-seconds` here: resumes timed right after a
/// suspend take the whole-memory path, the ones after a wait the
/// compacted one.
const COMPACT_AFTER_S: u64 = 3;
/// Time a pooled VM gets to be restored before the next timed run.
const POOL_REFILL: Duration = Duration::from_secs(4);
/// VMs started or suspended at once while filling the host.
const PARALLEL: usize = 4;

pub struct Opts {
    pub runs: usize,
    pub running_vms: usize,
    pub suspended_vms: usize,
    pub accel: String,
}

/// A bench's own empty folder under the data dir: (the data dir, it, the
/// assets).
pub(crate) fn fresh_dir(
    data_dir: &Path,
    name: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let root = std::path::absolute(data_dir)?;
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let assets = root.join("assets");
    Ok((root, dir, assets))
}

pub async fn run(data_dir: &Path, agent: &Path, opts: &Opts) -> anyhow::Result<Value> {
    let (root, dir, assets) = fresh_dir(data_dir, "bench-microvm")?;
    let mut daemon = Emberd::start(&dir, &assets, agent, opts, &["--warm-pool", "1"]).await?;
    let warm = measure_warm(&dir, &root, agent, opts).await;
    let Ok(warm) = warm else {
        return end_run(&mut daemon, &dir, "microvm", warm);
    };
    // The same data folder (and image) under an emberd whose suspends all
    // go to disk: the deep tier's figures and the host's capacity.
    daemon.stop(&dir);
    let mut daemon =
        Emberd::start(&dir, &assets, agent, opts, &["--warm-suspended-mib", "0"]).await?;
    let result = measure_deep(&dir, opts, &daemon, warm).await;
    let Ok(mut figures) = result else {
        return end_run(&mut daemon, &dir, "microvm", result);
    };
    // Once more without the working-set prefetch, for what it saves.
    daemon.stop(&dir);
    let mut daemon = Emberd::start(
        &dir,
        &assets,
        agent,
        opts,
        &["--warm-suspended-mib", "0", "--no-working-set-prefetch"],
    )
    .await?;
    let api = ApiClient::from_data_dir(&dir, None, "us-east-1")?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let without = crate::cold_resume::cold_deep_resume_ms(&api, &http, &dir, opts.runs).await;
    let result = without.map(|ms| {
        figures["deep_resume_cold_cache_no_prefetch_ms"] = json!(ms);
        figures
    });
    end_run(&mut daemon, &dir, "microvm", result)
}

/// Stops a bench's emberd and removes its folder, or keeps the folder (for
/// its emberd.log) when the bench failed.
pub(crate) fn end_run(
    daemon: &mut Emberd,
    dir: &Path,
    bench: &str,
    result: anyhow::Result<Value>,
) -> anyhow::Result<Value> {
    daemon.stop(dir);
    match &result {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
        Err(e) => eprintln!("bench {bench} failed ({e}); see {}", dir.display()),
    }
    result
}

/// Cold boot, run, the endpoint, and suspends that park the VM in place.
async fn measure_warm(dir: &Path, root: &Path, agent: &Path, opts: &Opts) -> anyhow::Result<Value> {
    let api = Arc::new(ApiClient::from_data_dir(dir, None, "us-east-1")?);
    build_image(&api).await?;
    let cold = cold_boot_to_answer(dir, root, agent, opts).await?;

    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    // Auto-resume on, and an idle time the bench never reaches. The first
    // run restores (the pool is empty); each later one claims a pooled VM
    // (`--warm-pool 1`), given time to be restored first.
    let vm = run_vm(&api, Some(3600)).await?;
    let vm_token = token(&api, &vm.id).await?;
    get(&http, &vm.endpoint, &vm_token).await?;
    let (mut pool_run_ms, mut claims) = (Vec::new(), 0);
    for _ in 0..opts.runs {
        tokio::time::sleep(POOL_REFILL).await;
        let pooled = pool_ids(dir);
        let t = Instant::now();
        let run = run_vm(&api, Some(3600)).await?;
        let run_token = token(&api, &run.id).await?;
        get(&http, &run.endpoint, &run_token).await?;
        pool_run_ms.push(ms(t));
        claims += usize::from(pooled.contains(&run.id));
        terminate(&api, &run.id).await?;
    }
    let forks = measure_forks(&api, &http, &vm.id, opts.runs).await?;
    let mut steady = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        get(&http, &vm.endpoint, &vm_token).await?;
        steady.push(ms(t));
    }
    let (mut suspend_ms, mut resume_ms, mut parked_rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let t = Instant::now();
        suspend(&api, &vm.id, FAST_POLL).await?;
        suspend_ms.push(ms(t));
        let rss: u64 = qemu_pids(dir).iter().filter_map(|p| rss_bytes(*p)).sum();
        parked_rss.push(rss as f64 / (1 << 20) as f64);
        let t = Instant::now();
        get(&http, &vm.endpoint, &vm_token).await?;
        resume_ms.push(ms(t));
    }
    terminate(&api, &vm.id).await?;
    let cold_ms = med(cold);
    let resume = med(resume_ms);
    Ok(json!({
        "bench": "microvm",
        "example": IMAGE,
        "runs": opts.runs,
        "cold_boot_to_first_answer_ms": cold_ms,
        "pool_run_to_first_answer_ms": med(pool_run_ms.clone()),
        "pool_run_pct_of_cold_boot": (med(pool_run_ms) / cold_ms * 1000.0).round() / 10.0,
        "pool_claims": claims,
        "warm_resume_to_first_answer_ms": resume,
        "warm_resume_pct_of_cold_boot": (resume / cold_ms * 1000.0).round() / 10.0,
        "warm_suspend_ms": med(suspend_ms),
        "warm_suspended_rss_mib": round3(med(parked_rss)),
        "endpoint_p50_ms": med(steady),
        "fork_call_ms": forks.call_ms,
        "fork_ms": forks.one_ms,
        "fork_pct_of_cold_boot": (forks.one_ms / cold_ms * 1000.0).round() / 10.0,
        "fork_10_ms": forks.ten_ms,
    }))
}

struct ForkFigures {
    /// The fork call alone: the parent's pause and the API around it.
    call_ms: f64,
    /// Fork of one, to the child's first answer.
    one_ms: f64,
    /// Fork of ten, to the last child's first answer.
    ten_ms: f64,
}

/// Forks the running VM `parent`: `runs` forks of one and a fork of ten,
/// each timed from the call to its children's first answers.
async fn measure_forks(
    api: &Arc<ApiClient>,
    http: &reqwest::Client,
    parent: &str,
    runs: usize,
) -> anyhow::Result<ForkFigures> {
    let (mut call_ms, mut one_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let [child] = <[RunningVm; 1]>::try_from(fork(api, parent, 1).await?)
            .map_err(|_| anyhow::anyhow!("a fork of one made another number"))?;
        call_ms.push(ms(t));
        let child_token = token(api, &child.id).await?;
        get(http, &child.endpoint, &child_token).await?;
        one_ms.push(ms(t));
        terminate(api, &child.id).await?;
    }
    let t = Instant::now();
    let children = Arc::new(fork(api, parent, 10).await?);
    anyhow::ensure!(
        children.len() == 10,
        "a fork of ten made {}",
        children.len()
    );
    let answered = parallel(children.len(), |i| {
        let (api, http, children) = (Arc::clone(api), http.clone(), Arc::clone(&children));
        async move {
            let child = &children[i];
            let child_token = token(&api, &child.id).await?;
            get(&http, &child.endpoint, &child_token).await
        }
    })
    .await;
    let ten_ms = ms(t);
    for child in children.iter() {
        terminate(api, &child.id).await?;
    }
    answered.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ForkFigures {
        call_ms: med(call_ms),
        one_ms: med(one_ms),
        ten_ms,
    })
}

/// Ember's fork: the children, PENDING.
async fn fork(api: &ApiClient, parent: &str, count: u32) -> anyhow::Result<Vec<RunningVm>> {
    let path = format!("/ember/v1/microvms/{parent}/fork");
    let out = api
        .call(Method::POST, &path, &[], Some(&json!({ "count": count })))
        .await?;
    out["microvms"]
        .as_array()
        .context("the fork answered without its microvms")?
        .iter()
        .map(RunningVm::from_answer)
        .collect()
}

/// Suspends to disk (whole and compacted memory), the proxy, and how many
/// VMs the host holds; added to the warm tier's figures.
async fn measure_deep(
    dir: &Path,
    opts: &Opts,
    daemon: &Emberd,
    mut figures: Value,
) -> anyhow::Result<Value> {
    let api = Arc::new(ApiClient::from_data_dir(dir, None, "us-east-1")?);
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut run_ms = Vec::new();
    let mut kept = None;
    for _ in 0..opts.runs {
        let t = Instant::now();
        let vm = run_vm(&api, Some(3600)).await?;
        let token = token(&api, &vm.id).await?;
        get(&http, &vm.endpoint, &token).await?;
        run_ms.push(ms(t));
        match kept {
            None => kept = Some((vm, token)),
            Some(_) => terminate(&api, &vm.id).await?,
        }
    }
    let (vm, token) = kept.context("no run")?;
    let (mut suspend_ms, mut resume_ms) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let t = Instant::now();
        suspend(&api, &vm.id, FAST_POLL).await?;
        suspend_ms.push(ms(t));
        let t = Instant::now();
        get(&http, &vm.endpoint, &token).await?;
        resume_ms.push(ms(t));
    }
    let mut compacted_resume_ms = Vec::new();
    for _ in 0..opts.runs {
        suspend(&api, &vm.id, FAST_POLL).await?;
        wait_compacted(dir, &vm.id, 1).await?;
        let t = Instant::now();
        get(&http, &vm.endpoint, &token).await?;
        compacted_resume_ms.push(ms(t));
    }
    terminate(&api, &vm.id).await?;

    let cold_with_prefetch =
        crate::cold_resume::cold_deep_resume_ms(&api, &http, dir, opts.runs).await?;
    let proxy = crate::proxy_overhead::measure().await?;
    let fill = fill_host(&api, &http, dir, opts, daemon).await?;

    let cold_ms = figures["cold_boot_to_first_answer_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let resume = med(resume_ms);
    let more = json!({
        "run_to_first_answer_ms": med(run_ms.clone()),
        "run_pct_of_cold_boot": (med(run_ms) / cold_ms * 1000.0).round() / 10.0,
        "deep_resume_to_first_answer_ms": resume,
        "deep_resume_pct_of_cold_boot": (resume / cold_ms * 1000.0).round() / 10.0,
        "deep_resume_compacted_to_first_answer_ms": med(compacted_resume_ms),
        "deep_suspend_ms": med(suspend_ms),
        "deep_resume_cold_cache_prefetch_ms": cold_with_prefetch,
        "proxy_direct_p50_ms": round3(proxy.direct_p50_ms),
        "proxy_overhead_p50_ms": round3(proxy.proxied_p50_ms - proxy.direct_p50_ms),
        "proxy_rps": proxy.proxied_rps.round(),
        "running_idle_vms_max": fill.running,
        "running_idle_rss_mib_per_vm": fill.rss_mib_per_vm,
        "running_idle_cpu_pct_of_core_total": fill.idle_cpu_pct,
        "suspended_vms": fill.suspended,
        "suspended_disk_mib_per_vm": fill.disk_mib_per_suspended,
        "suspended_resume_check": fill.resume_check,
        "fill_seconds": fill.seconds,
    });
    if let (Some(all), Value::Object(more)) = (figures.as_object_mut(), more) {
        all.extend(more);
    }
    Ok(figures)
}

pub(crate) struct Emberd {
    child: tokio::process::Child,
}

impl Emberd {
    pub(crate) async fn start(
        dir: &Path,
        assets: &Path,
        agent: &Path,
        opts: &Opts,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = std::env::var_os("EMBER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/release/emberd".into());
        // A killed emberd leaves its address file: wait for the new one's.
        let _ = std::fs::remove_file(dir.join("endpoint"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("emberd.log"))?;
        let child = tokio::process::Command::new(&bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--min-idle-seconds", "1"])
            .args(["--compact-after-seconds", &COMPACT_AFTER_S.to_string()])
            .args(["--accel", &opts.accel])
            .arg("--agent")
            .arg(agent)
            // Room beyond the fill for the fork of ten, its parent and
            // the pool.
            .arg("--max-running-microvms")
            .arg((opts.running_vms + 16).to_string())
            .arg("--max-microvms")
            .arg((opts.suspended_vms + opts.running_vms + 16).to_string())
            .args(["--memory-reserve-mib", "512"])
            .args(extra_args)
            .env("EMBER_ASSETS_DIR", assets)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("endpoint").exists() {
            if Instant::now() > deadline {
                bail!(
                    "emberd did not start; see {}",
                    dir.join("emberd.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { child })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills emberd alone: its VMs run on, for the next emberd to take back.
    pub(crate) async fn kill_only(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Kills emberd and every VM it left (they outlive it by design).
    pub(crate) fn stop(&mut self, dir: &Path) {
        let _ = self.child.start_kill();
        for pid in qemu_pids(dir) {
            // SAFETY: kill(2) with a pid read from /proc; no memory involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) async fn build_image(api: &ApiClient) -> anyhow::Result<()> {
    let code = std::path::absolute("examples/hello-http")?;
    let body = json!({
        "name": IMAGE,
        "codeArtifact": {"uri": format!("file://{}", code.display())},
        "baseImageArn": "busybox",
        "buildRoleArn": "arn:aws:iam::123456789012:role/ember-build",
    });
    api.call(Method::POST, "/2025-09-09/microvm-images", &[], Some(&body))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = api
            .call(
                Method::GET,
                &format!("/2025-09-09/microvm-images/{IMAGE}/versions/1"),
                &[],
                None,
            )
            .await?;
        match v["state"].as_str() {
            Some("SUCCESSFUL") => return Ok(()),
            Some("FAILED") => bail!("the bench image failed to build: {}", v["stateReason"]),
            _ if Instant::now() > deadline => bail!("the bench image did not build in time"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The same image booted from its disk with no snapshot: kernel boot,
/// app start, first answer. What a platform without snapshots pays.
async fn cold_boot_to_answer(
    dir: &Path,
    root: &Path,
    agent: &Path,
    opts: &Opts,
) -> anyhow::Result<Vec<f64>> {
    let assets = ember_assets::AssetStore::new(root.join("assets"));
    let guest = {
        let agent = agent.to_path_buf();
        tokio::task::spawn_blocking(move || assets.ensure_guest(&agent)).await??
    };
    let mut cfg = QemuConfig::new(dir.join("cold"));
    cfg.accel = opts
        .accel
        .parse::<AccelChoice>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let hv = QemuHypervisor::new(cfg).await?;
    let disk = dir.join(format!("images/{IMAGE}/1/snapshot/disk.qcow2"));
    let mut out = Vec::new();
    for i in 0..opts.runs {
        let overlay = dir.join(format!("cold-{i}.qcow2"));
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&disk)
            .arg(&overlay)
            .status()
            .context("running qemu-img (from qemu-utils; `make deps` installs it)")?;
        anyhow::ensure!(status.success(), "qemu-img create failed");
        let mut c = VmConfig::new(
            format!("cold{i}"),
            &guest.kernel,
            &guest.initramfs,
            &overlay,
        );
        c.mem_mib = 256;
        let t = Instant::now();
        let vm = hv.boot(c).await?;
        vm.agent()
            .spawn_detached(ember_vmm::agent::ExecRequest {
                argv: vec!["/bin/sh".into(), "/app/start.sh".into()],
                log_path: Some("/var/log/ember-app.log".into()),
                ..Default::default()
            })
            .await?;
        loop {
            let answer = ember_builder::guest_http::request(
                vm.agent(),
                PORT,
                "GET",
                "/",
                Default::default(),
                Duration::from_secs(5),
            )
            .await;
            if matches!(answer, Ok(a) if a.status == 200) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("the cold-booted app never answered");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.push(ms(t));
        vm.stop().await?;
        let _ = std::fs::remove_file(&overlay);
    }
    Ok(out)
}

pub(crate) struct RunningVm {
    pub(crate) id: String,
    pub(crate) endpoint: String,
}

impl RunningVm {
    /// The VM a `RunMicrovm` (or a fork) answered with.
    pub(crate) fn from_answer(out: &Value) -> anyhow::Result<Self> {
        Ok(Self {
            id: out["microvmId"].as_str().context("no id")?.to_string(),
            endpoint: out["endpoint"].as_str().context("no endpoint")?.to_string(),
        })
    }
}

pub(crate) async fn run_vm(api: &ApiClient, idle: Option<u32>) -> anyhow::Result<RunningVm> {
    let mut body = json!({"imageIdentifier": IMAGE});
    if let Some(s) = idle {
        body["idlePolicy"] = json!({"maxIdleDurationSeconds": s, "suspendedDurationSeconds": 86400, "autoResumeEnabled": true});
    }
    let out = api.call(Method::POST, MICROVMS, &[], Some(&body)).await?;
    RunningVm::from_answer(&out)
}

pub(crate) async fn token(api: &ApiClient, id: &str) -> anyhow::Result<String> {
    microvm_api::token(api, id, PORT, 60).await
}

/// One request through the endpoint; returns once the answer's first
/// bytes (status and headers) arrived, and reads the rest.
pub(crate) async fn get(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
) -> anyhow::Result<String> {
    let r = http
        .get(format!("{endpoint}/"))
        .header("X-aws-proxy-auth", token)
        .header("X-aws-proxy-port", PORT.to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "endpoint answered {}", r.status());
    Ok(r.text().await?)
}

pub(crate) async fn wait_running(api: &ApiClient, id: &str) -> anyhow::Result<()> {
    wait_state(api, id, "RUNNING", SLOW_POLL).await
}

async fn wait_state(api: &ApiClient, id: &str, want: &str, poll: Duration) -> anyhow::Result<()> {
    microvm_api::wait_state(api, id, want, poll, Duration::from_secs(300))
        .await
        .map(drop)
}

pub(crate) async fn terminate(api: &ApiClient, id: &str) -> anyhow::Result<()> {
    api.call(Method::DELETE, &format!("{MICROVMS}/{id}"), &[], None)
        .await?;
    wait_state(api, id, "TERMINATED", SLOW_POLL).await
}

struct Fill {
    running: usize,
    rss_mib_per_vm: f64,
    idle_cpu_pct: f64,
    suspended: usize,
    disk_mib_per_suspended: f64,
    resume_check: bool,
    seconds: f64,
}

/// Runs `running_vms` idle VMs and measures them; then suspends them and
/// adds run-then-suspend VMs until `suspended_vms` are suspended.
async fn fill_host(
    api: &Arc<ApiClient>,
    http: &reqwest::Client,
    dir: &Path,
    opts: &Opts,
    daemon: &Emberd,
) -> anyhow::Result<Fill> {
    let t0 = Instant::now();
    let started = parallel(opts.running_vms, |_| {
        let (api, http) = (Arc::clone(api), http.clone());
        async move {
            let vm = run_vm(&api, Some(86_400)).await?;
            let token = token(&api, &vm.id).await?;
            get(&http, &vm.endpoint, &token).await?;
            anyhow::Ok((vm, token))
        }
    })
    .await;
    let running: Vec<_> = started.into_iter().filter_map(Result::ok).collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = qemu_pids(dir);
    let rss: u64 = pids.iter().filter_map(|p| rss_bytes(*p)).sum();
    let window = Duration::from_secs(10);
    let before: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
    tokio::time::sleep(window).await;
    let after: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle_cpu_pct = (after.saturating_sub(before)) as f64 / hz / window.as_secs_f64() * 100.0;
    let n_running = running.len();

    // Suspend them all, then top up with run-and-suspend VMs.
    let suspended_now = parallel(running.len(), |i| {
        let api = Arc::clone(api);
        let id = running[i].0.id.clone();
        async move { suspend(&api, &id, SLOW_POLL).await }
    })
    .await;
    let mut suspended = suspended_now.iter().filter(|r| r.is_ok()).count();
    let more = opts.suspended_vms.saturating_sub(suspended);
    let extra = parallel(more, |_| {
        let api = Arc::clone(api);
        async move {
            let vm = run_vm(&api, None).await?;
            wait_state(&api, &vm.id, "RUNNING", SLOW_POLL).await?;
            suspend(&api, &vm.id, SLOW_POLL).await
        }
    })
    .await;
    suspended += extra.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(e)) = extra.iter().find(|r| r.is_err()) {
        eprintln!("bench: some run-and-suspend failed: {e}");
    }
    let _ = wait_compacted(dir, "", suspended).await;
    let disk = dir_allocated(&dir.join("microvms"));
    // A suspended VM from the first batch still has its memory: its
    // counter continues at 2 (one request was served before).
    let resume_check = match running.first() {
        Some((vm, token)) => get(http, &vm.endpoint, token)
            .await
            .map(|body| body.contains("request 2"))
            .unwrap_or(false),
        None => false,
    };
    let _ = daemon.pid();
    Ok(Fill {
        running: n_running,
        rss_mib_per_vm: round3(rss as f64 / (1 << 20) as f64 / n_running.max(1) as f64),
        idle_cpu_pct: round3(idle_cpu_pct),
        suspended,
        disk_mib_per_suspended: round3(disk as f64 / (1 << 20) as f64 / suspended.max(1) as f64),
        resume_check,
        seconds: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Waits until `count` suspended VMs (under `dir/microvms/PREFIX*`) have
/// their memory compacted.
async fn wait_compacted(dir: &Path, prefix: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(COMPACT_AFTER_S + 600);
    loop {
        let done = std::fs::read_dir(dir.join("microvms"))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter(|e| e.path().join("suspended/memory.base").exists())
            .count();
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} of {count} suspended VMs compacted in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Suspends and waits for SUSPENDED, polling every `poll`.
pub(crate) async fn suspend(api: &ApiClient, id: &str, poll: Duration) -> anyhow::Result<()> {
    microvm_api::suspend(api, id).await?;
    wait_state(api, id, "SUSPENDED", poll).await
}

/// Runs `n` jobs, `PARALLEL` at a time; results in order.
pub(crate) async fn parallel<F, Fut, T>(n: usize, job: F) -> Vec<anyhow::Result<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use futures_util::stream::{self, StreamExt};
    stream::iter((0..n).map(job))
        .buffered(PARALLEL)
        .collect()
        .await
}

fn ms(t: Instant) -> f64 {
    round3(t.elapsed().as_secs_f64() * 1e3)
}

fn med(v: Vec<f64>) -> f64 {
    round3(median(v))
}

/// The ids of the VMs in emberd's warm pool now.
fn pool_ids(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("pool"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
