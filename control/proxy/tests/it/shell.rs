//! The shell at `/shell`: a shell token opens it, framed as the real
//! service frames it; any other token reaches the app. The shell behind
//! it is a stand-in (a line interpreter on an in-memory pipe); emberd's
//! API tests drive the real one in a guest.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{now, start_app, AppStats};
use async_trait::async_trait;
use ember_proxy::{
    AsyncStream, Claims, PortScope, Proxy, ProxyConfig, Shell, ShellControl, ShellError, ShellExit,
    TerminalSize, TokenKey, TokenKind, Upstream, UpstreamError, MAX_SHELL_MESSAGE,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the stand-in shells saw.
#[derive(Default)]
struct Seen {
    opened: AtomicUsize,
    /// Shells whose terminal the proxy dropped while they still ran.
    hung_up: AtomicUsize,
}

struct StandInControl {
    size: Arc<Mutex<TerminalSize>>,
    exit: watch::Receiver<Option<ShellExit>>,
}

#[async_trait]
impl ShellControl for StandInControl {
    async fn resize(&self, size: TerminalSize) -> Result<(), ShellError> {
        *self.size.lock().unwrap() = size;
        Ok(())
    }

    async fn wait(&self) -> Result<ShellExit, ShellError> {
        let mut exit = self.exit.clone();
        let got = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShellError("the stand-in vanished".into()))?;
        Ok(got.expect("waited for Some"))
    }
}

