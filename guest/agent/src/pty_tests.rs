//! Terminal execs over a socketpair, playing the host (see `tests`).

use std::time::Duration;

use ember_agent_protocol::{
    ExecRequest, Frame, FrameKind, GuestMessage, HostMessage, TtySize, INITIAL_WINDOW,
};

use crate::tests::Host;

const SHELL: u32 = 9;

fn tty_exec(argv: &[&str], size: TtySize) -> HostMessage {
    HostMessage::Exec(ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        tty: Some(size),
        ..Default::default()
    })
}

fn type_in(host: &mut Host, channel: u32, text: &str) {
    host.send(Frame::new(
        FrameKind::Data,
        channel,
        text.as_bytes().to_vec(),
    ));
}

/// Reads the terminal until `needle` shows up in what was read since the
/// last call; returns that text. Acknowledgements of our input are skipped.
fn read_until(host: &mut Host, channel: u32, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let Some(f) = host.try_recv(Duration::from_secs(20)) else {
            panic!(
                "no {needle:?} within 20 s; so far {:?}",
                String::from_utf8_lossy(&seen)
            );
        };
        assert_eq!(f.channel, channel, "{f:?}");
        match f.kind {
            FrameKind::Data => seen.extend(f.payload),
            FrameKind::Window => {}
            other => panic!(
                "unexpected {other:?} {:?}; so far {:?}",
                f.payload,
                String::from_utf8_lossy(&seen)
            ),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}

/// Output until `Eof`, then the `Exited` that must follow it.
fn read_to_exit(host: &mut Host, channel: u32) -> (String, GuestMessage) {
    let mut seen = Vec::new();
    loop {
        let f = host.recv();
        assert_eq!(f.channel, channel, "{f:?}");
        match f.kind {
            FrameKind::Data => seen.extend(f.payload),
            FrameKind::Window => {}
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let exit = host.recv_control(channel);
    (String::from_utf8_lossy(&seen).into_owned(), exit)
}

fn resize(host: &mut Host, rows: u16, cols: u16) {
    let target = SHELL;
    host.control(
        100 + u32::from(rows),
        &HostMessage::Resize { target, rows, cols },
    );
    // The shell's prompt (Data, Window on its channel) may still be on
    // its way; only the answer on the resize's channel matters here.
    let reply = 100 + u32::from(rows);
    loop {
        let f = host.recv();
        if f.channel == target && matches!(f.kind, FrameKind::Data | FrameKind::Window) {
            continue;
        }
        assert_eq!((f.kind, f.channel), (FrameKind::Control, reply), "{f:?}");
        let answer: GuestMessage = ember_agent_protocol::decode(&f.payload).unwrap();
        assert_eq!(answer, GuestMessage::Ok);
        return;
    }
}

#[test]
fn shell_on_a_terminal_sees_its_size_echoes_input_and_exits() {
    let mut host = Host::connect();
    host.control(SHELL, &tty_exec(&["sh"], TtySize { rows: 24, cols: 80 }));
    assert!(matches!(
        host.recv_control(SHELL),
        GuestMessage::Started { .. }
    ));

    type_in(&mut host, SHELL, "tty\n");
    let out = read_until(&mut host, SHELL, "/dev/pts/");
    assert!(out.contains("tty\r\n"), "typed input is echoed: {out:?}");

    type_in(&mut host, SHELL, "stty size; echo \"T=$TERM\"\n");
    // One read: both lines may arrive in one frame.
    let out = read_until(&mut host, SHELL, "T=xterm-256color");
    assert!(out.contains("24 80\r\n"), "{out:?}");

    resize(&mut host, 50, 132);
    type_in(&mut host, SHELL, "stty size\n");
    read_until(&mut host, SHELL, "50 132\r\n");

    // Its own session, with the terminal as controlling terminal. (The
    // needle cannot match the echo of the typed line, which has a quote.)
    type_in(
        &mut host,
        SHELL,
        "echo \"S $(ps -o sid= $$) P $$ T $(ps -o tty= $$) E\"\n",
    );
    let out = read_until(&mut host, SHELL, " E\r\n");
    // The answer line may start with the prompt.
    let answer = out.lines().find(|l| l.ends_with(" E") && !l.contains('"'));
    let words: Vec<&str> = answer
        .unwrap_or_default()
        .split_whitespace()
        .skip_while(|w| *w != "S")
        .collect();
    assert_eq!(words.len(), 7, "{out:?}");
    assert_eq!((words[0], words[2], words[4]), ("S", "P", "T"));
    assert_eq!(words[1], words[3], "session id is the shell's pid: {out:?}");
    assert!(words[5].starts_with("pts/"), "{out:?}");

    type_in(&mut host, SHELL, "exit 7\n");
    let (_, exit) = read_to_exit(&mut host, SHELL);
    assert_eq!(
        exit,
        GuestMessage::Exited {
            code: Some(7),
            signal: None
        }
    );
    // The channel is finished: a resize now finds nothing.
    host.control(
        200,
        &HostMessage::Resize {
            target: SHELL,
            rows: 1,
            cols: 1,
        },
    );
    assert!(matches!(host.recv_control(200), GuestMessage::Error { .. }));
}

#[test]
fn host_eof_types_end_of_file_and_output_precedes_the_exit() {
    let mut host = Host::connect();
    host.control(
        SHELL,
        &tty_exec(&["sh", "-c", "cat; echo done"], TtySize::default()),
    );
    assert!(matches!(
        host.recv_control(SHELL),
        GuestMessage::Started { .. }
    ));
    type_in(&mut host, SHELL, "line\n");
    host.send(Frame::new(FrameKind::Eof, SHELL, Vec::new()));
    let (out, exit) = read_to_exit(&mut host, SHELL);
    // Echo, cat's copy, then the line after cat saw end of file.
    assert!(out.ends_with("line\r\nline\r\ndone\r\n"), "{out:?}");
    assert_eq!(
        exit,
        GuestMessage::Exited {
            code: Some(0),
            signal: None
        }
    );
}

#[test]
fn terminal_processes_can_be_signalled_and_fail_to_start_cleanly() {
    let mut host = Host::connect();
    host.control(SHELL, &tty_exec(&["sleep", "100"], TtySize::default()));
    assert!(matches!(
        host.recv_control(SHELL),
        GuestMessage::Started { .. }
    ));
    host.control(
        3,
        &HostMessage::Signal {
            target: SHELL,
            signal: libc::SIGTERM,
        },
    );
    assert_eq!(host.recv_control(3), GuestMessage::Ok);
    let (_, exit) = read_to_exit(&mut host, SHELL);
    assert_eq!(
        exit,
        GuestMessage::Exited {
            code: None,
            signal: Some(libc::SIGTERM)
        }
    );

    host.control(4, &tty_exec(&["no-such-program"], TtySize::default()));
    assert!(matches!(host.recv_control(4), GuestMessage::Error { .. }));
    let mut bad_cwd = ExecRequest {
        argv: vec!["/bin/sh".into()],
        cwd: Some("/no/such/dir".into()),
        tty: Some(TtySize::default()),
        ..Default::default()
    };
    host.control(5, &HostMessage::Exec(bad_cwd.clone()));
    assert!(matches!(host.recv_control(5), GuestMessage::Error { .. }));
    bad_cwd.cwd = None;
    bad_cwd.detach = true;
    host.control(6, &HostMessage::Exec(bad_cwd));
    assert!(matches!(host.recv_control(6), GuestMessage::Error { .. }));
}

#[test]
fn a_flood_of_terminal_output_waits_for_credit() {
    const TOTAL: usize = 50 << 20;
    let mut host = Host::connect();
    let cmd = format!("head -c {TOTAL} /dev/zero");
    host.control(SHELL, &tty_exec(&["sh", "-c", &cmd], TtySize::default()));
    assert!(matches!(
        host.recv_control(SHELL),
        GuestMessage::Started { .. }
    ));

    // Without grants the agent sends exactly the initial window, then waits
    // (the rest stays in the process, blocked on a full terminal).
    let mut received = 0;
    while let Some(f) = host.try_recv(Duration::from_millis(1500)) {
        assert_eq!((f.kind, f.channel), (FrameKind::Data, SHELL), "{f:?}");
        received += f.payload.len();
    }
    assert_eq!(received, INITIAL_WINDOW as usize);

    host.send(Frame::window(SHELL, INITIAL_WINDOW));
    loop {
        let f = host.recv();
        match f.kind {
            FrameKind::Data => {
                received += f.payload.len();
                host.send(Frame::window(SHELL, f.payload.len() as u32));
            }
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, TOTAL);
    assert_eq!(
        host.recv_control(SHELL),
        GuestMessage::Exited {
            code: Some(0),
            signal: None
        }
    );
}

#[test]
fn a_background_job_that_keeps_writing_does_not_hold_the_exit_back() {
    let mut host = Host::connect();
    // `yes` ignores the hangup but dies of EIO once the terminal is gone.
    let script = "(trap '' HUP; exec yes) & sleep 0.2; exit 5";
    host.control(SHELL, &tty_exec(&["sh", "-c", script], TtySize::default()));
    assert!(matches!(
        host.recv_control(SHELL),
        GuestMessage::Started { .. }
    ));
    let started = std::time::Instant::now();
    loop {
        let f = host.recv();
        match f.kind {
            FrameKind::Data => host.send(Frame::window(SHELL, f.payload.len() as u32)),
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        host.recv_control(SHELL),
        GuestMessage::Exited {
            code: Some(5),
            signal: None
        }
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
