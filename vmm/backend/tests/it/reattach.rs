//! A daemon restart: VMs launched by one backend instance (with
//! `die_with_parent` off) outlive their handles and are taken over by a new
//! instance with `attach`, which then drives them as its own.

use crate::common;

use std::time::Duration;

use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{Hypervisor, RestoreMemory, RestoreOptions, VmmError};

fn keep_running(cfg: &mut QemuConfig) {
    cfg.die_with_parent = false;
}

/// A second backend on the same state directory, as a restarted daemon
/// would create.
async fn restarted(env: &common::TestEnv) -> QemuHypervisor {
    let mut cfg = QemuConfig::new(env.state.path());
    if let Ok(a) = std::env::var("EMBER_ACCEL") {
        cfg.accel = a.parse().unwrap();
    }
    keep_running(&mut cfg);
    QemuHypervisor::new(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_takes_over_a_vm_that_outlived_its_handle() {
    let env = common::env_with(keep_running).await;
    let vm = env.boot("kept").await;
    let token = common::sh(&*vm, "cat /proc/sys/kernel/random/uuid").await;
    let token = token.trim();
    // /tmp is a tmpfs: only the running guest's memory holds this.
    common::sh(&*vm, &format!("echo {token} > /tmp/token")).await;
    let pid = vm.stats().unwrap().pid;
    drop(vm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        env.live_qemus("kept"),
        vec![pid],
        "dropping the handle kept QEMU"
    );

    let hv = restarted(&env).await;
    let vm = hv.attach("kept").await.unwrap();
    assert_eq!(vm.stats().unwrap().pid, pid);
    assert_eq!(common::sh(&*vm, "cat /tmp/token").await.trim(), token);

    // Suspend and resume in place, then attach again: the restored VM owns
    // its memory file, which a later suspend moves again.
    let snap = env.state.path().join("suspended");
    vm.suspend(&snap).await.unwrap();
    assert!(env.live_qemus("kept").is_empty());
    let vm = hv
        .restore(
            "kept",
            &snap,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .unwrap();
    drop(vm);
    let hv = restarted(&env).await;
    let vm = hv.attach("kept").await.unwrap();
    assert_eq!(common::sh(&*vm, "cat /tmp/token").await.trim(), token);
    let snap2 = env.state.path().join("suspended-again");
    let info = vm.suspend(&snap2).await.unwrap();
    assert!(info.memory_bytes > 0, "memory moved as a file: {info:?}");
    let vm = hv
        .restore(
            "kept",
            &snap2,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .unwrap();
    assert_eq!(common::sh(&*vm, "cat /tmp/token").await.trim(), token);
    vm.stop().await.unwrap();
    assert!(env.live_qemus("kept").is_empty());
    assert!(!hv.vm_dir("kept").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_refuses_dead_and_busy_vms() {
    let env = common::env_with(keep_running).await;
    let not_running = |r: Result<_, VmmError>| match r {
        Err(VmmError::NotRunning { reason, .. }) => reason,
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("attached to a VM that is not there"),
    };
    assert!(not_running(env.hv.attach("never-booted").await).contains("no runtime directory"));

    // A second handle while the first is open: refused, the VM unharmed.
    let vm = env.boot("busy").await;
    let reason = not_running(env.hv.attach("busy").await);
    assert!(reason.contains("another handle"), "{reason}");
    assert_eq!(common::sh(&*vm, "echo ok").await.trim(), "ok");
    let pid = vm.stats().unwrap().pid;
    drop(vm);

    // The VM dies while nobody holds it: attach cleans up after it.
    // SAFETY: signalling a QEMU process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    for _ in 0..100 {
        if env.live_qemus("busy").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hv = restarted(&env).await;
    let reason = not_running(hv.attach("busy").await);
    assert!(reason.contains("is gone"), "{reason}");
    assert!(!hv.vm_dir("busy").exists(), "runtime files were removed");
    assert!(not_running(hv.attach("busy").await).contains("no runtime directory"));
}
