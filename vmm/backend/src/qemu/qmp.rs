//! A small QMP client: one command in flight at a time, events skipped.
//! QEMU's monitor answers commands in order, so no ids are needed.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// A monitor line longer than this is treated as a broken monitor.
const MAX_LINE: usize = 1 << 20;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("monitor i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("monitor closed the connection")]
    Closed,
    #[error("monitor sent malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{command}` failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("`{0}` got no answer within {COMMAND_TIMEOUT:?}")]
    Timeout(String),
}

pub struct Qmp {
    conn: Mutex<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).await?;
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let greeting = read_message(&mut rd).await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Closed);
        }
        let qmp = Self {
            conn: Mutex::new((rd, wr)),
        };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut conn = self.conn.lock().await;
        let (rd, wr) = &mut *conn;
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))?;
        line.push(b'\n');
        let exchange = async {
            wr.write_all(&line).await?;
            loop {
                let msg = read_message(rd).await?;
                if let Some(ret) = msg.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = msg.get("error") {
                    let field =
                        |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class: field("class"),
                        desc: field("desc"),
                    });
                }
                // Anything else is an asynchronous event.
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| QmpError::Timeout(command.to_string()))?
    }
}

async fn read_message(rd: &mut BufReader<OwnedReadHalf>) -> Result<Value, QmpError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *rd)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if line.last() != Some(&b'\n') && n >= MAX_LINE {
            return Err(QmpError::Closed);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Ok(serde_json::from_slice(&line)?);
    }
}
