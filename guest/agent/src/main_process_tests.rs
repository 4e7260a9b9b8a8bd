//! The main process's exit, as a host sees it over the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use ember_agent_protocol::{ErrorKind, ExecRequest, FrameKind, GuestMessage, HostMessage};

use crate::tests::{temp_dir, Host};

fn main_exec(script: &str) -> HostMessage {
    HostMessage::Exec(ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        detach: true,
        main: true,
        ..Default::default()
    })
}

fn sh(host: &mut Host, channel: u32, script: &str) {
    host.control(
        channel,
        &HostMessage::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }),
    );
    loop {
        let f = host.recv();
        assert_eq!(f.channel, channel, "{f:?}");
        if f.kind != FrameKind::Control {
            continue;
        }
        match ember_agent_protocol::decode(&f.payload).unwrap() {
            GuestMessage::Exited { code, .. } => {
                assert_eq!(code, Some(0), "`{script}` failed");
                return;
            }
            GuestMessage::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Starts `script` in the background: it replies only `Started`, so the
/// frames that follow are the ones a test waits for.
fn trigger(host: &mut Host, channel: u32, script: &str) {
    host.control(
        channel,
        &HostMessage::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            detach: true,
            ..Default::default()
        }),
    );
}

/// The next `n` control messages by channel, in whatever order they come.
fn recv_controls(host: &mut Host, n: usize) -> BTreeMap<u32, GuestMessage> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        let f = host.recv();
        assert_eq!(f.kind, FrameKind::Control, "{f:?}");
        let msg = ember_agent_protocol::decode(&f.payload).unwrap();
        assert!(
            got.insert(f.channel, msg).is_none(),
            "two answers on {}",
            f.channel
        );
    }
    got
}

fn started(host: &mut Host, channel: u32) -> u32 {
    match host.recv_control(channel) {
        GuestMessage::Started { pid } => pid,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn error_kind(msg: GuestMessage) -> ErrorKind {
    match msg {
        GuestMessage::Error { kind, .. } => kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

const EXITED_3: GuestMessage = GuestMessage::Exited {
    code: Some(3),
    signal: None,
};

#[test]
fn a_waiter_learns_the_exit_code_and_later_waits_get_it_at_once() {
    let mut host = Host::connect();
    host.control(1, &HostMessage::WaitMainExit);
    assert_eq!(error_kind(host.recv_control(1)), ErrorKind::NotFound);

    let fifo = temp_dir().join("go");
    sh(&mut host, 2, &format!("mkfifo {}", fifo.display()));
    host.control(
        3,
        &main_exec(&format!("read c < {}; exit $c", fifo.display())),
    );
    started(&mut host, 3);
    host.control(4, &HostMessage::WaitMainExit);
    assert!(
        host.try_recv(Duration::from_millis(300)).is_none(),
        "answered before the main process ended"
    );
    trigger(&mut host, 5, &format!("echo 3 > {}", fifo.display()));
    assert_eq!(recv_controls(&mut host, 2)[&4], EXITED_3);
    host.control(6, &HostMessage::WaitMainExit);
    assert_eq!(host.recv_control(6), EXITED_3);

    // One main process per guest, even once it has ended.
    host.control(7, &main_exec("exit 0"));
    assert_eq!(error_kind(host.recv_control(7)), ErrorKind::InvalidRequest);
}

#[test]
fn a_main_process_must_be_detached_and_have_no_terminal() {
    let mut host = Host::connect();
    let mut attached = ExecRequest {
        argv: vec!["true".into()],
        main: true,
        ..Default::default()
    };
    host.control(1, &HostMessage::Exec(attached.clone()));
    assert_eq!(error_kind(host.recv_control(1)), ErrorKind::InvalidRequest);
    attached.tty = Some(Default::default());
    attached.detach = true;
    host.control(2, &HostMessage::Exec(attached));
    assert_eq!(error_kind(host.recv_control(2)), ErrorKind::InvalidRequest);
    // Neither counted as the main process.
    host.control(3, &HostMessage::WaitMainExit);
    assert_eq!(error_kind(host.recv_control(3)), ErrorKind::NotFound);
}

#[test]
fn a_death_by_signal_reaches_the_new_session_only() {
    let mut host = Host::connect();
    host.control(1, &main_exec("exec sleep 30"));
    let pid = started(&mut host, 1);
    host.control(2, &HostMessage::WaitMainExit);
    // A reconnect (restore, re-attach): the old session's wait is dead.
    host.hello(8);
    host.control(2, &HostMessage::WaitMainExit);
    trigger(&mut host, 3, &format!("kill -TERM {pid}"));
    assert_eq!(
        recv_controls(&mut host, 2)[&2],
        GuestMessage::Exited {
            code: None,
            signal: Some(15)
        }
    );
    assert!(host.try_recv(Duration::from_millis(300)).is_none());
}

#[test]
fn waits_are_bounded_the_oldest_is_refused() {
    let mut host = Host::connect();
    let fifo = temp_dir().join("go");
    sh(&mut host, 1, &format!("mkfifo {}", fifo.display()));
    host.control(
        2,
        &main_exec(&format!("read c < {}; exit $c", fifo.display())),
    );
    started(&mut host, 2);
    for channel in 10..16 {
        host.control(channel, &HostMessage::WaitMainExit);
    }
    assert_eq!(error_kind(host.recv_control(10)), ErrorKind::InvalidRequest);
    assert_eq!(error_kind(host.recv_control(11)), ErrorKind::InvalidRequest);
    trigger(&mut host, 3, &format!("echo 3 > {}", fifo.display()));
    let answered = recv_controls(&mut host, 5);
    assert!(matches!(answered[&3], GuestMessage::Started { .. }));
    for channel in 12..16 {
        assert_eq!(answered[&channel], EXITED_3, "wait on channel {channel}");
    }
}
