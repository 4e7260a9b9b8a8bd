//! `{"bench":"restore"}`: cold boot vs snapshot restore of a busybox guest.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_vmm::agent::ExecRequest;
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{AccelChoice, Hypervisor, RestoreMemory, RestoreOptions, Vm, VmConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::median;

const MEM_MIB: u32 = 256;
const HTTP_PORT: u16 = 8080;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub async fn run(
    data_dir: &Path,
    agent: &Path,
    accel: AccelChoice,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let assets = ember_assets::AssetStore::new(data_dir.join("assets"));
    let agent = agent.to_path_buf();
    let guest = tokio::task::spawn_blocking(move || assets.ensure_guest(&agent)).await??;
    let state = tempfile_dir()?;
    let mut cfg = QemuConfig::new(&state);
    cfg.accel = accel;
    let hv = QemuHypervisor::new(cfg).await?;
    let config = |name: &str| {
        let mut c = VmConfig::new(name, &guest.kernel, &guest.initramfs, &guest.rootfs);
        c.mem_mib = MEM_MIB;
        c
    };

    let (mut cold, mut snapshot_ms, mut mem_bytes) = (vec![], vec![], vec![]);
    let (mut cold_agent, mut restore_agent) = (vec![], vec![]);
    let (mut restore_exec, mut restore_tcp) = (vec![], vec![]);
    let (mut rss, mut private, mut idle_cpu) = (vec![], vec![], vec![]);
    let (mut stream_restore_exec, mut stream_bytes) = (vec![], vec![]);
    let (mut copy_restore_exec, mut suspend_ms, mut resume_exec) = (vec![], vec![], vec![]);
    for i in 0..runs {
        // Cold boot to the first exec answer.
        let t = Instant::now();
        let vm = hv.boot(config(&format!("cold{i}"))).await?;
        cold_agent.push(ms(t.elapsed()));
        vm.agent().sh("true").await?;
        cold.push(ms(t.elapsed()));

        // A guest with an HTTP server listening, as an app image would be.
        start_http(&*vm).await?;
        let snap = state.join(format!("snap{i}"));
        let info = vm.snapshot(&snap).await?;
        snapshot_ms.push(info.duration_ms as f64);
        mem_bytes.push(info.memory_bytes as f64);
        vm.stop().await?;

        let t = Instant::now();
        let r = hv
            .restore(&format!("r{i}"), &snap, RestoreOptions::default())
            .await?;
        restore_agent.push(ms(t.elapsed()));
        r.agent().sh("true").await?;
        restore_exec.push(ms(t.elapsed()));
        r.stop().await?;

        let t = Instant::now();
        let r = hv
            .restore(&format!("t{i}"), &snap, RestoreOptions::default())
            .await?;
        http_get(&*r).await?;
        restore_tcp.push(ms(t.elapsed()));
        // Idle cost: let the restored guest settle, then read its RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stats = r.stats()?;
        rss.push(stats.rss_bytes as f64 / (1 << 20) as f64);
        private.push(stats.private_bytes as f64 / (1 << 20) as f64);
        // Host CPU an idle VM burns, in % of one core, over a quiet window.
        let window = Duration::from_secs(5);
        tokio::time::sleep(window).await;
        let used = r.stats()?.cpu_ms.saturating_sub(stats.cpu_ms);
        idle_cpu.push(used as f64 / window.as_millis() as f64 * 100.0);

        // The alternative: RAM streamed through the migration file (what a
        // snapshot of a restored, privately mapped VM produces).
        let stream_snap = state.join(format!("stream{i}"));
        let sinfo = r.snapshot(&stream_snap).await?;
        stream_bytes.push(sinfo.device_state_bytes as f64);
        r.stop().await?;
        let t = Instant::now();
        let s = hv
            .restore(&format!("s{i}"), &stream_snap, RestoreOptions::default())
            .await?;
        s.agent().sh("true").await?;
        stream_restore_exec.push(ms(t.elapsed()));
        s.stop().await?;

        // A VM with its own RAM file: suspend moves files, resume takes them.
        let t = Instant::now();
        let own = hv
            .restore(
                &format!("own{i}"),
                &snap,
                RestoreOptions::memory(RestoreMemory::Copy),
            )
            .await?;
        own.agent().sh("true").await?;
        copy_restore_exec.push(ms(t.elapsed()));
        let suspended = state.join(format!("suspended{i}"));
        let t = Instant::now();
        own.suspend(&suspended).await?;
        suspend_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        let resumed = hv
            .restore(
                &format!("resumed{i}"),
                &suspended,
                RestoreOptions::memory(RestoreMemory::Consume),
            )
            .await?;
        resumed.agent().sh("true").await?;
        resume_exec.push(ms(t.elapsed()));
        resumed.stop().await?;

        std::fs::remove_dir_all(&snap).ok();
        std::fs::remove_dir_all(&stream_snap).ok();
    }
    std::fs::remove_dir_all(&state).ok();
    let cold_ms = median(cold);
    let restore_ms = median(restore_exec);
    Ok(json!({
        "bench": "restore",
        "guest_mem_mib": MEM_MIB,
        "cold_boot_to_exec_ms": cold_ms,
        "cold_boot_to_agent_ms": median(cold_agent),
        "snapshot_ms": median(snapshot_ms),
        "memory_snapshot_bytes": median(mem_bytes) as u64,
        "restore_to_exec_ms": restore_ms,
        "restore_to_agent_ms": median(restore_agent),
        "restore_to_tcp_ms": median(restore_tcp),
        "restore_vs_cold_pct": (restore_ms / cold_ms * 1000.0).round() / 10.0,
        "idle_vmm_rss_mib": (median(rss) * 10.0).round() / 10.0,
        "idle_vmm_private_mib": (median(private) * 10.0).round() / 10.0,
        "idle_vmm_cpu_pct": (median(idle_cpu) * 10.0).round() / 10.0,
        "stream_restore_to_exec_ms": median(stream_restore_exec),
        "stream_snapshot_bytes": median(stream_bytes) as u64,
        "copy_restore_to_exec_ms": median(copy_restore_exec),
        "suspend_ms": median(suspend_ms),
        "resume_in_place_to_exec_ms": median(resume_exec),
        "accel": hv.accel().as_str(),
        "runs": runs,
    }))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ember-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

async fn start_http(vm: &dyn Vm) -> anyhow::Result<()> {
    vm.agent()
        .sh("mkdir -p /tmp/www && echo ok > /tmp/www/index.html")
        .await?;
    vm.agent()
        .spawn_detached(ExecRequest {
            argv: [
                "httpd",
                "-f",
                "-p",
                &format!("127.0.0.1:{HTTP_PORT}"),
                "-h",
                "/tmp/www",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await?;
    // /proc/net/tcp lists the port in hex; state 0A is LISTEN.
    let wait = format!(
        "for i in $(seq 100); do grep -q ':{HTTP_PORT:04X} 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.05; done; exit 1"
    );
    anyhow::ensure!(vm.agent().sh(&wait).await?.success(), "httpd did not start");
    Ok(())
}

/// One HTTP request through an agent stream, until the first response byte.
async fn http_get(vm: &dyn Vm) -> anyhow::Result<()> {
    let mut s = vm.agent().connect(HTTP_PORT).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.context("no HTTP answer")?;
    Ok(())
}
