//! A cold-booted guest runs commands and moves files through the agent.

use crate::common;

use ember_vmm::agent::{AgentError, ExecRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_output_exit_codes_and_stderr() {
    let env = common::env().await;
    let vm = env.boot("basics").await;
    let agent = vm.agent();

    // QEMU runs under its seccomp sandbox (filter mode 2).
    let pid = vm.stats().unwrap().pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "QEMU is not sandboxed:\n{status}"
    );

    let out = agent
        .exec(ExecRequest {
            argv: vec!["echo".into(), "hello from the guest".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "hello from the guest\n");
    assert_eq!(out.code, Some(0));

    let out = agent.sh("echo out; echo oops >&2; exit 3").await.unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "oops\n");

    let out = agent.sh("kill -9 $$").await.unwrap();
    assert_eq!((out.code, out.signal), (None, Some(9)));

    // Environment, working directory and user are applied.
    let out = agent
        .exec(ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo $GREETING; pwd; id -u".into(),
            ],
            env: vec![
                ("GREETING".into(), "hi".into()),
                ("PATH".into(), "/bin:/usr/bin".into()),
            ],
            cwd: Some("/tmp".into()),
            uid: Some(65534),
            gid: Some(65534),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "hi\n/tmp\n65534\n");

    // Orphans are re-parented to the agent (PID 1), which must reap them.
    common::sh(&*vm, "sleep 0.2 & exit 0").await;
    let zombies = common::sh(
        &*vm,
        "sleep 1; for f in /proc/[0-9]*/status; do grep -q '^State:.*Z' $f && echo $f; done; true",
    )
    .await;
    assert_eq!(zombies, "", "zombies left behind");

    let err = agent
        .exec(ExecRequest {
            argv: vec!["/no/such/program".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Guest { .. }), "{err:?}");

    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_file_round_trips_byte_exact() {
    let env = common::env().await;
    let vm = env.boot("files").await;
    let agent = vm.agent();

    let mut data = vec![0u8; 10 << 20];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let written = agent.write_file("/root/blob", &data, 0o600).await.unwrap();
    assert_eq!(written, data.len() as u64);
    assert_eq!(
        common::sh(&*vm, "wc -c < /root/blob").await.trim(),
        "10485760"
    );
    assert_eq!(
        common::sh(&*vm, "stat -c %a /root/blob").await.trim(),
        "600"
    );
    let back = agent.read_file("/root/blob", 16 << 20).await.unwrap();
    assert!(back == data, "file changed on the round trip");

    // Limits and missing files are errors, not truncation.
    assert!(matches!(
        agent.read_file("/root/blob", 1 << 20).await,
        Err(AgentError::Guest { .. }) | Err(AgentError::TooLarge { .. })
    ));
    assert!(agent.read_file("/root/missing", 1024).await.is_err());
    assert!(agent
        .write_file("/no/such/dir/f", b"x", 0o644)
        .await
        .is_err());
    // The channel still works after errors.
    assert_eq!(common::sh(&*vm, "echo still here").await, "still here\n");

    vm.stop().await.unwrap();
}
