//! `ember shell MICROVM`: an interactive shell in the guest, at the VM's
//! own endpoint (`<endpoint>/shell`) as the real service serves it: a
//! WebSocket offering the subprotocols `lambda-microvms` and
//! `lambda-microvms.authentication.<token>` with a token from
//! `CreateMicrovmShellAuthToken`. The server's first text frame is
//! `session_init`; binary frames are terminal bytes both ways; a text
//! `{"type":"resize","cols","rows"}` follows the local window. The exit
//! status comes in Ember's `{"type":"exit","code":N}` before the close
//! (a server without that extension closing with 1000 counts as 0). The
//! local terminal is put in raw mode when it is one.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use ember::api_client::ApiClient;
use ember::microvm_api::{get, MICROVMS};

/// ^D: how a terminal says end of input.
const EOT: u8 = 4;

/// Restores the terminal however the session ends.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<Option<Self>> {
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        crossterm::terminal::enable_raw_mode().context("raw terminal mode")?;
        Ok(Some(RawMode))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs the session; returns the shell's exit code.
pub async fn run(client: &ApiClient, id: &str) -> anyhow::Result<i32> {
    let out = client
        .call(
            Method::POST,
            &format!("{MICROVMS}/{id}/shell-auth-token"),
            &[],
            Some(&json!({"expirationInMinutes": 10})),
        )
        .await?;
    let token = out["authToken"]["X-aws-proxy-auth"]
        .as_str()
        .context("CreateMicrovmShellAuthToken answered without a token")?;
    let vm = get(client, id).await?;
    let endpoint = vm["endpoint"]
        .as_str()
        .context("GetMicrovm answered without an endpoint")?;
    let mut socket = connect(client, endpoint, token).await?;
    let first = socket
        .next()
        .await
        .context("the shell closed before its session started")?
        .context("the shell connection broke")?;
    if !is_session_init(&first) {
        bail!("the shell did not start with session_init: {first:?}");
    }
    let raw = RawMode::enable()?;
    let result = session(socket).await;
    drop(raw);
    result
}

async fn connect(client: &ApiClient, endpoint: &str, token: &str) -> anyhow::Result<Socket> {
    let mut url = url::Url::parse(endpoint)
        .with_context(|| format!("the microVM's endpoint {endpoint:?}"))?
        .join("/shell")?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|_| anyhow::anyhow!("cannot make a WebSocket URL of {url}"))?;
    let mut request = url.as_str().into_client_request()?;
    let offer = format!("lambda-microvms, lambda-microvms.authentication.{token}");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        offer.parse().context("token header")?,
    );
    let connector = match scheme {
        "wss" => Connector::Rustls(client.tls_config()?),
        _ => Connector::Plain,
    };
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector));
    match connecting.await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            bail!("the shell was refused ({}): {body}", resp.status());
        }
        Err(e) => Err(e).with_context(|| format!("connecting to the shell at {url}")),
    }
}

fn is_session_init(message: &Message) -> bool {
    let Message::Text(text) = message else {
        return false;
    };
    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
    v["type"] == "session_init"
}

fn resize_message() -> Option<Message> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    let resize = json!({"type": "resize", "cols": cols, "rows": rows});
    Some(Message::text(resize.to_string()))
}

async fn session(socket: Socket) -> anyhow::Result<i32> {
    let (mut tx, mut rx) = socket.split();
    // The shell starts at 80x24; a real terminal says its own size.
    if let Some(resize) = resize_message() {
        tx.send(resize).await?;
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    // Piped input ended: the shell sees end of input.
                    stdin_open = false;
                    tx.send(Message::binary(vec![EOT])).await?;
                }
                Ok(n) => tx.send(Message::binary(buf[..n].to_vec())).await?,
            },
            _ = winch.recv() => {
                if let Some(resize) = resize_message() {
                    tx.send(resize).await?;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    let mut out = std::io::stdout();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "exit" {
                        code = v["code"].as_i64().and_then(|c| i32::try_from(c).ok());
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    // Sends tungstenite's answer to the server's close.
                    let _ = tx.close().await;
                    return match (code, close) {
                        (Some(code), _) => Ok(code),
                        (None, Some(f)) if f.code == CloseCode::Normal => Ok(0),
                        (None, Some(f)) => {
                            bail!("the shell closed: {} {}", u16::from(f.code), f.reason)
                        }
                        (None, None) => bail!("the shell closed without a status"),
                    };
                }
                None => bail!("the shell connection ended without a close"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("the shell connection broke"),
            },
        }
    }
}
