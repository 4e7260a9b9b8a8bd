//! The shell at a microVM's own endpoint, as the real service serves it:
//! `GET /shell` upgraded to a WebSocket, opened only by a token from
//! `CreateMicrovmShellAuthToken` (in `X-aws-proxy-auth`, or the
//! subprotocol `lambda-microvms.authentication.<token>`; a
//! `lambda-microvms.port.<n>` entry is accepted and means nothing here).
//! A request for `/shell` without a valid shell token for this VM is an
//! ordinary request for the app (which may have a `/shell` of its own).
//!
//! The session:
//! - the server's first frame is text `{"type":"session_init","session_id":"<uuid>"}`;
//! - binary frames both ways are raw terminal bytes;
//! - client text `{"type":"resize","cols":C,"rows":R}` resizes the
//!   terminal; other text frames (unknown types, bad JSON, zero sizes, over
//!   4 KiB) are ignored;
//! - when the shell exits, the server sends text `{"type":"exit","code":N}`
//!   (Ember's extension: the real service sends no status; a shell killed
//!   by signal S reports 128+S and `"signal":S`) and closes with 1000
//!   "shell exited"; a guest that ends the terminal without a status (it
//!   died, or did not say within 10 s) gets 1011;
//! - a message or frame over [`MAX_MESSAGE`] closes the session with 1009,
//!   a client close or a dropped connection hangs the terminal up (the
//!   shell gets SIGHUP), unbinding the endpoint closes with 1001;
//! - no byte either way for `ProxyConfig::idle_timeout` closes the session
//!   with 1001 "idle" and hangs up, like any idle endpoint connection: a
//!   forgotten shell must not keep its microVM from idling out.
//!
//! Before the 101 the answers are plain HTTP: 400 (not a WebSocket
//! handshake), 404 (unknown microVM), 503 (cannot serve now), 502 (the
//! guest could not start a shell), 504 (starting took too long).

mod framing;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::auth::{authorize_shell, ShellGrant, SUBPROTOCOL};
use crate::error_code::ProxyErrorCode;
use crate::headers::wants_upgrade;
use crate::idle::Activity;
use crate::proxy::Shared;
use crate::response::{error, ProxyBody};
use crate::tap::Tap;
use crate::token::TokenKey;
use crate::upstream::{AsyncStream, Shell, ShellControl, TerminalSize, UpstreamError};
use framing::{exit_text, new_session_id, parse_client_text, session_init, ClientText};

/// The path the shell answers at.
const SHELL_PATH: &str = "/shell";
/// The largest client message (and frame): a big paste fits, a flood does
/// not grow the proxy's buffers.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Terminal output is sent in binary frames of at most this.
const OUTPUT_CHUNK: usize = 16 * 1024;
/// How long a client has to answer the server's close before the
/// connection is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the guest may take to resize the terminal, or to report the
/// exit status once the terminal's output ended: a guest that never
/// answers must not hold the session (and its input) forever.
const GUEST_ANSWER: Duration = Duration::from_secs(10);
const EXIT_REASON: &str = "shell exited";

type Socket = WebSocketStream<Tap<TokioIo<Upgraded>>>;

/// The shell grant, when `req` is a request for the shell: `/shell` with a
/// valid shell token for `microvm_id`. Anything else goes to the app (or
/// is refused by the endpoint's own checks).
pub(crate) fn shell_request(
    key: &TokenKey,
    req: &Request<Incoming>,
    microvm_id: &str,
    now: u64,
) -> Option<ShellGrant> {
    if req.uri().path() != SHELL_PATH {
        return None;
    }
    authorize_shell(key, req.headers(), microvm_id, now).ok()
}

