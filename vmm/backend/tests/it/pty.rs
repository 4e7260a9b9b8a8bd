//! An interactive shell on a terminal in a booted guest, through
//! `AgentClient::exec_pty`: what `ember shell` does.

use crate::common;

use std::time::Duration;

use ember_vmm::agent::{ExecRequest, PtyExit, TtySize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until `needle` appears in what was read since the last call.
async fn read_until(io: &mut (impl AsyncRead + Unpin), needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} in the terminal output: {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "EOF before {needle:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_computes_resizes_and_exits_with_its_code() {
    let env = common::env().await;
    let vm = env.boot("pty").await;
    let session = vm
        .agent()
        .exec_pty(ExecRequest {
            argv: vec!["/bin/sh".into(), "-i".into()],
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(session.pid() > 1);
    let (mut io, control) = session.into_parts();

    // The echo of the typed line shows `$((6*7))`, never `42`.
    io.write_all(b"echo $((6*7))\n").await.unwrap();
    let out = read_until(&mut io, "42\r\n").await;
    assert!(out.contains("echo $((6*7))"), "input is echoed: {out:?}");

    io.write_all(b"stty size\n").await.unwrap();
    read_until(&mut io, "24 80\r\n").await;
    control.resize(40, 100).await.unwrap();
    io.write_all(b"stty size\n").await.unwrap();
    read_until(&mut io, "40 100\r\n").await;

    io.write_all(b"exit 3\n").await.unwrap();
    // The rest of the output, then EOF, then the exit status.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut rest))
        .await
        .expect("terminal EOF")
        .unwrap();
    let exit = tokio::time::timeout(PATIENCE, control.wait())
        .await
        .expect("exit status")
        .unwrap();
    assert_eq!(
        exit,
        PtyExit {
            code: Some(3),
            signal: None
        }
    );
    // The terminal is gone with its process.
    assert!(control.resize(10, 10).await.is_err());
    assert_eq!(common::sh(&*vm, "echo still here").await, "still here\n");
}
