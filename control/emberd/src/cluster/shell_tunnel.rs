//! The shell of a microVM another node runs, carried over one internal
//! tunnel. The owner starts the shell (as for its own endpoint's clients)
//! before it answers the upgrade; then both sides speak frames of
//! `[kind: u8][length: u32 BE][payload]`:
//!
//! - `DATA`, both ways: terminal bytes, at most [`MAX_DATA`];
//! - `RESIZE`, caller → owner: rows, cols (u16 BE each);
//! - `EOF`, owner → caller: the terminal's output ended;
//! - `EXIT`, owner → caller: code, signal (i32 BE each, [`NONE`] for
//!   neither);
//! - `FAILED`, owner → caller: the exit status could not be had (words for
//!   the log).
//!
//! The caller closing the tunnel hangs the terminal up on the owner, as a
//! client leaving a local shell does. Frames from another node are still
//! checked: a bad one ends the session.

use std::io;

use async_trait::async_trait;
use ember_proxy::{AsyncStream, Shell, ShellControl, ShellError, ShellExit, TerminalSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

const DATA: u8 = 0;
const RESIZE: u8 = 1;
const EOF: u8 = 2;
const EXIT: u8 = 3;
const FAILED: u8 = 4;
/// The most terminal bytes in one frame (and so the most read at once).
pub const MAX_DATA: usize = 64 * 1024;
/// An absent exit code or signal.
const NONE: i32 = i32::MIN;
/// How long the owner waits for the caller to close once the shell's
/// status was sent: a caller that never does must not hold the terminal.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// The resizes a caller may have in flight; more are dropped (the next one
/// carries the size that matters).
const RESIZES_QUEUED: usize = 8;

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Data(Vec<u8>),
    Resize(TerminalSize),
    Eof,
    Exit(ShellExit),
    Failed(String),
}

fn encode(frame: &Frame) -> Vec<u8> {
    let (kind, payload): (u8, Vec<u8>) = match frame {
        Frame::Data(bytes) => (DATA, bytes.clone()),
        Frame::Resize(size) => (
            RESIZE,
            [size.rows.to_be_bytes(), size.cols.to_be_bytes()].concat(),
        ),
        Frame::Eof => (EOF, Vec::new()),
        Frame::Exit(exit) => (
            EXIT,
            [
                exit.code.unwrap_or(NONE).to_be_bytes(),
                exit.signal.unwrap_or(NONE).to_be_bytes(),
            ]
            .concat(),
        ),
        Frame::Failed(why) => {
            let mut why = why.as_bytes().to_vec();
            why.truncate(MAX_DATA);
            (FAILED, why)
        }
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    // Payloads are bounded by MAX_DATA, far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("shell tunnel: {what}"))
}

fn decode(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
    let pair = |p: &[u8]| -> io::Result<[u8; 8]> {
        p.try_into()
            .map_err(|_| invalid("a frame of the wrong size"))
    };
    let some = |v: i32| (v != NONE).then_some(v);
    Ok(match kind {
        DATA => Frame::Data(payload),
        RESIZE => {
            let p: [u8; 4] = payload
                .as_slice()
                .try_into()
                .map_err(|_| invalid("a resize of the wrong size"))?;
            Frame::Resize(TerminalSize {
                rows: u16::from_be_bytes([p[0], p[1]]),
                cols: u16::from_be_bytes([p[2], p[3]]),
            })
        }
        EOF if payload.is_empty() => Frame::Eof,
        EXIT => {
            let p = pair(&payload)?;
            Frame::Exit(ShellExit {
                code: some(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
                signal: some(i32::from_be_bytes([p[4], p[5], p[6], p[7]])),
            })
        }
        FAILED => Frame::Failed(String::from_utf8_lossy(&payload).into_owned()),
        _ => return Err(invalid("an unknown frame")),
    })
}

/// The next frame; `None` when the stream ended between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_DATA {
        return Err(invalid("a frame over the limit"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    decode(head[0], payload).map(Some)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    w.write_all(&encode(frame)).await?;
    w.flush().await
}

/// The owner's side: serves `shell` to the caller at the other end of
/// `tunnel` until either ends.
pub async fn serve(tunnel: impl AsyncStream, shell: Shell) {
    let (mut from_caller, mut to_caller) = tokio::io::split(tunnel);
    let (mut output, mut input) = tokio::io::split(shell.terminal);
    let control = shell.control;
    let control = &*control;
    let send_output = async {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            match output.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    write_frame(&mut to_caller, &Frame::Data(buf[..n].to_vec())).await?;
                }
            }
        }
        write_frame(&mut to_caller, &Frame::Eof).await?;
        let status = match control.wait().await {
            Ok(exit) => Frame::Exit(exit),
            Err(e) => Frame::Failed(e.to_string()),
        };
        write_frame(&mut to_caller, &status).await
    };
    let take_input = async {
        loop {
            match read_frame(&mut from_caller).await {
                Ok(Some(Frame::Data(bytes))) => {
                    if input.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Frame::Resize(size))) => {
                    if let Err(e) = control.resize(size).await {
                        tracing::debug!("a tunnelled shell's resize: {e}");
                    }
                }
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!("a tunnelled shell's caller sent a frame it may not send");
                    break;
                }
            }
        }
    };
    tokio::pin!(send_output, take_input);
    tokio::select! {
        // The caller hung up: the terminal is dropped with this task.
        _ = &mut take_input => {}
        sent = &mut send_output => {
            if let Err(e) = sent {
                tracing::debug!("a tunnelled shell's output: {e}");
            }
            let _ = tokio::time::timeout(CLOSE_GRACE, take_input).await;
        }
    }
}

