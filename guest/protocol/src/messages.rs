//! Control messages. Each request travels on a fresh channel id chosen by the
//! host; every reply, and any bulk data that belongs to the request, uses the
//! same channel.

use serde::{Deserialize, Serialize};

/// Upper bound on one JSON control message, enforced by both decoders: one
/// control message travels in one frame.
pub const MAX_CONTROL_BYTES: usize = crate::MAX_PAYLOAD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Starts a session. The agent drops every channel of an earlier session
    /// and answers `HelloAck` with the same `session`. The host repeats it
    /// until answered: virtio-serial loses writes made right after connect.
    Hello { session: u64, protocol: u32 },
    /// Runs a process. Without `detach`, stdout comes back as `Data`, stderr
    /// as `Stderr`, then one `Eof`, then `Exited`.
    Exec(ExecRequest),
    /// Creates or truncates `path`; the host then sends its bytes as `Data`
    /// and an `Eof`; the agent answers `FileWritten`.
    WriteFile { path: String, mode: u32 },
    /// The agent answers `FileStart`, sends the contents as `Data`, an `Eof`,
    /// or `Error` when the file is missing or larger than `max_bytes`.
    ReadFile { path: String, max_bytes: u64 },
    /// Opens a TCP connection to `127.0.0.1:port` in the guest; `Connected`
    /// or `Error`. Then both sides exchange `Data`/`Eof` under `Window`
    /// flow control; `Reset` tears it down.
    Connect { port: u16 },
    /// Waits for the next connection a guest process makes to the metadata
    /// address (169.254.169.254:80, the agent's own listener): `Connected`
    /// when one arrives, then the channel is a stream exactly as after
    /// `Connect`. The host keeps a few of these outstanding so that channel
    /// ids stay host-chosen; with none outstanding the agent closes the
    /// guest's connection. More than [`MAX_METADATA_ACCEPTS`] outstanding is
    /// answered `Error` (`too_large`).
    AcceptMetadata,
    /// Liveness and basic guest facts; answered by `Health`.
    Health,
    /// Sent after a restore: the agent steps CLOCK_REALTIME to the host's
    /// time and mixes `entropy` into the kernel RNG and forces a reseed, so
    /// clones of one snapshot never share randomness.
    Restored {
        realtime_secs: i64,
        realtime_nanos: u32,
        #[serde(with = "base64_bytes")]
        entropy: Vec<u8>,
    },
    /// Sends a signal to a process started by `Exec` on `target` channel.
    Signal { target: u32, signal: i32 },
    /// Sets the terminal size of a `tty` exec on `target` channel (the
    /// kernel then sends SIGWINCH to its foreground job); answered `Ok`.
    Resize { target: u32, rows: u16, cols: u16 },
    /// Answered `Exited` once the guest's main process (`ExecRequest::main`)
    /// has ended: at once if it already has. `Error` (`NotFound`) when no
    /// main process was started. The agent keeps a few such waits; one
    /// from an ended session is forgotten, so the host asks again after
    /// every (re)connect.
    WaitMainExit,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Replaces the environment entirely when non-empty; the agent supplies
    /// a default `PATH` otherwise.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// Bytes written to the process's stdin, then closed (at most
    /// [`MAX_EXEC_STDIN`]).
    #[serde(default, with = "base64_bytes")]
    pub stdin: Vec<u8>,
    /// Start in the background, in its own session: the agent answers
    /// `Started` and keeps no pipes. Output goes to `log_path` if set.
    #[serde(default)]
    pub detach: bool,
    #[serde(default)]
    pub log_path: Option<String>,
    /// This detached process is the guest's main process (the image's
    /// command): the agent keeps its exit status for `WaitMainExit`. At
    /// most one per guest; needs `detach`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub main: bool,
    /// Run on a new pseudo-terminal of this size instead of pipes: the
    /// process is a session leader with the terminal as its controlling
    /// terminal and stdin/stdout/stderr. Output (stdout and stderr
    /// together) comes back as `Data` under `Window` flow control; the
    /// host's `Data` is typed into the terminal and acknowledged with
    /// `Window` (at most `INITIAL_WINDOW` unacknowledged); the host's `Eof`
    /// types the terminal's EOF character (^D), as a terminal has no
    /// half-close. When the process exits the agent sends the output still
    /// buffered, `Eof`, then `Exited`, and hangs the terminal up. A host
    /// `Reset` hangs it up at once (SIGHUP). Cannot be combined with
    /// `detach` or `stdin`. `TERM` defaults to `xterm-256color`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for TtySize {
    /// The classic VT100 size.
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// Outstanding `AcceptMetadata` requests the agent keeps per session.
pub const MAX_METADATA_ACCEPTS: usize = 16;

/// Most stdin an `ExecRequest` may carry inline: base64 inside one control
/// message must stay under [`MAX_CONTROL_BYTES`].
pub const MAX_EXEC_STDIN: usize = 128 * 1024;

