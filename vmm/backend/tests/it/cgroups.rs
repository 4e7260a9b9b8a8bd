//! Each VM's QEMU runs in its own cgroup with memory, CPU and pids limits,
//! across boot and restore, and the cgroup goes when the VM does.

use crate::common;

use std::path::PathBuf;

use ember_vmm::qemu::{CgroupConfig, CgroupVersion, IoLimits};
use ember_vmm::{Hypervisor, RestoreMemory, RestoreOptions};

/// The directory of `pid`'s cgroup in the hierarchy holding `controller`.
fn cgroup_dir(pid: u32, version: CgroupVersion, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            let hit = match version {
                CgroupVersion::V2 => ctrls.is_empty(),
                CgroupVersion::V1 => ctrls.split(',').any(|c| c == controller),
            };
            hit.then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap();
    let root = PathBuf::from("/sys/fs/cgroup");
    match version {
        CgroupVersion::V2 => root.join(path),
        CgroupVersion::V1 => root.join(controller).join(path),
    }
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_runs_in_its_own_limited_cgroup_until_it_stops() {
    let parent = format!("ember-test-{}", std::process::id());
    let env = common::env_with(|cfg| {
        let mut cg = CgroupConfig::new(&parent);
        cg.nest_in_own_cgroup = true;
        cg.cpu_max_percent = 50;
        cg.memory_overhead_mib = 200;
        cg.io = Some(IoLimits::for_path(std::path::Path::new("/tmp"), 64 << 20, 1000).unwrap());
        cfg.cgroup = Some(cg);
        cfg.die_with_parent = false;
    })
    .await;
    let Some(version) = env.hv.cgroup_version() else {
        panic!("this host has writable cgroups; the backend must use them");
    };
    let vm = env.boot("limited").await;
    assert!(vm.isolation().cgroup);
    let pid = vm.stats().unwrap().pid;
    let memory = cgroup_dir(pid, version, "memory");
    let cpu = cgroup_dir(pid, version, "cpu");
    let pids = cgroup_dir(pid, version, "pids");
    for dir in [&memory, &cpu, &pids] {
        assert!(
            dir.ends_with(format!("{parent}/limited")),
            "{}",
            dir.display()
        );
    }
    let want_memory = ((256u64 + 200) << 20).to_string();
    match version {
        CgroupVersion::V1 => {
            assert_eq!(read(&memory, "memory.limit_in_bytes"), want_memory);
            assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
            let blkio = cgroup_dir(pid, version, "blkio");
            let bps = read(&blkio, "blkio.throttle.write_bps_device");
            assert!(bps.ends_with(" 67108864"), "{bps}");
            assert!(read(&blkio, "blkio.throttle.read_iops_device").ends_with(" 1000"));
        }
        CgroupVersion::V2 => {
            assert_eq!(read(&memory, "memory.max"), want_memory);
            assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
            let io = read(&memory, "io.max");
            assert!(
                io.contains("wbps=67108864") && io.contains("riops=1000"),
                "{io}"
            );
        }
    }
    assert_eq!(read(&pids, "pids.max"), "128");
    // Every thread QEMU started is inside, well under the pids limit.
    let threads: usize = read(&pids, "pids.current").parse().unwrap();
    assert!((2..100).contains(&threads), "{threads} tasks");
    common::sh(&*vm, "echo hello > /tmp/x").await;

    // A restored VM gets the same treatment; suspend removes the old group.
    let snap = env.state.path().join("snap");
    vm.suspend(&snap).await.unwrap();
    assert!(!memory.exists() && !cpu.exists() && !pids.exists());
    let vm = env
        .hv
        .restore(
            "limited",
            &snap,
            RestoreOptions::memory(RestoreMemory::Consume),
        )
        .await
        .unwrap();
    assert!(vm.isolation().cgroup);
    let pid = vm.stats().unwrap().pid;
    assert_eq!(cgroup_dir(pid, version, "memory"), memory);
    assert_eq!(common::sh(&*vm, "cat /tmp/x").await.trim(), "hello");
    vm.stop().await.unwrap();
    assert!(!memory.exists() && !cpu.exists() && !pids.exists());

    // A VM that died while nobody held it: attach removes its cgroup too.
    let vm = env.boot("dies").await;
    let pid = vm.stats().unwrap().pid;
    let dead_memory = cgroup_dir(pid, version, "memory");
    drop(vm);
    // SAFETY: signalling a QEMU process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    while !env.live_qemus("dies").is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(dead_memory.exists());
    assert!(matches!(
        env.hv.attach("dies").await,
        Err(ember_vmm::VmmError::NotRunning { .. })
    ));
    assert!(!dead_memory.exists());
    for dir in [&memory, &cpu, &pids] {
        let _ = std::fs::remove_dir(dir.parent().unwrap());
    }
}