/// The caller's side: a [`Shell`] whose terminal and control cross
/// `tunnel` to the owner, which has started it already.
pub fn open(tunnel: Box<dyn AsyncStream>) -> Shell {
    let (terminal, pump) = tokio::io::duplex(MAX_DATA);
    let (exit_tx, exit_rx) = watch::channel(None);
    let (resize_tx, resize_rx) = mpsc::channel(RESIZES_QUEUED);
    tokio::spawn(relay(tunnel, pump, exit_tx, resize_rx));
    Shell {
        terminal: Box::new(terminal),
        control: Box::new(TunnelledControl {
            resizes: resize_tx,
            exit: exit_rx,
        }),
    }
}

type ExitStatus = Option<Result<ShellExit, String>>;

async fn relay(
    tunnel: Box<dyn AsyncStream>,
    pump: tokio::io::DuplexStream,
    exit: watch::Sender<ExitStatus>,
    mut resizes: mpsc::Receiver<TerminalSize>,
) {
    let (mut from_owner, mut to_owner) = tokio::io::split(tunnel);
    let (mut typed, mut shown) = tokio::io::split(pump);
    let take_output = async {
        let ended = loop {
            match read_frame(&mut from_owner).await {
                Ok(Some(Frame::Data(bytes))) => {
                    if shown.write_all(&bytes).await.is_err() {
                        break Err("the terminal was closed".to_string());
                    }
                }
                Ok(Some(Frame::Eof)) => {
                    let _ = shown.shutdown().await;
                }
                Ok(Some(Frame::Exit(status))) => break Ok(status),
                Ok(Some(Frame::Failed(why))) => break Err(why),
                Ok(Some(Frame::Resize(_))) => break Err("the owner sent a resize".into()),
                Ok(None) => break Err("the owner closed the tunnel".into()),
                Err(e) => break Err(e.to_string()),
            }
        };
        // The proxy reads to the end of the output before it asks for the
        // status: the end comes first.
        let _ = shown.shutdown().await;
        let _ = exit.send(Some(ended));
    };
    let send_input = async {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let frame = tokio::select! {
                read = typed.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => Frame::Data(buf[..n].to_vec()),
                },
                size = resizes.recv() => match size {
                    Some(size) => Frame::Resize(size),
                    None => break,
                },
            };
            if write_frame(&mut to_owner, &frame).await.is_err() {
                break;
            }
        }
    };
    // Either end hangs the session up: dropping the tunnel tells the owner.
    tokio::select! {
        _ = take_output => {}
        _ = send_input => {}
    }
}

