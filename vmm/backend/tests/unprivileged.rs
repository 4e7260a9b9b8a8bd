//! QEMU dropped to the `ember-vm` user: boots, snapshots, suspends and
//! restores still work, and the host reads the snapshots back.

mod common;

use std::os::unix::fs::MetadataExt;

use ember_vmm::qemu::ensure_vm_user;
use ember_vmm::{Hypervisor, RestoreMemory};

/// Real, effective, saved and filesystem ids of a process, from `status`.
fn ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_as_the_vm_user_through_snapshot_suspend_and_restore() {
    let (uid, gid) = tokio::task::spawn_blocking(ensure_vm_user)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(uid, 0);
    assert_eq!(ensure_vm_user().unwrap(), (uid, gid), "idempotent");
    let env = common::env_with(|cfg| cfg.run_as = Some((uid, gid))).await;

    let vm = env.boot("plain").await;
    assert_eq!(vm.isolation().run_as, Some((uid, gid)));
    let pid = vm.stats().unwrap().pid;
    assert_eq!(ids(pid, "Uid:"), vec![uid; 4]);
    assert_eq!(ids(pid, "Gid:"), vec![gid; 4]);
    assert_eq!(ids(pid, "Groups:"), Vec::<u32>::new());
    let dir = env.hv.vm_dir("plain");
    for f in ["", "memory.ram", "disk.qcow2", "qmp.sock", "agent.sock"] {
        assert_eq!(std::fs::metadata(dir.join(f)).unwrap().uid(), uid, "{f}");
    }
    common::sh(&*vm, "echo kept > /tmp/mem; echo disk > /root/disk; sync").await;

    // A copy snapshot is read back by the host, and restores run as the user,
    // except clones, whose RAM image QEMU 7.2 would open writable.
    let snap = env.state.path().join("snap");
    vm.snapshot(&snap).await.unwrap();
    vm.resume().await.unwrap();
    let copy = env
        .hv
        .restore_with("copy", &snap, RestoreMemory::Copy)
        .await
        .unwrap();
    assert_eq!(ids(copy.stats().unwrap().pid, "Uid:"), vec![uid; 4]);
    assert_eq!(
        common::sh(&*copy, "cat /tmp/mem /root/disk").await,
        "kept\ndisk\n"
    );
    copy.stop().await.unwrap();
    let clone = env.hv.restore("clone", &snap).await.unwrap();
    assert_eq!(clone.isolation().run_as, None);
    assert_eq!(common::sh(&*clone, "cat /tmp/mem").await.trim(), "kept");
    clone.stop().await.unwrap();

    let suspended = env.state.path().join("suspended");
    vm.suspend(&suspended).await.unwrap();
    let vm = env
        .hv
        .restore_with("plain", &suspended, RestoreMemory::Consume)
        .await
        .unwrap();
    assert_eq!(ids(vm.stats().unwrap().pid, "Uid:"), vec![uid; 4]);
    assert_eq!(common::sh(&*vm, "cat /tmp/mem").await.trim(), "kept");
    vm.stop().await.unwrap();
    assert!(!dir.exists());
}
