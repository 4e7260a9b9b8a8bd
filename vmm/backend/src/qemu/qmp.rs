//! A small QMP client: one command in flight at a time, events skipped.
//! Every command carries an id and only the reply with that id answers
//! it: a command that timed out may still be answered later, and that
//! late reply must never be read as the answer to the next command.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::Interest;
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
    #[error("`{0}` got no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("monitor connection unusable: an earlier command was cut off mid-write")]
    Torn,
}

pub struct Qmp {
    conn: Mutex<Conn>,
    timeout: Duration,
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// A line read in part when its command timed out; the rest follows.
    line: Vec<u8>,
    next_id: u64,
    /// Set while a command is being written: still set at the next one
    /// means the last was cut off and QEMU holds half a command.
    writing: bool,
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        Self::connect_with_timeout(path, COMMAND_TIMEOUT).await
    }

    async fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).await?;
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd: BufReader::new(rd),
            wr,
            line: Vec::new(),
            next_id: 0,
            writing: false,
        };
        let greeting = conn.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Closed);
        }
        let qmp = Self {
            conn: Mutex::new(conn),
            timeout,
        };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.exchange(command, arguments, None).await
    }

    /// Runs `command` with `fd` passed along (SCM_RIGHTS), as `getfd` and
    /// `add-fd` expect: QEMU keeps its own copy of the descriptor.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, Some(fd)).await
    }

    async fn exchange(
        &self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let mut guard = self.conn.lock().await;
        let conn = &mut *guard;
        if conn.writing {
            return Err(QmpError::Torn);
        }
        conn.next_id += 1;
        let id = conn.next_id;
        let mut line =
            serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": id}))?;
        line.push(b'\n');
        let exchange = async {
            conn.writing = true;
            match fd {
                Some(fd) => {
                    let sock: &UnixStream = conn.wr.as_ref();
                    let sent = loop {
                        sock.writable().await?;
                        match sock.try_io(Interest::WRITABLE, || {
                            send_with_fd(sock.as_raw_fd(), &line, fd)
                        }) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(e) => return Err(e.into()),
                        }
                    };
                    // The descriptor went with the first byte; the rest is plain.
                    conn.wr.write_all(&line[sent..]).await?;
                }
                None => conn.wr.write_all(&line).await?,
            }
            conn.writing = false;
            loop {
                let msg = conn.read_message().await?;
                let answer = msg.get("return").is_some() || msg.get("error").is_some();
                if !answer {
                    // An asynchronous event.
                    continue;
                }
                if msg.get("id").and_then(Value::as_u64) != Some(id) {
                    tracing::debug!(command, reply = %msg, "late QMP reply to an earlier command skipped");
                    continue;
                }
                if let Some(ret) = msg.get("return") {
                    return Ok(ret.clone());
                }
                let err = &msg["error"];
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout(command.to_string(), self.timeout))?
    }
}

/// One `sendmsg` of `bytes` carrying `fd` as SCM_RIGHTS; returns the bytes
/// sent (at least one, or an error).
fn send_with_fd(sock: RawFd, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` writable bytes, enough for one
    // cmsghdr with one fd (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and
    // CMSG_DATA points inside the buffer; `iov` and `bytes` outlive the call.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            (&raw as *const RawFd).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            std::mem::size_of::<RawFd>(),
        );
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

impl Conn {
    /// The next whole message. Cancel-safe: bytes of a line read before a
    /// timeout stay in `self.line` for the next call.
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            let room = MAX_LINE.saturating_sub(self.line.len());
            (&mut self.rd)
                .take(room as u64)
                .read_until(b'\n', &mut self.line)
                .await?;
            if self.line.last() != Some(&b'\n') {
                // End of stream, or a line longer than any answer QEMU sends.
                return Err(QmpError::Closed);
            }
            let line = std::mem::take(&mut self.line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

#[cfg(test)]
mod tests;
