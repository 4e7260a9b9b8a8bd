//! Test-only (`--features hostile`): an agent that behaves until it is
//! told to attack its host, so the host's bounds can be tested against a
//! real guest.
//!
//! A `Restored` arms it if `/ember-hostile` exists: its first word names
//! the attack. The next `Connect` (after a restore the host calls the
//! app's hooks that way) is answered `Connected`, and then the attack runs
//! on that channel instead of a TCP stream. An image built with
//! `RUN echo flood > /ember-hostile` builds normally (builds restore
//! nothing) and turns hostile when it runs.

use std::time::{SystemTime, UNIX_EPOCH};

use ember_agent_protocol::{self as proto, encode_raw, FrameKind, GuestMessage, MAX_PAYLOAD};

use crate::channel::Sender;
use crate::spawn_thread;

const TRIGGER_FILE: &str = "/ember-hostile";
/// Bytes one attack sends at most, so a host that never stops reading
/// does not keep a guest busy forever.
const ATTACK_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Stream data far beyond the host's window.
    Flood,
    /// Random bytes and frames with bad CRCs.
    Garbage,
    /// Control messages larger than the host accepts.
    Oversized,
    /// Frames on thousands of channels the host never opened.
    Channels,
}

impl Attack {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "flood" => Self::Flood,
            "garbage" => Self::Garbage,
            "oversized" => Self::Oversized,
            "channels" => Self::Channels,
            _ => return None,
        })
    }
}

/// Armed by a restore, fired by the next connect.
#[derive(Default)]
pub struct Trigger(Option<Attack>);

impl Trigger {
    pub fn arm(&mut self) {
        let Ok(text) = std::fs::read_to_string(TRIGGER_FILE) else {
            return;
        };
        let word = text.split_whitespace().next().unwrap_or_default();
        match Attack::parse(word) {
            Some(attack) => {
                log!("hostile: armed with {attack:?}");
                self.0 = Some(attack);
            }
            None => log!("hostile: unknown attack {word:?} in {TRIGGER_FILE}"),
        }
    }

    pub fn fire(&mut self) -> Option<Attack> {
        self.0.take()
    }
}

/// Answers the connect and attacks from a thread of its own.
pub fn start(attack: Attack, channel: u32, sender: &Sender) {
    let sender = sender.clone();
    let spawned = spawn_thread(format!("hostile-{channel}"), move || {
        log!("hostile: {attack:?} on channel {channel}");
        if sender.control(channel, &GuestMessage::Connected) {
            run(attack, channel, &sender);
        }
        log!("hostile: {attack:?} stopped");
    });
    if let Err(e) = spawned {
        log!("hostile: cannot start: {e}");
    }
}

fn run(attack: Attack, channel: u32, sender: &Sender) {
    let mut rng = XorShift::seeded();
    let mut sent = 0u64;
    while sent < ATTACK_BYTES {
        let bytes = match attack {
            Attack::Flood => frame(FrameKind::Data as u8, channel, &[b'f'; MAX_PAYLOAD]),
            Attack::Garbage => {
                let mut junk = vec![0u8; 64 * 1024];
                junk.iter_mut().for_each(|b| *b = rng.byte());
                // Something that looks like a frame, with a bad CRC, too.
                let mut bad = frame(FrameKind::Data as u8, channel, &junk[..4096]);
                let last = bad.len() - 1;
                bad[last] ^= 0xff;
                junk.extend(bad);
                junk
            }
            Attack::Oversized => {
                let msg = proto::encode(&GuestMessage::Error {
                    kind: proto::ErrorKind::Io,
                    message: "x".repeat(MAX_PAYLOAD - 64),
                })
                .unwrap_or_default();
                frame(FrameKind::Control as u8, channel, &msg)
            }
            Attack::Channels => (1..=1024u32)
                .flat_map(|i| frame(FrameKind::Data as u8, channel + i, b"open?"))
                .collect(),
        };
        if !sender.raw(&bytes) {
            return; // the host went away (or stopped reading and reset)
        }
        sent += bytes.len() as u64;
    }
}

fn frame(kind: u8, channel: u32, payload: &[u8]) -> Vec<u8> {
    encode_raw(kind, channel, payload).unwrap_or_default()
}

/// Not for anything but noise: the attack needs bytes, not secrets.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Self(nanos | 1)
    }

    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}
