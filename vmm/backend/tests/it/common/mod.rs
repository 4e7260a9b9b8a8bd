//! Shared set-up for tests that boot real guests: assets are built once per
//! machine (cached, locked by ember-assets) and every test gets its own
//! state directory, so tests run in parallel without sharing VMs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_assets::AssetStore;
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{Hypervisor, Vm, VmConfig};

pub struct TestEnv {
    pub hv: QemuHypervisor,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub state: tempfile::TempDir,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static agent binary, built by `make` before the tests run.
fn agent_binary() -> PathBuf {
    std::env::var_os("EMBER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/x86_64-unknown-linux-gnu/guest/ember-agent")
        })
}

/// The test-only agent that attacks its host once triggered, built by
/// `make hostile-agent` (which `make test` runs first).
pub fn hostile_agent_binary() -> PathBuf {
    std::env::var_os("EMBER_HOSTILE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/hostile/x86_64-unknown-linux-gnu/guest/ember-agent")
        })
}

/// The shared asset cache (built once per machine).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("EMBER_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/assets"))
}

pub async fn env() -> TestEnv {
    env_with(|_| {}).await
}

/// Like [`env`], with the backend's configuration adjusted first.
pub async fn env_with(adjust: impl FnOnce(&mut QemuConfig)) -> TestEnv {
    env_with_agent(agent_binary(), adjust).await
}

/// Like [`env_with`], with guests whose PID 1 is `agent`.
pub async fn env_with_agent(agent: PathBuf, adjust: impl FnOnce(&mut QemuConfig)) -> TestEnv {
    assert!(
        agent.is_file(),
        "guest agent not built at {} — run the tests with `make test`",
        agent.display()
    );
    let assets_dir = assets_dir();
    let guest =
        tokio::task::spawn_blocking(move || AssetStore::new(assets_dir).ensure_guest(&agent))
            .await
            .expect("asset task")
            .expect("guest assets");
    // Short path: QEMU's unix sockets live under it.
    let state = tempfile::Builder::new()
        .prefix("ember-t")
        .tempdir_in("/tmp")
        .expect("state dir");
    let mut cfg = QemuConfig::new(state.path());
    if let Ok(a) = std::env::var("EMBER_ACCEL") {
        cfg.accel = a.parse().expect("EMBER_ACCEL is auto, kvm or tcg");
    }
    adjust(&mut cfg);
    let hv = QemuHypervisor::new(cfg).await.expect("QEMU backend");
    TestEnv {
        hv,
        kernel: guest.kernel,
        initramfs: guest.initramfs,
        rootfs: guest.rootfs,
        state,
    }
}

impl TestEnv {
    pub fn config(&self, name: &str) -> VmConfig {
        VmConfig::new(name, &self.kernel, &self.initramfs, &self.rootfs)
    }

    pub async fn boot(&self, name: &str) -> Arc<dyn Vm> {
        self.hv.boot(self.config(name)).await.expect("boot")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state.path().join("vms")
    }

    /// QEMU processes still running for the VM `name` (by working directory,
    /// which is the VM's runtime directory even after it is deleted).
    pub fn live_qemus(&self, name: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        let needle = self.hv.vm_dir(name);
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cwd
                .to_string_lossy()
                .starts_with(&*needle.to_string_lossy())
                && cmdline.starts_with(b"qemu-system")
            {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Runs a shell script in the guest, asserting success; returns stdout.
pub async fn sh(vm: &dyn Vm, script: &str) -> String {
    let out = vm.agent().sh(script).await.expect("exec");
    assert!(
        out.success(),
        "`{script}` failed: {:?}\nstdout: {}\nstderr: {}",
        out.code,
        out.stdout_str(),
        out.stderr_str()
    );
    out.stdout_str()
}
