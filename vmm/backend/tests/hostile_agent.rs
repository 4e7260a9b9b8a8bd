//! A guest whose agent attacks the host (`make hostile-agent`): each
//! attack ends that VM's agent session with a reason naming it, the host
//! process's memory stays bounded, and a normal VM beside it keeps
//! answering.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use ember_vmm::agent::{AgentError, SessionEnd};
use ember_vmm::Vm;

/// Generous: the point is "not unbounded", not a memory budget.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Arms the hostile agent with `attack` and fires it: the next connect is
/// answered, then attacked. The stream is held but never read, as a slow
/// client would.
async fn attack(vm: &dyn Vm, attack: &str) -> SessionEnd {
    let agent = vm.agent();
    agent
        .write_file("/ember-hostile", format!("{attack}\n").as_bytes(), 0o644)
        .await
        .expect("write the trigger");
    agent.notify_restored().await.expect("arm");
    let _stream = agent.connect(8080).await.expect("the attack's connect");
    tokio::time::timeout(Duration::from_secs(120), agent.wait_ended())
        .await
        .unwrap_or_else(|_| panic!("{attack}: the session did not end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_ends_its_session_and_spares_the_host() {
    let normal_env = common::env().await;
    let hostile_env = common::env_with_agent(common::hostile_agent_binary(), |_| {}).await;
    let normal = normal_env.boot("normal").await;
    assert_eq!(common::sh(normal.as_ref(), "echo up").await, "up\n");

    // What each attack must be called when the session ends.
    let attacks = [
        ("flood", "beyond"),
        ("garbage", "bad frame"),
        ("oversized", "oversized"),
        ("channels", "never opened"),
    ];
    for (name, reason) in attacks {
        let vm = hostile_env.boot(&format!("hostile-{name}")).await;
        // Behaves until triggered.
        assert_eq!(common::sh(vm.as_ref(), "echo calm").await, "calm\n");
        let before = rss_kib();
        let end = attack(vm.as_ref(), name).await;
        let grown = rss_kib().saturating_sub(before);

        let SessionEnd::Violation(violation) = &end else {
            panic!("{name}: the session ended without a violation: {end:?}");
        };
        assert!(
            violation.to_string().contains(reason),
            "{name}: the reason does not name the attack: {violation}"
        );
        match vm.agent().health().await {
            Err(AgentError::Violation(v)) => assert_eq!(&v, violation),
            other => panic!("{name}: a request after the end: {other:?}"),
        }
        assert!(
            grown < RSS_GROWTH_BOUND_KIB,
            "{name}: the host grew by {grown} KiB"
        );
        // The neighbour never noticed.
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            common::sh(normal.as_ref(), "echo still"),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the normal VM stopped answering"));
        assert_eq!(answer, "still\n");
        vm.stop().await.expect("stop the hostile VM");
    }
    normal.stop().await.expect("stop");
}
