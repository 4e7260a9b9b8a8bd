//! `ember setup` and `ember demo`: the foundation end to end, from a shell.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ember_assets::{AssetStore, BaseRootfs, GuestAssets};
use ember_vmm::agent::ExecRequest;
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{AccelChoice, Hypervisor, RestoreOptions, Vm, VmConfig};

/// Builds (or reuses) the guest kernel, initramfs and base rootfs.
pub async fn prepare_assets(data_dir: &Path, agent: &Path) -> anyhow::Result<GuestAssets> {
    if !agent.is_file() {
        bail!(
            "guest agent binary not found at {} (build it with `make agent`)",
            agent.display()
        );
    }
    let store = AssetStore::new(data_dir.join("assets"));
    let agent = agent.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || store.ensure_guest(&agent)).await??)
}

/// Builds (or reuses) the debian12-minimal base rootfs.
pub async fn prepare_debian_base(data_dir: &Path) -> anyhow::Result<BaseRootfs> {
    let store = AssetStore::new(data_dir.join("assets"));
    Ok(tokio::task::spawn_blocking(move || store.ensure_debian_rootfs()).await??)
}

/// Counts in tmpfs (guest memory only); each value lands by rename, so a
/// reader never sees a half-written file.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.25; done";

pub async fn run(data_dir: &Path, agent: &Path, accel: AccelChoice) -> anyhow::Result<()> {
    let assets = prepare_assets(data_dir, agent).await?;
    let mut cfg = QemuConfig::new(data_dir.join("run"));
    cfg.accel = accel;
    let hv = QemuHypervisor::new(cfg).await?;
    let suffix = std::process::id();
    let (origin, clone) = (format!("demo-{suffix}"), format!("demo-{suffix}-restored"));
    println!(
        "accelerator: {}   ({})",
        hv.accel().as_str(),
        hv.qemu_version()
    );

    let t = Instant::now();
    let vm = hv
        .boot(VmConfig::new(
            &origin,
            &assets.kernel,
            &assets.initramfs,
            &assets.rootfs,
        ))
        .await?;
    println!("booted {origin} in {} ms", t.elapsed().as_millis());
    let result = demo_flow(&hv, &*vm, data_dir, &clone).await;
    vm.stop().await.ok();
    result
}

async fn demo_flow(
    hv: &QemuHypervisor,
    vm: &dyn Vm,
    data_dir: &Path,
    clone: &str,
) -> anyhow::Result<()> {
    let uname = vm.agent().sh("uname -r").await?;
    println!("guest kernel: {}", uname.stdout_str().trim());
    let pid = vm
        .agent()
        .spawn_detached(ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), COUNTER.into()],
            ..Default::default()
        })
        .await?;
    vm.agent()
        .sh("echo 'written before the snapshot' > /root/note")
        .await?;
    println!("started a counter loop (pid {pid}) that lives only in guest memory (/tmp is tmpfs)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = counter(vm).await?;
    println!("counter before snapshot: {before}");

    let snap = data_dir.join("snapshots").join(vm.name());
    std::fs::create_dir_all(snap.parent().context("snapshot path")?)?;
    let info = vm.snapshot(&snap).await?;
    println!(
        "snapshot in {} ms: memory {:.1} MiB stored (guest has 256 MiB), device state {} KiB, disk {} KiB",
        info.duration_ms,
        info.memory_bytes as f64 / (1 << 20) as f64,
        info.device_state_bytes / 1024,
        info.disk_bytes / 1024,
    );
    vm.stop().await?;
    println!("stopped {}: its QEMU process is gone", vm.name());

    let t = Instant::now();
    let restored = hv.restore(clone, &snap, RestoreOptions::default()).await?;
    let after = counter(&*restored).await?;
    println!(
        "restored {clone} in a new QEMU process; first exec answered after {} ms",
        t.elapsed().as_millis()
    );
    println!("counter right after restore: {after}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = counter(&*restored).await?;
    let alive = restored
        .agent()
        .sh(&format!("kill -0 {pid}"))
        .await?
        .success();
    let note = restored.agent().sh("cat /root/note").await?.stdout_str();
    println!("counter one second later: {later} (process {pid} alive: {alive})");
    println!("file on disk: {}", note.trim());
    restored.stop().await?;
    std::fs::remove_dir_all(&snap).ok();
    if after < before || later <= after || !alive {
        bail!("state did not survive the snapshot: before {before}, after {after}, later {later}, alive {alive}");
    }
    println!("OK: the process, its in-memory state and the disk survived snapshot and restore");
    Ok(())
}

async fn counter(vm: &dyn Vm) -> anyhow::Result<u64> {
    let out = vm.agent().sh("cat /tmp/counter").await?;
    out.stdout_str()
        .trim()
        .parse()
        .with_context(|| format!("counter value {:?}", out.stdout_str()))
}
