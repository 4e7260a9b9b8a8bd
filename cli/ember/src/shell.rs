//! `ember shell MICROVM`: an interactive shell in the guest, through
//! emberd's shell WebSocket with a token from
//! `CreateMicrovmShellAuthToken`. The local terminal is put in raw mode
//! (when it is one) and its size follows the window.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use ember::api_client::ApiClient;

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

/// Runs the session; returns the shell's exit code.
pub async fn run(client: &ApiClient, id: &str) -> anyhow::Result<i32> {
    let out = client
        .call(
            Method::POST,
            &format!("/2025-09-09/microvms/{id}/shell-auth-token"),
            &[],
            Some(&json!({"expirationInMinutes": 10})),
        )
        .await?;
    let token = out["authToken"]["X-aws-proxy-auth"]
        .as_str()
        .context("CreateMicrovmShellAuthToken answered without a token")?;
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    let mut url = client
        .endpoint()
        .join(&format!("/ember/v1/microvms/{id}/shell"))?;
    url.set_scheme(if url.scheme() == "https" { "wss" } else { "ws" })
        .map_err(|_| anyhow::anyhow!("cannot make a WebSocket URL of {url}"))?;
    url.query_pairs_mut()
        .append_pair("rows", &rows.to_string())
        .append_pair("cols", &cols.to_string());
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("X-aws-proxy-auth", token.parse().context("token header")?);
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(s) => s,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            bail!("the shell was refused ({}): {body}", resp.status());
        }
        Err(e) => return Err(e).context("connecting to the shell"),
    };
    let (mut tx, mut rx) = socket.split();
    let raw = RawMode::enable()?;
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
                    tx.send(Message::Binary(vec![EOT].into())).await?;
                }
                Ok(n) => tx.send(Message::Binary(buf[..n].to_vec().into())).await?,
            },
            _ = winch.recv() => {
                if let Ok((cols, rows)) = crossterm::terminal::size() {
                    let resize = json!({"resize": {"rows": rows, "cols": cols}});
                    tx.send(Message::Text(resize.to_string().into())).await?;
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
                    if let Some(c) = v["exit"]["code"].as_i64() {
                        code = Some(c as i32);
                    } else if let Some(s) = v["exit"]["signal"].as_i64() {
                        code = Some(128 + s as i32);
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    return Err(e).context("the shell connection broke");
                }
            },
        }
    }
    drop(raw);
    Ok(code.unwrap_or(1))
}
