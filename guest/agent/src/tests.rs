//! Drives the serving core over a socketpair, playing the host.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ember_agent_protocol::{
    self as proto, ErrorKind, ExecRequest, Frame, FrameDecoder, FrameKind, GuestMessage,
    HostMessage, INITIAL_WINDOW, MAX_PAYLOAD, PROTOCOL_VERSION,
};

use crate::channel::{self, Wire};
use crate::session::{Agent, Config};

const TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct Host {
    sock: UnixStream,
    decoder: FrameDecoder,
    agent: Option<thread::JoinHandle<()>>,
}

impl Host {
    /// Starts an agent on one end of a socketpair, before any Hello.
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`Host::start`], handing the agent to `prepare` before it serves.
    fn start_with(prepare: impl FnOnce(&Agent) + Send + 'static) -> Self {
        let (host, guest) = UnixStream::pair().unwrap();
        let writer = guest.try_clone().unwrap();
        let agent = thread::spawn(move || {
            let config = Config {
                reaper_running: false,
            };
            let mut agent = Agent::new(Wire::new(Box::new(writer)), config);
            prepare(&agent);
            channel::serve(&mut agent, guest, false).unwrap();
        });
        host.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Host {
            sock: host,
            decoder: FrameDecoder::new(),
            agent: Some(agent),
        }
    }

    /// Says Hello to a fresh agent.
    pub(crate) fn connect() -> Self {
        let mut h = Self::start();
        h.hello(7);
        h
    }

    /// Says Hello to a fresh agent whose metadata listener is on a free
    /// loopback port (the guest's address does not exist on a test host).
    pub(crate) fn connect_with_metadata() -> (Self, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut h = Self::start_with(move |agent| {
            crate::metadata::spawn_listener(listener, agent.metadata_accepts()).unwrap();
        });
        h.hello(7);
        (h, addr)
    }

    pub(crate) fn hello(&mut self, session: u64) {
        self.control(
            0,
            &HostMessage::Hello {
                session,
                protocol: PROTOCOL_VERSION,
            },
        );
        match self.recv_control(0) {
            GuestMessage::HelloAck {
                session: s,
                protocol,
                ..
            } => {
                assert_eq!((s, protocol), (session, PROTOCOL_VERSION));
            }
            other => panic!("expected HelloAck, got {other:?}"),
        }
    }

    pub(crate) fn send(&mut self, frame: Frame) {
        self.sock.write_all(&frame.encode().unwrap()).unwrap();
    }

    pub(crate) fn control(&mut self, channel: u32, msg: &HostMessage) {
        self.send(Frame::new(
            FrameKind::Control,
            channel,
            proto::encode(msg).unwrap(),
        ));
    }

    /// The next frame, or `None` if nothing arrives within `wait`.
    pub(crate) fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Some(f);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("host read: {e}"),
            }
        }
    }

    pub(crate) fn recv(&mut self) -> Frame {
        self.try_recv(TIMEOUT)
            .expect("timed out waiting for a frame")
    }

    pub(crate) fn recv_control(&mut self, channel: u32) -> GuestMessage {
        let f = self.recv();
        assert_eq!((f.kind, f.channel), (FrameKind::Control, channel), "{f:?}");
        proto::decode(&f.payload).unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(a) = self.agent.take() {
            let _ = a.join();
        }
    }
}

pub(crate) fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ember-agent-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn exec(argv: &[&str]) -> HostMessage {
    HostMessage::Exec(ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

#[test]
fn exec_reports_output_then_eof_then_exit() {
    let mut host = Host::connect();
    host.control(3, &exec(&["sh", "-c", "echo hi; echo err >&2; exit 3"]));
    assert!(matches!(host.recv_control(3), GuestMessage::Started { .. }));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let f = host.recv();
        assert_eq!(f.channel, 3);
        match f.kind {
            FrameKind::Data => out.extend(f.payload),
            FrameKind::Stderr => err.extend(f.payload),
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out, b"hi\n");
    assert_eq!(err, b"err\n");
    assert_eq!(
        host.recv_control(3),
        GuestMessage::Exited {
            code: Some(3),
            signal: None
        }
    );
}

#[test]
fn exec_feeds_stdin_and_uses_the_given_environment() {
    let mut host = Host::connect();
    host.control(
        5,
        &HostMessage::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "cat; echo \"$FOO\"".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("FOO".into(), "bar".into()),
            ],
            stdin: b"input\n".to_vec(),
            ..Default::default()
        }),
    );
    assert!(matches!(host.recv_control(5), GuestMessage::Started { .. }));
    let mut out = Vec::new();
    loop {
        let f = host.recv();
        match f.kind {
            FrameKind::Data => out.extend(f.payload),
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out, b"input\nbar\n");
    assert!(matches!(
        host.recv_control(5),
        GuestMessage::Exited { code: Some(0), .. }
    ));
}