/// Byte fields travel as base64 strings: JSON arrays of numbers would cost
/// four times the space of the bytes.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    HelloAck {
        session: u64,
        protocol: u32,
        agent_version: String,
    },
    /// A process has started (every `Exec`, detached or not).
    Started {
        pid: u32,
    },
    /// A non-detached process ended; always after its output and `Eof`.
    /// Also the answer to `WaitMainExit`.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    FileWritten {
        bytes: u64,
    },
    FileStart {
        size: u64,
    },
    Connected,
    Health(HealthReport),
    /// A request without a more specific answer succeeded.
    Ok,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub agent_version: String,
    pub uptime_ms: u64,
    pub boot_id: String,
    pub mem_available_kib: u64,
    /// The guest's CLOCK_REALTIME, so the host can check it after a restore.
    #[serde(default)]
    pub realtime_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    InvalidRequest,
    TooLarge,
    ConnectionRefused,
    Io,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::NotFound => "not found",
            Self::PermissionDenied => "permission denied",
            Self::InvalidRequest => "invalid request",
            Self::TooLarge => "too large",
            Self::ConnectionRefused => "connection refused",
            Self::Io => "i/o error",
        };
        f.write_str(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("control message of {0} bytes exceeds {MAX_CONTROL_BYTES}")]
    TooLarge(usize),
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes a control payload with the size bound applied first.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, MessageError> {
    if payload.len() > MAX_CONTROL_BYTES {
        return Err(MessageError::TooLarge(payload.len()));
    }
    Ok(serde_json::from_slice(payload)?)
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_CONTROL_BYTES {
        return Err(MessageError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = HostMessage::Exec(ExecRequest {
            argv: vec!["echo".into(), "hi".into()],
            env: vec![("A".into(), "b".into())],
            ..Default::default()
        });
        assert_eq!(decode::<HostMessage>(&encode(&m).unwrap()).unwrap(), m);
        let g = GuestMessage::Error {
            kind: ErrorKind::NotFound,
            message: "x".into(),
        };
        assert_eq!(decode::<GuestMessage>(&encode(&g).unwrap()).unwrap(), g);
    }

    #[test]
    fn tty_is_optional_on_the_wire() {
        // A request from a host that predates `tty` still decodes.
        let old = br#"{"type":"exec","argv":["sh"]}"#;
        match decode::<HostMessage>(old).unwrap() {
            HostMessage::Exec(req) => assert_eq!(req.tty, None),
            other => panic!("{other:?}"),
        }
        let plain = encode(&HostMessage::Exec(ExecRequest::default())).unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains("tty"));
        let m = HostMessage::Exec(ExecRequest {
            argv: vec!["sh".into()],
            tty: Some(TtySize {
                rows: 50,
                cols: 132,
            }),
            ..Default::default()
        });
        assert_eq!(decode::<HostMessage>(&encode(&m).unwrap()).unwrap(), m);
        let a = HostMessage::AcceptMetadata;
        assert_eq!(
            String::from_utf8(encode(&a).unwrap()).unwrap(),
            r#"{"type":"accept_metadata"}"#
        );
        let r = HostMessage::Resize {
            target: 3,
            rows: 1,
            cols: 2,
        };
        assert_eq!(decode::<HostMessage>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn main_is_optional_on_the_wire() {
        // An exec from a host that predates `main` still decodes, and one
        // that is not `main` encodes as before (an older agent ignores the
        // field it does not know either way).
        let old = br#"{"type":"exec","argv":["sh"],"detach":true}"#;
        match decode::<HostMessage>(old).unwrap() {
            HostMessage::Exec(req) => assert!(!req.main && req.detach),
            other => panic!("{other:?}"),
        }
        let plain = encode(&HostMessage::Exec(ExecRequest::default())).unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains("main"));
        let m = HostMessage::Exec(ExecRequest {
            argv: vec!["app".into()],
            detach: true,
            main: true,
            ..Default::default()
        });
        assert_eq!(decode::<HostMessage>(&encode(&m).unwrap()).unwrap(), m);
        let wait = encode(&HostMessage::WaitMainExit).unwrap();
        assert_eq!(wait, br#"{"type":"wait_main_exit"}"#);
        assert_eq!(
            decode::<HostMessage>(&wait).unwrap(),
            HostMessage::WaitMainExit
        );
    }

    #[test]
    fn largest_stdin_fits_one_control_message() {
        let m = HostMessage::Exec(ExecRequest {
            argv: vec!["cat".into()],
            stdin: vec![0xff; MAX_EXEC_STDIN],
            ..Default::default()
        });
        let bytes = encode(&m).unwrap();
        assert!(bytes.len() <= MAX_CONTROL_BYTES);
        assert_eq!(decode::<HostMessage>(&bytes).unwrap(), m);
    }

    #[test]
    fn oversized_and_malformed_messages_are_errors() {
        assert!(matches!(
            decode::<HostMessage>(&vec![b' '; MAX_CONTROL_BYTES + 1]),
            Err(MessageError::TooLarge(_))
        ));
        assert!(decode::<HostMessage>(b"{\"type\":\"nope\"}").is_err());
    }
}
