//! `GET /ember/v1/microvms/{id}/shell`: an interactive shell in the
//! guest over a WebSocket, for `ember shell`. Authenticated by a token
//! from `CreateMicrovmShellAuthToken` (not SigV4: like the endpoint, the
//! token is the credential), in `X-aws-proxy-auth` or as the subprotocol
//! `lambda-microvms.authentication.<token>`.
//!
//! Frames: binary both ways are terminal bytes (keystrokes in, output
//! out); text from the client is a control message
//! `{"resize":{"rows":R,"cols":C}}`; the server's last text message is
//! `{"exit":{"code":N,"signal":S}}`, then it closes.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ember_vmm::agent::{ExecRequest, TtySize};

use crate::microvms::Microvms;

pub const ROUTE: &str = "/ember/v1/microvms/{id}/shell";
/// Named in the 101 when the client offered it (as the endpoint does).
const SUBPROTOCOL: &str = "lambda-microvms";
/// The largest control message a client may send.
const MAX_CONTROL: usize = 1024;

#[derive(Debug, Deserialize)]
pub struct ShellQuery {
    rows: Option<u16>,
    cols: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct Control {
    resize: Option<Size>,
}

#[derive(Debug, Deserialize)]
struct Size {
    rows: u16,
    cols: u16,
}

pub async fn shell(
    State(microvms): State<Arc<Microvms>>,
    Path(id): Path<String>,
    Query(q): Query<ShellQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let grant =
        match ember_proxy::authorize_shell(microvms.tokens(), &headers, &id, crate::now() as u64) {
            Ok(g) => g,
            Err(r) => return refuse(r.status, r.message),
        };
    let vm = match microvms.shell_vm(&id).await {
        Ok(vm) => vm,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let size = TtySize {
        rows: q.rows.filter(|r| *r > 0).unwrap_or(24),
        cols: q.cols.filter(|c| *c > 0).unwrap_or(80),
    };
    let session = match vm
        .agent()
        .exec_pty(ExecRequest {
            argv: vec!["/bin/sh".into(), "-l".into()],
            cwd: Some("/".into()),
            tty: Some(size),
            ..Default::default()
        })
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("starting a shell in the guest: {e}"),
            )
        }
    };
    let guard = microvms.instance(&id).map(|i| i.stream_opened());
    let ws = if grant.answer_subprotocol {
        ws.protocols([SUBPROTOCOL])
    } else {
        ws
    };
    ws.on_upgrade(move |socket| async move {
        let _open = guard;
        pump(socket, session).await;
    })
}

/// Copies keystrokes in and output out until the shell exits or the
/// client goes away (the shell then gets a hang-up).
async fn pump(mut socket: WebSocket, session: ember_vmm::agent::PtySession) {
    let (stream, control) = session.into_parts();
    let (mut out, mut input) = tokio::io::split(stream);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = out.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if input.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) if text.len() <= MAX_CONTROL => {
                    if let Ok(Control { resize: Some(s) }) = serde_json::from_str(text.as_str()) {
                        let _ = control.resize(s.rows.max(1), s.cols.max(1)).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let exit = match control.wait().await {
        Ok(e) => serde_json::json!({"exit": {"code": e.code, "signal": e.signal}}),
        Err(e) => serde_json::json!({"exit": {"error": e.to_string()}}),
    };
    let _ = socket.send(Message::Text(exit.to_string().into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}