/// Starts the shell and answers the handshake; the session runs on its own
/// task once the client's connection is upgraded.
pub(crate) async fn open(
    shared: &Arc<Shared>,
    microvm_id: &str,
    mut req: Request<Incoming>,
    grant: ShellGrant,
    shutdown: watch::Receiver<()>,
) -> Response<ProxyBody> {
    let accept = match websocket_accept(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(message) => return error(ProxyErrorCode::InvalidRequest, message),
    };
    let starting = shared
        .upstream
        .open_shell(microvm_id, TerminalSize::DEFAULT);
    let shell = match tokio::time::timeout(shared.config.connect_timeout, starting).await {
        Ok(Ok(shell)) => shell,
        Ok(Err(e)) => return refused(microvm_id, e),
        Err(_) => {
            warn!(microvm_id, "starting a shell timed out");
            return error(
                ProxyErrorCode::AppTimeout,
                "the microVM did not start a shell in time",
            );
        }
    };
    let session_id = new_session_id();
    info!(microvm_id, session_id, "shell opened");
    let upgrade = hyper::upgrade::on(&mut req);
    let idle_timeout = shared.config.idle_timeout;
    tokio::spawn(run(upgrade, shell, session_id, (shutdown, idle_timeout)));

    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    // Only a name the client offered: strict clients fail a handshake
    // whose subprotocol they did not ask for.
    if grant.answer_subprotocol {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    response
}

/// The `Sec-WebSocket-Accept` for a well-formed RFC 6455 opening
/// handshake, checked before a shell is started for it.
fn websocket_accept(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    const NOT_WEBSOCKET: &str = "the shell is a WebSocket: GET /shell with Upgrade: websocket";
    let upgrades_to_websocket = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    if method != Method::GET || !wants_upgrade(headers) || !upgrades_to_websocket {
        return Err(NOT_WEBSOCKET);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("the shell speaks WebSocket version 13 only");
    }
    // The key is 16 bytes in base64: 24 characters.
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or("the WebSocket handshake has no valid Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| NOT_WEBSOCKET)
}

fn refused(microvm_id: &str, e: UpstreamError) -> Response<ProxyBody> {
    match e {
        UpstreamError::NotFound => error(ProxyErrorCode::MicrovmNotFound, "no such microVM"),
        UpstreamError::Unavailable(reason) => {
            debug!(microvm_id, %reason, "microVM unavailable for a shell");
            error(
                ProxyErrorCode::MicrovmUnavailable,
                &format!("the microVM cannot serve requests now: {reason}"),
            )
        }
        // The reason may carry a guest's words: the log gets them, the
        // client gets ours.
        UpstreamError::Refused(reason) => {
            warn!(microvm_id, %reason, "the guest could not start a shell");
            error(
                ProxyErrorCode::AppConnectFailed,
                "the microVM could not start a shell",
            )
        }
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// How the client's side of a session ended.
enum ClientEnd {
    /// It sent a close (answered by tungstenite) or its connection ended.
    Gone,
    /// It sent a message over [`MAX_MESSAGE`].
    TooBig,
}

enum Ended {
    /// The terminal's output ended (the shell exited, or the guest went
    /// away); `false` when the client stopped taking output.
    Output(bool),
    Client(ClientEnd),
    Shutdown,
    Idle,
}

async fn run(
    upgrade: OnUpgrade,
    shell: Shell,
    session_id: String,
    (mut shutdown, idle_timeout): (watch::Receiver<()>, Duration),
) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            warn!(error = %e, "shell upgrade did not complete");
            return;
        }
    };
    let activity = Activity::new();
    let watched = Arc::clone(&activity);
    let watched: Tap<_> = Tap::new(TokioIo::new(upgraded), Box::new(move |_, _| watched.mark()));
    let socket = Socket::from_raw_socket(watched, Role::Server, Some(config())).await;
    let (mut sink, mut source) = socket.split();
    if sink
        .send(Message::text(session_init(&session_id)))
        .await
        .is_err()
    {
        return;
    }
    let Shell { terminal, control } = shell;
    let (mut output, mut input) = tokio::io::split(terminal);
    let ended = tokio::select! {
        delivered = pump_output(&mut output, &mut sink) => Ended::Output(delivered),
        end = pump_input(&mut source, &mut input, &*control) => Ended::Client(end),
        _ = shutdown.changed() => Ended::Shutdown,
        () = activity.idle_for(idle_timeout) => Ended::Idle,
    };
    match ended {
        Ended::Output(false) => {}
        Ended::Output(true) => {
            let close = match tokio::time::timeout(GUEST_ANSWER, control.wait()).await {
                Ok(Ok(exit)) => {
                    debug!(session_id, ?exit, "shell exited");
                    let _ = sink.send(Message::text(exit_text(exit))).await;
                    close_frame(CloseCode::Normal, EXIT_REASON)
                }
                Ok(Err(e)) => {
                    warn!(session_id, error = %e, "the shell ended without an exit status");
                    close_frame(CloseCode::Error, "the shell ended without an exit status")
                }
                Err(_) => {
                    warn!(
                        session_id,
                        "the guest did not report the shell's exit status"
                    );
                    close_frame(CloseCode::Error, "the shell ended without an exit status")
                }
            };
            close_and_drain(sink, source, close).await;
        }
        Ended::Client(ClientEnd::Gone) => {
            // Delivers tungstenite's answer to the client's close, if any.
            let _ = sink.flush().await;
            debug!(session_id, "shell client went away; hanging up");
        }
        Ended::Client(ClientEnd::TooBig) => {
            let close = close_frame(CloseCode::Size, "message too big");
            close_and_drain(sink, source, close).await;
        }
        Ended::Shutdown => {
            let close = close_frame(CloseCode::Away, "the endpoint closed");
            close_and_drain(sink, source, close).await;
        }
        Ended::Idle => {
            debug!(session_id, "closing an idle shell");
            close_and_drain(sink, source, close_frame(CloseCode::Away, "idle")).await;
        }
    }
    // Dropping the terminal here hangs it up if the shell still runs.
    info!(session_id, "shell closed");
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Sends `close`, then reads until the client answers it (briefly), so the
/// close frame is not lost to a reset of unread input.
async fn close_and_drain(
    mut sink: SplitSink<Socket, Message>,
    mut source: SplitStream<Socket>,
    close: CloseFrame,
) {
    if sink.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Terminal output to the client until the terminal ends; false if the
/// client stopped taking it.
async fn pump_output(
    output: &mut ReadHalf<Box<dyn AsyncStream>>,
    sink: &mut SplitSink<Socket, Message>,
) -> bool {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        let n = match output.read(&mut buf).await {
            Ok(0) => return true,
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "reading the shell's terminal failed");
                return true;
            }
        };
        let frame = Message::binary(Bytes::copy_from_slice(&buf[..n]));
        if sink.send(frame).await.is_err() {
            return false;
        }
    }
}