#[test]
fn exec_errors_and_signals() {
    let mut host = Host::connect();
    host.control(1, &exec(&["/nonexistent/program"]));
    assert!(matches!(
        host.recv_control(1),
        GuestMessage::Error {
            kind: ErrorKind::NotFound,
            ..
        }
    ));
    host.control(2, &exec(&[]));
    assert!(matches!(
        host.recv_control(2),
        GuestMessage::Error {
            kind: ErrorKind::InvalidRequest,
            ..
        }
    ));
    host.control(3, &exec(&["sleep", "30"]));
    assert!(matches!(host.recv_control(3), GuestMessage::Started { .. }));
    host.control(
        4,
        &HostMessage::Signal {
            target: 3,
            signal: libc::SIGTERM,
        },
    );
    assert_eq!(host.recv_control(4), GuestMessage::Ok);
    assert_eq!(host.recv().kind, FrameKind::Eof);
    assert_eq!(
        host.recv_control(3),
        GuestMessage::Exited {
            code: None,
            signal: Some(libc::SIGTERM)
        }
    );
    host.control(
        5,
        &HostMessage::Signal {
            target: 3,
            signal: libc::SIGTERM,
        },
    );
    assert!(matches!(
        host.recv_control(5),
        GuestMessage::Error {
            kind: ErrorKind::NotFound,
            ..
        }
    ));
}

#[test]
fn ignores_frames_before_hello_and_rejects_garbage() {
    let mut host = Host::start();
    host.control(9, &HostMessage::Health);
    host.sock.write_all(b"line noise EMB1 more noise").unwrap();
    host.hello(1);
    host.send(Frame::new(FrameKind::Control, 2, b"{not json".to_vec()));
    assert!(matches!(
        host.recv_control(2),
        GuestMessage::Error {
            kind: ErrorKind::InvalidRequest,
            ..
        }
    ));
    host.control(3, &HostMessage::Health);
    assert!(matches!(host.recv_control(3), GuestMessage::Health(_)));
    // Repeated Hello for the same session is just acknowledged again.
    host.hello(1);
    host.hello(2);
}

