//! Per-session state and request dispatch. Runs on the reader thread only;
//! long-running work (process output, file reads, TCP streams) lives on
//! helper threads that talk back through a [`Sender`].

use std::collections::HashMap;
use std::sync::Arc;

use ember_agent_protocol::{
    self as proto, Frame, FrameKind, GuestMessage, HostMessage, HANDSHAKE_CHANNEL, PROTOCOL_VERSION,
};

use crate::channel::{Failure, Sender, Wire};
use crate::exec::ExecHandle;
use crate::files::Upload;
use crate::main_process::MainProcess;
use crate::metadata::Accepts;
use crate::pty::PtyHandle;
use crate::streams::StreamHandle;
use crate::{exec, files, health, pty, restore, streams};

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A PID-1 reaper collects detached processes; otherwise a thread per
    /// detached process waits for it.
    pub reaper_running: bool,
}

/// What a live channel is doing. `ReadFile` runs to completion on its own
/// thread and never needs the host's frames, so it has no entry.
enum Channel {
    Exec(Arc<ExecHandle>),
    Upload(Upload),
    Stream(StreamHandle),
    Pty(PtyHandle),
}

impl Channel {
    fn is_done(&self) -> bool {
        match self {
            Channel::Exec(h) => h.is_done(),
            Channel::Upload(_) => false,
            Channel::Stream(s) => s.is_done(),
            Channel::Pty(p) => p.is_done(),
        }
    }

    /// Ends the channel without telling the host (the session is over or
    /// the host reset it). Running processes are left alone, except that a
    /// terminal hangs up (its session gets SIGHUP), as when a window closes.
    fn abandon(self) {
        match self {
            Channel::Exec(h) => h.discard_output(),
            Channel::Upload(_) => {}
            Channel::Stream(mut s) => s.close(),
            Channel::Pty(p) => p.close(),
        }
    }
}

pub struct Agent {
    wire: Arc<Wire>,
    sender: Sender,
    session: Option<u64>,
    channels: HashMap<u32, Channel>,
    config: Config,
    /// Outlives sessions: a host that reconnects asks for it again.
    main: Arc<MainProcess>,
    /// Shared with the metadata listener, which outlives sessions.
    metadata: Arc<Accepts>,
    #[cfg(feature = "hostile")]
    hostile: crate::hostile::Trigger,
}

impl Agent {
    pub fn new(wire: Arc<Wire>, config: Config) -> Self {
        Self {
            sender: wire.sender(),
            wire,
            session: None,
            channels: HashMap::new(),
            config,
            main: Arc::default(),
            metadata: Arc::default(),
            #[cfg(feature = "hostile")]
            hostile: Default::default(),
        }
    }

