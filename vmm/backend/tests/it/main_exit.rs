//! The guest's main process ending, seen from the host: a real guest, its
//! agent as PID 1 reaping the detached app.

use crate::common;

use std::time::Duration;

use ember_agent_protocol::ErrorKind;
use ember_vmm::agent::{AgentError, ExecRequest};

fn main_process(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        main: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_returns_when_the_main_process_exits_or_is_killed() {
    let env = common::env().await;
    let vm = env.boot("main-exit").await;
    let agent = vm.agent();

    match agent.wait_main_exit().await {
        Err(AgentError::Guest {
            kind: ErrorKind::NotFound,
            ..
        }) => {}
        other => panic!("a guest without a main process answered {other:?}"),
    }
    common::sh(&*vm, "mkfifo /tmp/go").await;
    agent
        .spawn_detached(main_process("read code < /tmp/go; exit $code"))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_main_exit().await }
    });
    // Still running: nothing may answer the wait yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered while the app still ran");
    common::sh(&*vm, "echo 3 > /tmp/go").await;
    let status = waiting.await.unwrap().unwrap();
    assert_eq!((status.code, status.signal), (Some(3), None));

    // The guest has its one main process.
    let second = agent.spawn_detached(main_process("sleep 60")).await;
    assert!(
        matches!(
            second,
            Err(AgentError::Guest {
                kind: ErrorKind::InvalidRequest,
                ..
            })
        ),
        "{second:?}"
    );
    vm.stop().await.unwrap();

    // A death by signal is reported as one.
    let vm = env.boot("main-killed").await;
    let pid = vm
        .agent()
        .spawn_detached(main_process("exec sleep 600"))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let agent = vm.agent().clone();
        async move { agent.wait_main_exit().await }
    });
    common::sh(&*vm, &format!("kill -KILL {pid}")).await;
    let status = waiting.await.unwrap().unwrap();
    assert_eq!((status.code, status.signal), (None, Some(9)));
    assert_eq!(status.shell_code(), 137);
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_main_process_that_ended_before_the_wait_is_reported_at_once() {
    let env = common::env().await;
    let vm = env.boot("main-exited").await;
    let agent = vm.agent();
    let pid = agent.spawn_detached(main_process("exit 5")).await.unwrap();
    // Gone (reaped by PID 1) before anyone asks.
    common::sh(
        &*vm,
        &format!("while kill -0 {pid} 2>/dev/null; do sleep 0.1; done"),
    )
    .await;
    for _ in 0..2 {
        let status = tokio::time::timeout(Duration::from_secs(30), agent.wait_main_exit())
            .await
            .expect("an ended main process is reported at once")
            .unwrap();
        assert_eq!((status.code, status.signal), (Some(5), None));
    }
    // No zombie left behind: the reaper collected it.
    let zombies = common::sh(
        &*vm,
        "for f in /proc/[0-9]*/status; do grep -q '^State:.*Z' $f && echo $f; done; true",
    )
    .await;
    assert_eq!(zombies, "");

    // A VM being stopped ends a pending wait as a disconnection, not an
    // exit. (A new guest: this one's main process has ended.)
    let vm = env.boot("main-stopped").await;
    vm.agent()
        .spawn_detached(main_process("exec sleep 600"))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let agent = vm.agent().clone();
        async move { agent.wait_main_exit().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    vm.stop().await.unwrap();
    match waiting.await.unwrap() {
        Err(AgentError::Disconnected) => {}
        other => panic!("a wait on a stopped VM answered {other:?}"),
    }
}
