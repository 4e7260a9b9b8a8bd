//! The shell's text messages, as the real service frames them, plus
//! Ember's one extension (the exit status).

use rand::RngCore;
use serde::Deserialize;

use crate::upstream::{ShellExit, TerminalSize};

/// Text frames longer than this are not parsed: no control message comes
/// close, and a hostile client should not make the proxy parse megabytes.
pub(crate) const MAX_CONTROL_TEXT: usize = 4096;

/// What a text frame from the client asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientText {
    Resize(TerminalSize),
    /// Anything else: unknown types (a later client's), malformed JSON,
    /// zero sizes, oversized text. Ignored so the session goes on; the
    /// reason is for the debug log.
    Ignored(&'static str),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Resize { cols: u16, rows: u16 },
}

/// Reads a client text frame: `{"type":"resize","cols":C,"rows":R}`.
pub(crate) fn parse_client_text(text: &str) -> ClientText {
    if text.len() > MAX_CONTROL_TEXT {
        return ClientText::Ignored("longer than a control message");
    }
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
            ClientText::Resize(TerminalSize { cols, rows })
        }
        Ok(ClientMessage::Resize { .. }) => ClientText::Ignored("a resize to zero cells"),
        Err(_) => ClientText::Ignored("not a control message"),
    }
}

/// The first frame of every session.
pub(crate) fn session_init(session_id: &str) -> String {
    serde_json::json!({ "type": "session_init", "session_id": session_id }).to_string()
}

/// Ember's extension, sent just before the close: the real service says
/// only "shell exited", which leaves a client no exit status to exit
/// with. A shell killed by a signal reports 128 + the signal, as shells
/// do for their children, and the signal itself.
pub(crate) fn exit_text(exit: ShellExit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => serde_json::json!({ "type": "exit", "code": code }),
        (None, Some(signal)) => serde_json::json!({
            "type": "exit",
            "code": 128i32.saturating_add(signal),
            "signal": signal,
        }),
        // The agent reports one or the other; a guest that reports neither
        // gets the shells' "something went wrong".
        (None, None) => serde_json::json!({ "type": "exit", "code": 1 }),
    }
    .to_string()
}

/// A random (version 4) UUID in its usual text form.
pub(crate) fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_is_read_with_any_field_order_and_extra_fields() {
        assert_eq!(
            parse_client_text(r#"{"type":"resize","cols":120,"rows":40}"#),
            ClientText::Resize(TerminalSize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(
            parse_client_text(r#"{"rows":1,"extra":[1],"cols":65535,"type":"resize"}"#),
            ClientText::Resize(TerminalSize {
                cols: 65535,
                rows: 1
            })
        );
    }

    #[test]
    fn everything_else_is_ignored() {
        for text in [
            "",
            "resize",
            "{}",
            r#"{"type":"resize"}"#,
            r#"{"type":"resize","cols":0,"rows":24}"#,
            r#"{"type":"resize","cols":80,"rows":0}"#,
            r#"{"type":"resize","cols":65536,"rows":24}"#,
            r#"{"type":"resize","cols":-1,"rows":24}"#,
            r#"{"type":"resize","cols":"80","rows":24}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"session_init","session_id":"x"}"#,
            r#"{"resize":{"rows":24,"cols":80}}"#,
            r#"[{"type":"resize","cols":80,"rows":24}]"#,
        ] {
            assert!(
                matches!(parse_client_text(text), ClientText::Ignored(_)),
                "{text}"
            );
        }
        let padded = format!(
            r#"{{"type":"resize","cols":80,"rows":24}}{}"#,
            " ".repeat(MAX_CONTROL_TEXT)
        );
        assert_eq!(
            parse_client_text(&padded),
            ClientText::Ignored("longer than a control message")
        );
    }

    #[test]
    fn server_messages() {
        let init: serde_json::Value = serde_json::from_str(&session_init("abc")).unwrap();
        assert_eq!(
            init,
            serde_json::json!({"type": "session_init", "session_id": "abc"})
        );
        let exit = |code, signal| -> serde_json::Value {
            serde_json::from_str(&exit_text(ShellExit { code, signal })).unwrap()
        };
        assert_eq!(
            exit(Some(3), None),
            serde_json::json!({"type": "exit", "code": 3})
        );
        assert_eq!(
            exit(None, Some(9)),
            serde_json::json!({"type": "exit", "code": 137, "signal": 9})
        );
        assert_eq!(exit(None, None)["code"], 1);
    }

    #[test]
    fn session_ids_are_fresh_v4_uuids() {
        let a = new_session_id();
        assert_ne!(a, new_session_id());
        let groups: Vec<&str> = a.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{a}");
        assert!(a
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(groups[2].starts_with('4'), "{a}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{a}"
        );
    }
}
