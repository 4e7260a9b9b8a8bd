//! Snapshot a running guest, restore it in new QEMU processes, and check
//! that memory, processes and disk survived while clones stay independent.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_vmm::{Hypervisor, RestoreMemory, RestoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts in tmpfs (guest memory only); each value lands by rename, so a
/// reader never sees a half-written file.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done";

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits for a freshly started counter to reach `at_least` (the file does
/// not exist until the loop's first round).
async fn wait_for_counter(vm: &dyn ember_vmm::Vm, at_least: u64) {
    let script = format!(
        "for i in $(seq 100); do [ \"$(cat /tmp/counter 2>/dev/null || echo 0)\" -ge {at_least} ] && exit 0; sleep 0.1; done; exit 1"
    );
    common::sh(vm, &script).await;
}

/// Starts the counter loop in the background; returns its pid.
async fn start_counter(vm: &dyn ember_vmm::Vm) -> u32 {
    vm.agent()
        .spawn_detached(ember_vmm::agent::ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), COUNTER.into()],
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn counter(vm: &dyn ember_vmm::Vm) -> u64 {
    let s = common::sh(vm, "cat /tmp/counter").await;
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("counter value {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_vm_keeps_running_process_memory_and_disk() {
    let env = common::env().await;
    let vm = env.boot("origin").await;
    let pid = start_counter(&*vm).await;
    common::sh(&*vm, "echo on-disk > /root/marker; sync").await;
    wait_for_counter(&*vm, 3).await;
    let snap = env.state.path().join("snap");
    let info = vm.snapshot(&snap).await.unwrap();
    // /tmp is a tmpfs: the counter lives only in guest memory.
    let at_snapshot = {
        vm.resume().await.unwrap();
        let v = counter(&*vm).await;
        vm.stop().await.unwrap();
        v
    };
    assert!(
        info.memory_bytes > 0 && info.memory_bytes < 256 << 20,
        "{info:?}"
    );
    assert!(
        env.live_qemus("origin").is_empty(),
        "origin QEMU still running"
    );

    let restored = env
        .hv
        .restore("restored", &snap, RestoreOptions::default())
        .await
        .unwrap();
    let first = counter(&*restored).await;
    assert!(
        first >= 3 && first <= at_snapshot + 1,
        "counter restarted or jumped: {first} (snapshot ~{at_snapshot})"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let later = counter(&*restored).await;
    assert!(
        later > first,
        "counter stopped after restore: {first} then {later}"
    );
    common::sh(&*restored, &format!("kill -0 {pid}")).await;
    assert_eq!(
        common::sh(&*restored, "cat /root/marker").await,
        "on-disk\n"
    );

    // A restored VM (RAM mapped privately) snapshots again, RAM streamed
    // into the device-state file, and that snapshot restores too.
    common::sh(&*restored, "echo second > /root/marker2").await;
    let snap2 = env.state.path().join("snap2");
    restored.snapshot(&snap2).await.unwrap();
    restored.resume().await.unwrap();
    let at_second = counter(&*restored).await;
    restored.stop().await.unwrap();
    let again = env
        .hv
        .restore("restored-again", &snap2, RestoreOptions::default())
        .await
        .unwrap();
    let value = counter(&*again).await;
    assert!(
        value >= later && value <= at_second + 1,
        "second-generation counter {value} (snapshot ~{at_second})"
    );
    common::sh(&*again, &format!("kill -0 {pid}")).await;
    assert_eq!(
        common::sh(&*again, "cat /root/marker /root/marker2").await,
        "on-disk\nsecond\n"
    );
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_one_snapshot_diverge() {
    let env = common::env().await;
    let vm = env.boot("parent").await;
    common::sh(&*vm, "echo shared > /root/base").await;
    let snap = env.state.path().join("snap");
    vm.snapshot(&snap).await.unwrap();
    vm.stop().await.unwrap();
    // Let the snapshot's clock fall behind, so a restore must step it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let a = env
        .hv
        .restore("clone-a", &snap, RestoreOptions::default())
        .await
        .unwrap();
    let b = env
        .hv
        .restore("clone-b", &snap, RestoreOptions::default())
        .await
        .unwrap();

    common::sh(&*a, "echo only-a > /root/mine; echo a-mem > /tmp/mem").await;
    let b_sees = common::sh(&*b, "cat /root/mine /tmp/mem 2>/dev/null; cat /root/base").await;
    assert_eq!(b_sees, "shared\n", "clone b saw clone a's writes");

    let rand_a = common::sh(&*a, "head -c 32 /dev/urandom | od -An -tx1").await;
    let rand_b = common::sh(&*b, "head -c 32 /dev/urandom | od -An -tx1").await;
    assert_ne!(rand_a, rand_b, "clones produced the same random bytes");

    for vm in [&a, &b] {
        let before = unix_ms();
        let guest = vm.agent().health().await.unwrap().realtime_unix_ms as i64;
        let after = unix_ms();
        // The guest read its clock somewhere between `before` and `after`.
        let off = if guest < before {
            before - guest
        } else {
            (guest - after).max(0)
        };
        assert!(off <= 1000, "guest clock off by {off} ms after restore");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        env.vms_dir().read_dir().unwrap().next().is_none(),
        "runtime dirs left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_tcp_server_answers_through_a_stream_opened_after_restore() {
    let env = common::env().await;
    let vm = env.boot("web").await;
    common::sh(
        &*vm,
        "mkdir -p /tmp/www && echo 'hello over the agent' > /tmp/www/index.html",
    )
    .await;
    vm.agent()
        .spawn_detached(ember_vmm::agent::ExecRequest {
            argv: vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "127.0.0.1:8080".into(),
                "-h".into(),
                "/tmp/www".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    // Wait until it listens.
    // Port 8080 is 1F90; state 0A is LISTEN.
    common::sh(&*vm, "for i in $(seq 100); do grep -q ':1F90 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done; exit 1").await;
    let snap = env.state.path().join("snap");
    vm.snapshot(&snap).await.unwrap();
    vm.stop().await.unwrap();

    let restored = env
        .hv
        .restore("web2", &snap, RestoreOptions::default())
        .await
        .unwrap();
    let mut stream = restored.agent().connect(8080).await.unwrap();
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("hello over the agent\n"), "{response}");

    // Many streams at once share the one agent channel.
    let fetches: Vec<_> = (0..8)
        .map(|i| {
            let agent = restored.agent().clone();
            tokio::spawn(async move {
                let mut s = agent.connect(8080).await.unwrap();
                let req = format!("GET /index.html?{i} HTTP/1.0\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                let mut body = Vec::new();
                s.read_to_end(&mut body).await.unwrap();
                String::from_utf8_lossy(&body).into_owned()
            })
        })
        .collect();
    for fetch in fetches {
        let response = fetch.await.unwrap();
        assert!(response.ends_with("hello over the agent\n"), "{response}");
    }

    // A closed port is refused, and the channel keeps working.
    assert!(restored.agent().connect(8081).await.is_err());
    assert_eq!(common::sh(&*restored, "echo ok").await, "ok\n");
    restored.stop().await.unwrap();
}

/// Suspend moves a VM's files into a snapshot and ends it; resuming with
/// `Consume` runs on those same files. A `Copy` restore leaves its source
/// snapshot pristine and can itself be suspended without streaming RAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_in_place_keep_state() {
    let env = common::env().await;
    let vm = env.boot("image").await;
    let pid = start_counter(&*vm).await;
    wait_for_counter(&*vm, 2).await;
    let image = env.state.path().join("image");
    vm.snapshot(&image).await.unwrap();
    vm.stop().await.unwrap();

    // A VM of its own from the image: RAM copied, so it suspends cheaply.
    let run = env
        .hv
        .restore("run", &image, RestoreOptions::memory(RestoreMemory::Copy))
        .await
        .unwrap();
    common::sh(&*run, "echo mine > /root/owned").await;
    let mut expected_min = counter(&*run).await;
    let mut name = "run".to_string();
    let mut current = run;
    for cycle in 0..2 {
        let saved = env.state.path().join(format!("suspended{cycle}"));
        let info = current.suspend(&saved).await.unwrap();
        assert!(
            info.memory_bytes > 0,
            "RAM was streamed, not moved: {info:?}"
        );
        assert!(
            !env.hv.vm_dir(&name).exists(),
            "runtime dir survived suspend"
        );
        assert!(env.live_qemus(&name).is_empty(), "QEMU survived suspend");

        name = format!("resumed{cycle}");
        current = env
            .hv
            .restore(
                &name,
                &saved,
                RestoreOptions::memory(RestoreMemory::Consume),
            )
            .await
            .unwrap();
        assert!(!saved.exists(), "a consumed snapshot must be gone");
        let value = counter(&*current).await;
        assert!(
            value >= expected_min,
            "counter went back: {value} < {expected_min}"
        );
        expected_min = value;
        common::sh(&*current, &format!("kill -0 {pid}")).await;
        assert_eq!(common::sh(&*current, "cat /root/owned").await, "mine\n");
    }
    current.stop().await.unwrap();

    // The image snapshot was never written to: a clone starts where it was.
    let clone = env
        .hv
        .restore("clone", &image, RestoreOptions::default())
        .await
        .unwrap();
    let out = clone.agent().sh("cat /root/owned").await.unwrap();
    assert!(!out.success(), "the image saw a later VM's file");
    clone.stop().await.unwrap();
}