#[test]
fn write_then_read_file_round_trip() {
    let dir = temp_dir();
    let path = dir.join("blob");
    let path_str = path.to_str().unwrap().to_string();
    let content: Vec<u8> = (0..(MAX_PAYLOAD + 1000)).map(|i| (i % 251) as u8).collect();
    let mut host = Host::connect();

    host.control(
        4,
        &HostMessage::WriteFile {
            path: path_str.clone(),
            mode: 0o640,
        },
    );
    for chunk in content.chunks(100_000) {
        host.send(Frame::new(FrameKind::Data, 4, chunk.to_vec()));
    }
    host.send(Frame::new(FrameKind::Eof, 4, Vec::new()));
    assert_eq!(
        host.recv_control(4),
        GuestMessage::FileWritten {
            bytes: content.len() as u64
        }
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o640
    );

    host.control(
        5,
        &HostMessage::ReadFile {
            path: path_str.clone(),
            max_bytes: 10 << 20,
        },
    );
    assert_eq!(
        host.recv_control(5),
        GuestMessage::FileStart {
            size: content.len() as u64
        }
    );
    let mut got = Vec::new();
    loop {
        let f = host.recv();
        match f.kind {
            FrameKind::Data => {
                assert!(f.payload.len() <= MAX_PAYLOAD);
                got.extend(f.payload);
            }
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, content);

    let expect_err = |host: &mut Host, ch: u32, msg: HostMessage, kind: ErrorKind| {
        host.control(ch, &msg);
        match host.recv_control(ch) {
            GuestMessage::Error { kind: k, .. } => assert_eq!(k, kind),
            other => panic!("expected {kind:?}, got {other:?}"),
        }
    };
    let read = |p: &str, max| HostMessage::ReadFile {
        path: p.to_string(),
        max_bytes: max,
    };
    expect_err(&mut host, 6, read(&path_str, 10), ErrorKind::TooLarge);
    expect_err(
        &mut host,
        7,
        read(dir.to_str().unwrap(), 10),
        ErrorKind::InvalidRequest,
    );
    let missing = dir.join("missing");
    expect_err(
        &mut host,
        8,
        read(missing.to_str().unwrap(), 10),
        ErrorKind::NotFound,
    );
    let write = |p: &str| HostMessage::WriteFile {
        path: p.to_string(),
        mode: 0o644,
    };
    expect_err(&mut host, 9, write("relative"), ErrorKind::InvalidRequest);
    let orphan = dir.join("no/such/dir/file");
    expect_err(
        &mut host,
        10,
        write(orphan.to_str().unwrap()),
        ErrorKind::NotFound,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Echo server with the guest's outbound data gated by window credit.
#[test]
fn connect_echoes_under_window_flow_control() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
        }
        // Dropping the socket closes it: the guest must answer with Eof.
    });
    let mut host = Host::connect();
    let ch = 11;
    host.control(ch, &HostMessage::Connect { port });
    assert_eq!(host.recv_control(ch), GuestMessage::Connected);

    // More than one window's worth in each direction.
    let total = INITIAL_WINDOW as usize + INITIAL_WINDOW as usize / 2;
    let payload: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut echoed = Vec::new();
    let mut granted = INITIAL_WINDOW as usize;
    let mut stalled_checked = false;
    let mut eof_sent = false;
    loop {
        // Send what our own window allows (acked by the guest's Windows).
        while sent < total && sent - acked < INITIAL_WINDOW as usize {
            let n = (total - sent)
                .min(MAX_PAYLOAD)
                .min(INITIAL_WINDOW as usize - (sent - acked));
            let frame = Frame::new(FrameKind::Data, ch, payload[sent..sent + n].to_vec());
            host.send(frame);
            sent += n;
        }
        if sent == total && acked == total && !eof_sent {
            host.send(Frame::new(FrameKind::Eof, ch, Vec::new()));
            eof_sent = true;
        }
        let frame = match host.try_recv(Duration::from_millis(300)) {
            Some(f) => f,
            None => {
                // Quiet: the guest must be out of credit, having sent
                // exactly what we granted. Then grant the rest.
                assert_eq!(echoed.len(), granted, "guest stalled with credit left");
                assert!(echoed.len() < total);
                stalled_checked = true;
                host.send(Frame::window(ch, INITIAL_WINDOW));
                granted += INITIAL_WINDOW as usize;
                continue;
            }
        };
        assert_eq!(frame.channel, ch);
        match frame.kind {
            FrameKind::Window => acked += frame.window_credit() as usize,
            FrameKind::Data => {
                echoed.extend(frame.payload);
                assert!(echoed.len() <= granted, "guest exceeded its credit");
            }
            FrameKind::Eof => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(stalled_checked);
    assert_eq!(acked, total);
    assert_eq!(echoed, payload);
    echo.join().unwrap();
}

#[test]
fn connect_refused_is_reported() {
    // Bind then drop to find a port that is (very likely) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut host = Host::connect();
    host.control(1, &HostMessage::Connect { port });
    assert!(matches!(
        host.recv_control(1),
        GuestMessage::Error {
            kind: ErrorKind::ConnectionRefused,
            ..
        }
    ));
}

#[test]
fn new_session_discards_old_output() {
    let mut host = Host::connect();
    host.control(1, &exec(&["sh", "-c", "sleep 0.5; echo late"]));
    assert!(matches!(host.recv_control(1), GuestMessage::Started { .. }));
    host.hello(8);
    // Nothing from the old session's process may show up.
    assert!(host.try_recv(Duration::from_millis(1500)).is_none());
}