    pub fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }

    /// Where the metadata listener finds the host's `AcceptMetadata`s.
    pub fn metadata_accepts(&self) -> Arc<Accepts> {
        Arc::clone(&self.metadata)
    }

    pub fn handle(&mut self, frame: Frame) {
        if frame.channel == HANDSHAKE_CHANNEL {
            if frame.kind == FrameKind::Control {
                self.handshake(&frame.payload);
            }
            return;
        }
        // Until a host has said Hello, anything else is stale.
        if self.session.is_none() {
            return;
        }
        match frame.kind {
            FrameKind::Control => self.request(frame.channel, &frame.payload),
            _ => self.bulk(frame),
        }
    }

    fn handshake(&mut self, payload: &[u8]) {
        let (session, protocol) = match proto::decode::<HostMessage>(payload) {
            Ok(HostMessage::Hello { session, protocol }) => (session, protocol),
            // Before a session exists, channel 0 garbage is stale noise.
            _ if self.session.is_none() => return,
            Ok(_) => {
                self.reply_failure(
                    HANDSHAKE_CHANNEL,
                    Failure::invalid("only Hello is accepted on channel 0"),
                );
                return;
            }
            Err(e) => {
                self.reply_failure(HANDSHAKE_CHANNEL, Failure::invalid(e.to_string()));
                return;
            }
        };
        if protocol != PROTOCOL_VERSION {
            self.reply_failure(
                HANDSHAKE_CHANNEL,
                Failure::invalid(format!(
                    "host speaks protocol {protocol}, agent speaks {PROTOCOL_VERSION}"
                )),
            );
            return;
        }
        if self.session != Some(session) {
            if self.session.is_some() {
                log!(
                    "new session {session}: dropping {} channel(s)",
                    self.channels.len()
                );
            }
            for (_, ch) in self.channels.drain() {
                ch.abandon();
            }
            self.sender = self.wire.next_epoch();
            self.session = Some(session);
        }
        self.sender.control(
            HANDSHAKE_CHANNEL,
            &GuestMessage::HelloAck {
                session,
                protocol: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        );
    }

    fn request(&mut self, channel: u32, payload: &[u8]) {
        self.channels.retain(|_, ch| !ch.is_done());
        if self.channels.contains_key(&channel) {
            self.reply_failure(
                channel,
                Failure::invalid(format!("channel {channel} is busy")),
            );
            return;
        }
        let msg = match proto::decode::<HostMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                self.reply_failure(channel, Failure::invalid(e.to_string()));
                return;
            }
        };
        #[cfg(feature = "hostile")]
        match &msg {
            HostMessage::Restored { .. } => self.hostile.arm(),
            HostMessage::Connect { .. } => {
                if let Some(attack) = self.hostile.fire() {
                    crate::hostile::start(attack, channel, &self.sender);
                    return;
                }
            }
            _ => {}
        }
        let sender = &self.sender;
        let result: Result<Option<Channel>, Failure> = match msg {
            HostMessage::Hello { .. } => Err(Failure::invalid("Hello belongs on channel 0")),
            HostMessage::Exec(req) if req.main && req.tty.is_some() => {
                Err(Failure::invalid("a main process cannot run on a terminal"))
            }
            HostMessage::Exec(req) if req.tty.is_some() => {
                let size = req.tty.unwrap_or_default();
                pty::start(req, size, channel, sender).map(|p| Some(Channel::Pty(p)))
            }
            HostMessage::Exec(req) => {
                exec::start(req, channel, sender, self.config.reaper_running, &self.main)
                    .map(|h| h.map(Channel::Exec))
            }
            HostMessage::WaitMainExit => self.main.wait(channel, sender).map(|()| None),
            HostMessage::WriteFile { path, mode } => {
                Upload::create(&path, mode).map(|u| Some(Channel::Upload(u)))
            }
            HostMessage::ReadFile { path, max_bytes } => {
                files::read(&path, max_bytes, channel, sender).map(|()| None)
            }
            HostMessage::Connect { port } => {
                streams::open(port, channel, sender).map(|s| Some(Channel::Stream(s)))
            }
            HostMessage::AcceptMetadata => self
                .metadata
                .offer(channel, sender)
                .map(|s| Some(Channel::Stream(s))),
            HostMessage::Health => {
                sender.control(channel, &GuestMessage::Health(health::report()));
                Ok(None)
            }
            HostMessage::Restored {
                realtime_secs,
                realtime_nanos,
                entropy,
            } => restore::apply(realtime_secs, realtime_nanos, &entropy).map(|()| {
                sender.control(channel, &GuestMessage::Ok);
                None
            }),
            HostMessage::Signal { target, signal } => self.signal(target, signal).map(|()| {
                sender.control(channel, &GuestMessage::Ok);
                None
            }),
            HostMessage::Resize { target, rows, cols } => {
                self.resize(target, rows, cols).map(|()| {
                    sender.control(channel, &GuestMessage::Ok);
                    None
                })
            }
        };
        match result {
            Ok(Some(ch)) => {
                self.channels.insert(channel, ch);
            }
            Ok(None) => {}
            Err(f) => self.reply_failure(channel, f),
        }
    }

    fn signal(&self, target: u32, signal: i32) -> Result<(), Failure> {
        match self.channels.get(&target) {
            Some(Channel::Exec(h)) => h.signal(signal),
            Some(Channel::Pty(p)) => p.signal(signal),
            _ => Err(Failure::new(
                proto::ErrorKind::NotFound,
                format!("no running process on channel {target}"),
            )),
        }
    }

    fn resize(&self, target: u32, rows: u16, cols: u16) -> Result<(), Failure> {
        match self.channels.get(&target) {
            Some(Channel::Pty(p)) => p.resize(proto::TtySize { rows, cols }),
            _ => Err(Failure::new(
                proto::ErrorKind::NotFound,
                format!("no terminal on channel {target}"),
            )),
        }
    }

    /// Data, Eof, Window and Reset frames for an open channel.
    fn bulk(&mut self, frame: Frame) {
        let channel = frame.channel;
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let finished = match (ch, frame.kind) {
            (_, FrameKind::Reset) => true,
            (Channel::Upload(up), FrameKind::Data) => match up.write(&frame.payload) {
                Ok(()) => false,
                Err(f) => {
                    self.sender.failure(channel, f);
                    true
                }
            },
            (Channel::Upload(_), FrameKind::Eof) => {
                if let Some(Channel::Upload(up)) = self.channels.remove(&channel) {
                    match up.finish() {
                        Ok(bytes) => self
                            .sender
                            .control(channel, &GuestMessage::FileWritten { bytes }),
                        Err(f) => self.sender.failure(channel, f),
                    };
                }
                return;
            }
            (Channel::Stream(s), FrameKind::Data) => {
                if s.host_data(frame.payload) {
                    false
                } else {
                    log!("host overran the window on channel {channel}; resetting");
                    self.sender.reset(channel);
                    true
                }
            }
            (Channel::Stream(s), FrameKind::Eof) => {
                s.host_eof();
                false
            }
            (Channel::Stream(s), FrameKind::Window) => {
                s.grant(frame.window_credit());
                false
            }
            (Channel::Pty(p), FrameKind::Data) => {
                if p.host_data(frame.payload) {
                    false
                } else {
                    log!("host overran the window on channel {channel}; resetting");
                    self.sender.reset(channel);
                    true
                }
            }
            (Channel::Pty(p), FrameKind::Eof) => {
                p.host_eof();
                false
            }
            (Channel::Pty(p), FrameKind::Window) => {
                p.grant(frame.window_credit());
                false
            }
            _ => false,
        };
        if finished {
            if let Some(ch) = self.channels.remove(&channel) {
                ch.abandon();
            }
        }
    }

    fn reply_failure(&self, channel: u32, failure: Failure) {
        self.sender.failure(channel, failure);
    }
}