/// Client frames to the terminal until the client goes away. Keeps reading
/// after the terminal stopped taking input, so the output side finishes
/// and a client close is still seen.
async fn pump_input(
    source: &mut SplitStream<Socket>,
    input: &mut WriteHalf<Box<dyn AsyncStream>>,
    control: &dyn ShellControl,
) -> ClientEnd {
    let mut terminal_open = true;
    loop {
        match source.next().await {
            Some(Ok(Message::Binary(bytes))) if terminal_open => {
                if let Err(e) = input.write_all(&bytes).await {
                    debug!(error = %e, "the shell's terminal takes no more input");
                    terminal_open = false;
                }
            }
            Some(Ok(Message::Text(text))) => match parse_client_text(text.as_str()) {
                ClientText::Resize(size) => {
                    match tokio::time::timeout(GUEST_ANSWER, control.resize(size)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(error = %e, "resizing the shell's terminal failed"),
                        Err(_) => debug!("the guest did not answer a resize"),
                    }
                }
                ClientText::Ignored(why) => debug!(why, "ignored a shell text frame"),
            },
            Some(Ok(Message::Close(_))) | None => return ClientEnd::Gone,
            // Pings are answered by tungstenite; pongs and input after
            // the terminal closed mean nothing.
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(e))) => {
                debug!(error = %e, "a shell client sent an oversized message");
                return ClientEnd::TooBig;
            }
            Some(Err(e)) => {
                debug!(error = %e, "the shell's WebSocket broke");
                return ClientEnd::Gone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accept_key_is_rfc_6455s() {
        let accept = websocket_accept(&Method::GET, &handshake(&GOOD)).unwrap();
        // RFC 6455 §1.3's example.
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn anything_but_a_websocket_handshake_is_refused() {
        assert!(websocket_accept(&Method::POST, &handshake(&GOOD)).is_err());
        for (skip, missing) in GOOD.iter().enumerate() {
            let partial: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert!(
                websocket_accept(&Method::GET, &handshake(&partial)).is_err(),
                "without {missing:?}"
            );
        }
        let mut wrong = GOOD;
        wrong[2] = ("sec-websocket-version", "8");
        assert!(websocket_accept(&Method::GET, &handshake(&wrong)).is_err());
        wrong = GOOD;
        wrong[1] = ("upgrade", "h2c");
        assert!(websocket_accept(&Method::GET, &handshake(&wrong)).is_err());
        wrong = GOOD;
        wrong[3] = ("sec-websocket-key", "short");
        assert!(websocket_accept(&Method::GET, &handshake(&wrong)).is_err());
    }
}