/// Reads lines: `size` prints "ROWS COLS", `exit N` exits with N, `kill S`
/// dies of signal S, `vanish` ends with no status; anything else is
/// echoed after "> ".
async fn stand_in_shell(
    guest: DuplexStream,
    size: Arc<Mutex<TerminalSize>>,
    exit: watch::Sender<Option<ShellExit>>,
    seen: Arc<Seen>,
) {
    let (read, mut write) = tokio::io::split(guest);
    let mut lines = BufReader::new(read).lines();
    loop {
        let Ok(Some(line)) = lines.next_line().await else {
            seen.hung_up.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let answer = if line == "size" {
            let s = *size.lock().unwrap();
            format!("{} {}\r\n", s.rows, s.cols)
        } else if line == "vanish" {
            // Like a guest that dies: the terminal ends, no status comes.
            drop(exit);
            return;
        } else if let Some(signal) = line.strip_prefix("kill ") {
            exit.send_replace(Some(ShellExit {
                code: None,
                signal: Some(signal.parse().unwrap()),
            }));
            return;
        } else if let Some(code) = line.strip_prefix("exit ") {
            let _ = write.write_all(b"bye\r\n").await;
            exit.send_replace(Some(ShellExit {
                code: Some(code.parse().unwrap()),
                signal: None,
            }));
            return;
        } else {
            format!("> {line}\r\n")
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// vm-a has the app and shells; vm-noshell's guest cannot start one;
/// vm-asleep cannot serve.
struct ShellUpstream {
    app: SocketAddr,
    seen: Arc<Seen>,
}

#[async_trait]
impl Upstream for ShellUpstream {
    async fn connect(
        &self,
        microvm_id: &str,
        _port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        if microvm_id != "vm-a" {
            return Err(UpstreamError::NotFound);
        }
        let stream = TcpStream::connect(self.app)
            .await
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        Ok(Box::new(stream))
    }

    async fn open_shell(
        &self,
        microvm_id: &str,
        size: TerminalSize,
    ) -> Result<Shell, UpstreamError> {
        match microvm_id {
            "vm-a" => {}
            "vm-noshell" => return Err(UpstreamError::Refused("no /bin/sh".into())),
            "vm-asleep" => return Err(UpstreamError::Unavailable("it is suspended".into())),
            _ => return Err(UpstreamError::NotFound),
        }
        self.seen.opened.fetch_add(1, Ordering::SeqCst);
        let (proxy_side, guest) = tokio::io::duplex(64 * 1024);
        let size = Arc::new(Mutex::new(size));
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(stand_in_shell(
            guest,
            size.clone(),
            exit_tx,
            self.seen.clone(),
        ));
        Ok(Shell {
            terminal: Box::new(proxy_side),
            control: Box::new(StandInControl { size, exit }),
        })
    }

    fn touch(&self, _microvm_id: &str) {}
}

struct Setup {
    proxy: Proxy,
    key: Arc<TokenKey>,
    seen: Arc<Seen>,
    app_stats: Arc<AppStats>,
}

impl Setup {
    async fn new() -> Self {
        let (app, app_stats) = start_app().await;
        let seen = Arc::new(Seen::default());
        let key = Arc::new(TokenKey::generate());
        let upstream = Arc::new(ShellUpstream {
            app,
            seen: seen.clone(),
        });
        let proxy = Proxy::new(key.clone(), upstream, ProxyConfig::default());
        Setup {
            proxy,
            key,
            seen,
            app_stats,
        }
    }

    fn token(&self, vm: &str, kind: TokenKind) -> String {
        self.key
            .mint(&Claims::new(vm, PortScope::All, kind, now(), 600))
            .unwrap()
    }

    fn opened(&self) -> usize {
        self.seen.opened.load(Ordering::SeqCst)
    }

    fn app_requests(&self) -> usize {
        self.app_stats.requests.load(Ordering::SeqCst)
    }
}

/// Opens `ws://addr/path` offering the service's subprotocols with `token`
/// (or sending it in `X-aws-proxy-auth` when `by_header`).
async fn connect(
    addr: SocketAddr,
    path: &str,
    token: &str,
    by_header: bool,
) -> Result<(Client, http::Response<Option<Vec<u8>>>), WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let headers = request.headers_mut();
    if by_header {
        headers.insert("x-aws-proxy-auth", token.parse().unwrap());
    } else {
        let offer = format!(
            "lambda-microvms, lambda-microvms.authentication.{token}, lambda-microvms.port.8022"
        );
        headers.insert("sec-websocket-protocol", offer.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

fn refusal_status(result: Result<(Client, impl Sized), WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a WebSocket"),
    }
}

/// A shell session on vm-a's endpoint, past its `session_init`.
async fn open_session(s: &Setup) -> Client {
    let addr = s.proxy.bind_vm("vm-a").await.unwrap();
    let (mut ws, _) = connect(addr, "/shell", &s.token("vm-a", TokenKind::Shell), false)
        .await
        .unwrap();
    session_init(&mut ws).await;
    ws
}

async fn session_init(ws: &mut Client) -> String {
    let first = ws.next().await.unwrap().unwrap();
    let Message::Text(text) = first else {
        panic!("the first frame is not text: {first:?}");
    };
    let json: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(json["type"], "session_init", "{json}");
    json["session_id"].as_str().unwrap().to_string()
}

/// Types `line` and collects binary output until it holds `want`.
async fn run_line(ws: &mut Client, line: &str, want: &str) -> String {
    ws.send(Message::binary(format!("{line}\n").into_bytes()))
        .await
        .unwrap();
    let mut out = String::new();
    while !out.contains(want) {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("expected terminal bytes, got {other:?} after {out:?}"),
        }
    }
    out
}

#[tokio::test]
async fn shell_session_is_framed_like_the_service() {
    let s = Setup::new().await;
    let addr = s.proxy.bind_vm("vm-a").await.unwrap();
    let (mut ws, response) = connect(addr, "/shell", &s.token("vm-a", TokenKind::Shell), false)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "lambda-microvms"
    );
    let id = session_init(&mut ws).await;
    assert_eq!(id.len(), 36, "{id}");
    assert!(run_line(&mut ws, "hello", "> hello")
        .await
        .contains("> hello"));
    assert!(run_line(&mut ws, "size", "\r\n").await.contains("24 80"));

    ws.send(Message::text(r#"{"type":"resize","cols":132,"rows":43}"#))
        .await
        .unwrap();
    // Text that is not a resize changes nothing and ends nothing.
    for ignored in [
        "hello",
        r#"{"type":"resize","cols":0,"rows":5}"#,
        r#"{"type":"x"}"#,
    ] {
        ws.send(Message::text(ignored)).await.unwrap();
    }
    ws.send(Message::text(" ".repeat(64 * 1024))).await.unwrap();
    assert!(run_line(&mut ws, "size", "\r\n").await.contains("43 132"));

    ws.send(Message::binary(b"exit 3\n".to_vec()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = ws.next().await {
        frames.push(frame.unwrap());
    }
    let (close, rest) = frames.split_last().unwrap();
    let (exit, output) = rest.split_last().unwrap();
    assert!(output.iter().all(Message::is_binary), "{frames:?}");
    let exit: serde_json::Value = serde_json::from_str(exit.to_text().unwrap()).unwrap();
    assert_eq!(exit, serde_json::json!({"type": "exit", "code": 3}));
    let Message::Close(Some(close)) = close else {
        panic!("no close frame: {frames:?}");
    };
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "shell exited");
    assert_eq!(s.seen.hung_up.load(Ordering::SeqCst), 0);
    assert_eq!(s.app_requests(), 0, "the shell reached the app");
}

/// The text frames and the close frame that end a session after `line`.
async fn ending_after(s: &Setup, line: &str) -> (Vec<serde_json::Value>, CloseCode) {
    let mut ws = open_session(s).await;
    ws.send(Message::binary(format!("{line}\n").into_bytes()))
        .await
        .unwrap();
    let (mut texts, mut close) = (Vec::new(), None);
    while let Some(Ok(frame)) = ws.next().await {
        match frame {
            Message::Text(t) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
            Message::Close(frame) => close = frame.map(|f| f.code),
            _ => {}
        }
    }
    (texts, close.expect("a close frame"))
}

#[tokio::test]
async fn a_killed_shell_reports_its_signal_and_a_vanished_one_1011() {
    let s = Setup::new().await;
    let (texts, close) = ending_after(&s, "kill 9").await;
    assert_eq!(
        texts,
        [serde_json::json!({"type": "exit", "code": 137, "signal": 9})]
    );
    assert_eq!(close, CloseCode::Normal);
    let (texts, close) = ending_after(&s, "vanish").await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(close, CloseCode::Error);
}

#[tokio::test]
async fn header_token_works_and_each_session_has_its_own_id() {
    let s = Setup::new().await;
    let addr = s.proxy.bind_vm("vm-a").await.unwrap();
    let token = s.token("vm-a", TokenKind::Shell);
    let (mut one, response) = connect(addr, "/shell", &token, true).await.unwrap();
    // Nothing offered, nothing named.
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
    let (mut two, _) = connect(addr, "/shell", &token, true).await.unwrap();
    assert_ne!(session_init(&mut one).await, session_init(&mut two).await);
    assert_eq!(s.opened(), 2);
}

#[tokio::test]
async fn a_client_that_leaves_hangs_the_shell_up() {
    let s = Setup::new().await;
    let mut ws = open_session(&s).await;
    ws.close(None).await.unwrap();
    // The proxy answers the close.
    while let Some(Ok(_)) = ws.next().await {}
    wait_until(|| s.seen.hung_up.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_hangs_up() {
    let s = Setup::new().await;
    let mut ws = open_session(&s).await;
    ws.send(Message::binary(vec![b'x'; MAX_SHELL_MESSAGE + 1]))
        .await
        .unwrap();
    let mut close = None;
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Close(frame) = frame {
            close = frame;
        }
    }
    assert_eq!(close.expect("a close frame").code, CloseCode::Size);
    wait_until(|| s.seen.hung_up.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn an_endpoint_token_on_shell_reaches_the_app() {
    let s = Setup::new().await;
    let addr = s.proxy.bind_vm("vm-a").await.unwrap();
    let endpoint = s.token("vm-a", TokenKind::Endpoint);
    let (status, body) = common::send(
        addr,
        common::get(
            "/shell",
            &[
                ("x-aws-proxy-auth", &endpoint),
                ("x-aws-proxy-port", "8080"),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/shell");
    assert_eq!(s.app_requests(), 1);
    assert_eq!(s.opened(), 0);
}

#[tokio::test]
async fn shell_refusals_reach_neither_shell_nor_app() {
    let s = Setup::new().await;
    let addr = s.proxy.bind_vm("vm-a").await.unwrap();
    let shell = s.token("vm-a", TokenKind::Shell);
    let expect_4xx = |status: u16| assert!((400..500).contains(&status), "{status}");
    // No token, a bad one, another VM's shell token.
    expect_4xx(refusal_status(connect(addr, "/shell", "", true).await));
    expect_4xx(refusal_status(
        connect(addr, "/shell", "garbage", false).await,
    ));
    let other = s.token("vm-b", TokenKind::Shell);
    expect_4xx(refusal_status(connect(addr, "/shell", &other, false).await));
    // A shell token opens nothing but /shell.
    expect_4xx(refusal_status(connect(addr, "/ws", &shell, false).await));
    expect_4xx(refusal_status(
        connect(addr, "/shell/", &shell, false).await,
    ));
    // A plain GET with the shell token is not a WebSocket handshake.
    let (status, _) =
        common::send(addr, common::get("/shell", &[("x-aws-proxy-auth", &shell)])).await;
    assert_eq!(status, 400);
    assert_eq!(s.opened(), 0);
    assert_eq!(s.app_requests(), 0);
}

#[tokio::test]
async fn vms_that_cannot_give_a_shell_answer_404_503_502() {
    let s = Setup::new().await;
    for (vm, status) in [("vm-gone", 404), ("vm-asleep", 503), ("vm-noshell", 502)] {
        let addr = s.proxy.bind_vm(vm).await.unwrap();
        let token = s.token(vm, TokenKind::Shell);
        assert_eq!(
            refusal_status(connect(addr, "/shell", &token, false).await),
            status,
            "{vm}"
        );
    }
}

#[tokio::test]
async fn unbinding_the_endpoint_closes_open_shells_with_1001() {
    let s = Setup::new().await;
    let mut ws = open_session(&s).await;
    assert!(s.proxy.unbind_vm("vm-a"));
    let mut close = None;
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Close(frame) = frame {
            close = frame;
        }
    }
    assert_eq!(close.expect("a close frame").code, CloseCode::Away);
    wait_until(|| s.seen.hung_up.load(Ordering::SeqCst) == 1).await;
}

async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test]
async fn an_idle_shell_is_closed_with_1001_and_hung_up_but_not_a_busy_one() {
    let (app, app_stats) = start_app().await;
    let seen = Arc::new(Seen::default());
    let key = Arc::new(TokenKey::generate());
    let upstream = Arc::new(ShellUpstream {
        app,
        seen: seen.clone(),
    });
    let config = ProxyConfig {
        idle_timeout: std::time::Duration::from_millis(1000),
        ..Default::default()
    };
    let s = Setup {
        proxy: Proxy::new(key.clone(), upstream, config),
        key,
        seen,
        app_stats,
    };
    let mut ws = open_session(&s).await;
    // Typing more often than the timeout keeps it open.
    for i in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        run_line(&mut ws, &format!("line {i}"), &format!("> line {i}")).await;
    }
    // Then silence: the proxy closes the session and hangs the shell up
    // (a proxy that never does fails here rather than stalling the suite).
    let closing = async {
        let mut close = None;
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Close(frame) = frame {
                close = frame;
            }
        }
        close
    };
    let close = tokio::time::timeout(std::time::Duration::from_secs(20), closing)
        .await
        .expect("an idle shell was kept open")
        .expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "idle");
    wait_until(|| s.seen.hung_up.load(Ordering::SeqCst) == 1).await;
}