struct TunnelledControl {
    resizes: mpsc::Sender<TerminalSize>,
    exit: watch::Receiver<ExitStatus>,
}

#[async_trait]
impl ShellControl for TunnelledControl {
    async fn resize(&self, size: TerminalSize) -> Result<(), ShellError> {
        match self.resizes.try_send(size) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(ShellError("the shell's tunnel is closed".into()))
            }
        }
    }

    async fn wait(&self) -> Result<ShellExit, ShellError> {
        let mut exit = self.exit.clone();
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShellError("the shell's tunnel closed without a status".into()))?
            .clone();
        match status {
            Some(Ok(exit)) => Ok(exit),
            Some(Err(why)) => Err(ShellError(why)),
            None => Err(ShellError("no status".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let frames = [
            Frame::Data(b"ls\n".to_vec()),
            Frame::Resize(TerminalSize {
                rows: 50,
                cols: 132,
            }),
            Frame::Eof,
            Frame::Exit(ShellExit {
                code: Some(3),
                signal: None,
            }),
            Frame::Exit(ShellExit {
                code: Some(137),
                signal: Some(9),
            }),
            Frame::Failed("gone".into()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f));
        }
        let mut r = wire.as_slice();
        for f in frames {
            assert_eq!(read_frame(&mut r).await.ok().flatten(), Some(f));
        }
        assert!(matches!(read_frame(&mut r).await, Ok(None)));

        let mut over = vec![DATA];
        over.extend_from_slice(&((MAX_DATA + 1) as u32).to_be_bytes());
        assert!(read_frame(&mut over.as_slice()).await.is_err());
        assert!(read_frame(&mut [9u8, 0, 0, 0, 0].as_slice()).await.is_err());
        assert!(read_frame(&mut [RESIZE, 0, 0, 0, 1, 7].as_slice())
            .await
            .is_err());
        // Cut inside a frame is an error, not a clean end.
        assert!(read_frame(&mut [DATA, 0, 0, 0, 4, 1].as_slice())
            .await
            .is_err());
    }

    /// A shell on the owner side whose terminal is one end of a pipe.
    struct Owned(watch::Receiver<Option<ShellExit>>);

    #[async_trait]
    impl ShellControl for Owned {
        async fn resize(&self, _: TerminalSize) -> Result<(), ShellError> {
            Ok(())
        }
        async fn wait(&self) -> Result<ShellExit, ShellError> {
            let mut rx = self.0.clone();
            let exit = *rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ShellError("dropped".into()))?;
            exit.ok_or_else(|| ShellError("none".into()))
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_the_status_follows_the_output() {
        let (caller_end, owner_end) = tokio::io::duplex(4096);
        let (guest_terminal, mut guest) = tokio::io::duplex(4096);
        let (exit_tx, exit_rx) = watch::channel(None);
        let owner = tokio::spawn(serve(
            owner_end,
            Shell {
                terminal: Box::new(guest_terminal),
                control: Box::new(Owned(exit_rx)),
            },
        ));
        let mut shell = open(Box::new(caller_end));
        shell.terminal.write_all(b"echo hi\n").await.ok();
        let mut typed = [0u8; 8];
        guest.read_exact(&mut typed).await.ok();
        assert_eq!(&typed, b"echo hi\n");
        guest.write_all(b"hi\n").await.ok();
        let _ = exit_tx.send(Some(ShellExit {
            code: Some(0),
            signal: None,
        }));
        drop(guest);
        let mut shown = Vec::new();
        shell.terminal.read_to_end(&mut shown).await.ok();
        assert_eq!(shown, b"hi\n");
        let exit = shell.control.wait().await.ok();
        assert_eq!(exit.and_then(|e| e.code), Some(0));
        drop(shell);
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), owner)
                .await
                .is_ok()
        );
    }
}
