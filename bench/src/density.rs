//! `{"bench":"density"}`: how many idle hello-http microVMs this host
//! really holds. A real emberd with its count limits lifted (so the host,
//! not a flag, is what stops it) runs VMs, a few at a time, each answered
//! once through its endpoint, until emberd refuses a run, a VM fails to
//! start, a first answer takes too long, or `--density-max` is reached;
//! then it measures what the idle VMs cost and checks they all still
//! answer. Slow: minutes, and the host is full while it runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::api_client::ApiClient;
use serde_json::{json, Value};

use crate::microvm::{
    build_image, end_run, fresh_dir, get, parallel, round3, run_vm, token, wait_running, Emberd,
    Opts, RunningVm, IMAGE,
};
use crate::procfs::{cpu_ticks, qemu_pids, rss_bytes};

/// VMs started at once: more only queues restores on this host's cores.
const BATCH: usize = 4;
/// A first answer slower than this means the host is out of CPU.
const SLOW_START: Duration = Duration::from_secs(60);
/// How long the idle VMs' CPU use is sampled.
const CPU_WINDOW: Duration = Duration::from_secs(10);

pub async fn run(data_dir: &Path, agent: &Path, opts: &Opts, max: usize) -> anyhow::Result<Value> {
    let (_, dir, assets) = fresh_dir(data_dir, "bench-density")?;
    let limits = Opts {
        running_vms: max,
        suspended_vms: 0,
        runs: opts.runs,
        accel: opts.accel.clone(),
    };
    let mut daemon = Emberd::start(&dir, &assets, agent, &limits, &[]).await?;
    let result = measure(&dir, max).await;
    end_run(&mut daemon, &dir, "density", result)
}

async fn measure(dir: &Path, max: usize) -> anyhow::Result<Value> {
    let api = Arc::new(ApiClient::from_data_dir(dir, None, "us-east-1")?);
    build_image(&api).await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let t0 = Instant::now();
    let mut running: Vec<(RunningVm, String)> = Vec::new();
    let mut batch_ms = Vec::new();
    let stopped_by = loop {
        if running.len() >= max {
            break format!("--density-max {max} reached");
        }
        let n = BATCH.min(max - running.len());
        let t = Instant::now();
        let started = parallel(n, |_| {
            let (api, http) = (Arc::clone(&api), http.clone());
            async move {
                // No idle policy: it stays RUNNING, idle.
                let vm = run_vm(&api, None).await?;
                tokio::time::timeout(SLOW_START, async {
                    wait_running(&api, &vm.id).await?;
                    let token = token(&api, &vm.id).await?;
                    get(&http, &vm.endpoint, &token).await?;
                    anyhow::Ok(token)
                })
                .await
                .map_err(|_| anyhow::anyhow!("a first answer took over {SLOW_START:?}"))?
                .map(|token| (vm, token))
            }
        })
        .await;
        batch_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut failure = None;
        for r in started {
            match r {
                Ok(vm) => running.push(vm),
                Err(e) => failure = Some(format!("{e:#}")),
            }
        }
        if let Some(why) = failure {
            break why;
        }
    };
    let fill_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = qemu_pids(dir);
    let rss: u64 = pids.iter().filter_map(|p| rss_bytes(*p)).sum();
    let before: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
    tokio::time::sleep(CPU_WINDOW).await;
    let after: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    let cpu_pct_of_host =
        after.saturating_sub(before) as f64 / hz / CPU_WINDOW.as_secs_f64() / cores * 100.0;
    let mem_available_mib = crate::procfs::mem_available_mib();
    // Every idle VM still answers, with its own memory (its second request).
    let answered = parallel(running.len(), |i| {
        let (http, running) = (http.clone(), &running);
        async move {
            let (vm, token) = &running[i];
            let t = Instant::now();
            let body = get(&http, &vm.endpoint, token).await?;
            anyhow::ensure!(body.contains("request 2"), "lost its counter: {body}");
            anyhow::Ok(t.elapsed().as_secs_f64() * 1e3)
        }
    })
    .await;
    let answer_ms: Vec<f64> = answered
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let n = running.len().max(1) as f64;
    Ok(json!({
        "bench": "density",
        "example": IMAGE,
        "idle_vms_max": running.len(),
        "stopped_by": stopped_by,
        "rss_mib_per_vm": round3(rss as f64 / (1 << 20) as f64 / n),
        "mem_available_mib_at_max": mem_available_mib,
        "idle_cpu_pct_of_host": round3(cpu_pct_of_host),
        "all_answering": answer_ms.len() == running.len(),
        "answer_p50_ms_at_max": round3(crate::median(answer_ms)),
        "first_batch_ms": round3(batch_ms.first().copied().unwrap_or(0.0)),
        "last_batch_ms": round3(batch_ms.last().copied().unwrap_or(0.0)),
        "fill_seconds": (fill_seconds * 10.0).round() / 10.0,
    }))
}
