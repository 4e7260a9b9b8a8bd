//! The multiplexer against a scripted peer speaking the wire format over
//! an in-process pipe: each test is one way a guest can misbehave.

use std::time::Duration;

use ember_agent_protocol::{
    self as proto, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, HANDSHAKE_CHANNEL,
    INITIAL_WINDOW, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::{AgentClient, AgentError, ProtocolViolation, SessionEnd};

/// The guest's end: answers the handshake, then hands each host frame to
/// the test.
struct FakeGuest {
    io: DuplexStream,
    decoder: FrameDecoder,
}

impl FakeGuest {
    async fn next(&mut self) -> Frame {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return f;
            }
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(n > 0, "host hung up");
            self.decoder.push(&buf[..n]);
        }
    }

    /// The next request (skipping repeated Hellos): its channel and message.
    async fn request(&mut self) -> (u32, HostMessage) {
        loop {
            let f = self.next().await;
            if f.channel != HANDSHAKE_CHANNEL && f.kind == FrameKind::Control {
                return (f.channel, proto::decode(&f.payload).unwrap());
            }
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.io.write_all(&frame.encode().unwrap()).await.unwrap();
    }

    async fn reply(&mut self, channel: u32, msg: &GuestMessage) {
        let payload = proto::encode(msg).unwrap();
        self.send(Frame::new(FrameKind::Control, channel, payload))
            .await;
    }
}

async fn connected() -> (AgentClient, FakeGuest) {
    let (host, guest) = tokio::io::duplex(1 << 20);
    let client = tokio::spawn(AgentClient::handshake(host, Duration::from_secs(5)));
    let mut guest = FakeGuest {
        io: guest,
        decoder: FrameDecoder::new(),
    };
    let hello = guest.next().await;
    let Ok(HostMessage::Hello { session, .. }) = proto::decode(&hello.payload) else {
        panic!("expected Hello");
    };
    let ack = GuestMessage::HelloAck {
        session,
        protocol: PROTOCOL_VERSION,
        agent_version: "test".into(),
    };
    guest.reply(HANDSHAKE_CHANNEL, &ack).await;
    (client.await.unwrap().unwrap(), guest)
}

/// Asserts the session ended with a violation matching `expected`, and
/// that a later request fails with it too.
async fn assert_ended(client: &AgentClient, expected: fn(&ProtocolViolation) -> bool) {
    let end = tokio::time::timeout(Duration::from_secs(5), client.wait_ended())
        .await
        .expect("the session ends");
    match &end {
        SessionEnd::Violation(v) => assert!(expected(v), "wrong violation: {v}"),
        other => panic!("ended without a violation: {other:?}"),
    }
    match client.health().await {
        Err(AgentError::Violation(v)) => assert!(expected(&v), "{v}"),
        other => panic!("a request after the end: {other:?}"),
    }
}

#[tokio::test]
async fn stream_data_beyond_the_window_ends_the_session() {
    let (client, mut guest) = connected().await;
    let connect = tokio::spawn({
        let client = client.clone();
        async move { client.connect(80).await }
    });
    let (channel, _) = guest.request().await;
    guest.reply(channel, &GuestMessage::Connected).await;
    let _stream = connect.await.unwrap().unwrap();
    // Nobody reads the stream, so the host grants back no more than its
    // pipe buffer holds; a guest that ignores that keeps going.
    let chunk = Frame::new(FrameKind::Data, channel, vec![7u8; MAX_PAYLOAD])
        .encode()
        .unwrap();
    let frames = 2 * INITIAL_WINDOW as usize / MAX_PAYLOAD;
    tokio::spawn(async move {
        for _ in 0..frames {
            if guest.io.write_all(&chunk).await.is_err() {
                break;
            }
        }
        guest
    });
    assert_ended(&client, |v| {
        matches!(v, ProtocolViolation::BeyondWindow { credit: 0, .. })
    })
    .await;
}

#[tokio::test]
async fn a_pending_request_fails_with_the_violation() {
    let (client, mut guest) = connected().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.sh("true").await }
    });
    let (channel, _) = guest.request().await;
    let mut bad = Frame::new(FrameKind::Data, channel, b"out".to_vec())
        .encode()
        .unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    guest.io.write_all(&bad).await.unwrap();
    match pending.await.unwrap() {
        Err(AgentError::Violation(ProtocolViolation::BadFrame(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(client.violation().unwrap().to_string().contains("CRC"));
}

#[tokio::test]
async fn garbage_after_the_handshake_ends_the_session() {
    let (client, mut guest) = connected().await;
    guest.io.write_all(&[0x55; 4096]).await.unwrap();
    assert_ended(&client, |v| matches!(v, ProtocolViolation::BadFrame(_))).await;
}

#[tokio::test]
async fn oversized_and_undecodable_control_messages_end_the_session() {
    let (client, mut guest) = connected().await;
    let big = vec![b' '; super::MAX_GUEST_CONTROL + 1];
    guest.send(Frame::new(FrameKind::Control, 1, big)).await;
    assert_ended(&client, |v| {
        matches!(v, ProtocolViolation::OversizedControl { .. })
    })
    .await;

    let (client, mut guest) = connected().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.health().await }
    });
    let (channel, _) = guest.request().await;
    guest
        .send(Frame::new(
            FrameKind::Control,
            channel,
            b"{\"type\":1}".to_vec(),
        ))
        .await;
    assert!(matches!(
        pending.await.unwrap(),
        Err(AgentError::Violation(
            ProtocolViolation::UndecodableControl { .. }
        ))
    ));
}

#[tokio::test]
async fn frames_on_channels_the_host_never_opened_end_the_session() {
    let (client, mut guest) = connected().await;
    guest
        .send(Frame::new(FrameKind::Data, 77, b"x".to_vec()))
        .await;
    assert_ended(&client, |v| {
        matches!(v, ProtocolViolation::UnknownChannel { channel: 77 })
    })
    .await;
}

#[tokio::test]
async fn flooding_a_reply_channel_ends_the_session() {
    let (client, mut guest) = connected().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.write_file("/f", b"", 0o644).await }
    });
    let (channel, _) = guest.request().await;
    // The host is busy sending the file and reads no reply until Eof.
    for _ in 0..64 {
        guest
            .send(Frame::new(FrameKind::Stderr, channel, vec![0; 16]))
            .await;
    }
    let _ = pending.await;
    assert_ended(&client, |v| matches!(v, ProtocolViolation::Flood { .. })).await;
}

#[tokio::test]
async fn late_frames_of_a_finished_request_are_dropped() {
    let (client, mut guest) = connected().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.health().await }
    });
    let (channel, _) = guest.request().await;
    guest
        .reply(
            channel,
            &GuestMessage::Error {
                kind: proto::ErrorKind::Io,
                message: "no".into(),
            },
        )
        .await;
    assert!(matches!(
        pending.await.unwrap(),
        Err(AgentError::Guest { .. })
    ));
    // Output of a forgotten request is no violation.
    for _ in 0..100 {
        guest
            .send(Frame::new(FrameKind::Data, channel, vec![1; 1024]))
            .await;
    }
    let health = tokio::spawn({
        let client = client.clone();
        async move { client.health().await }
    });
    let (next, _) = guest.request().await;
    guest.reply(next, &GuestMessage::Ok).await;
    assert!(matches!(
        health.await.unwrap(),
        Err(AgentError::Protocol(_))
    ));
    assert_eq!(client.ended(), None);
}

#[tokio::test]
async fn unflow_controlled_output_waits_for_its_reader() {
    let (client, mut guest) = connected().await;
    let exec = tokio::spawn({
        let client = client.clone();
        async move { client.sh("yes").await }
    });
    let (channel, _) = guest.request().await;
    // 96 MiB of stdout: more than the exec's 64 MiB bound, so the host
    // gives up with TooLarge after holding at most that much.
    let chunk = Frame::new(FrameKind::Data, channel, vec![b'y'; MAX_PAYLOAD])
        .encode()
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..384 {
            if guest.io.write_all(&chunk).await.is_err() {
                break;
            }
        }
        guest
    });
    assert!(matches!(
        exec.await.unwrap(),
        Err(AgentError::TooLarge { .. })
    ));
    let _guest = writer.await.unwrap();
    assert_eq!(client.ended(), None, "output is not a violation");
}

#[tokio::test]
async fn a_stream_the_host_closed_keeps_its_window() {
    let (client, mut guest) = connected().await;
    let connect = tokio::spawn({
        let client = client.clone();
        async move { client.connect(80).await }
    });
    let (channel, _) = guest.request().await;
    guest.reply(channel, &GuestMessage::Connected).await;
    drop(connect.await.unwrap().unwrap());
    // Hanging up is no licence to send more than was granted.
    let chunk = Frame::new(FrameKind::Data, channel, vec![7u8; MAX_PAYLOAD])
        .encode()
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..(2 * INITIAL_WINDOW as usize / MAX_PAYLOAD) {
            if guest.io.write_all(&chunk).await.is_err() {
                break;
            }
        }
        guest
    });
    assert_ended(&client, |v| {
        matches!(v, ProtocolViolation::BeyondWindow { .. })
    })
    .await;
}

#[tokio::test]
async fn a_main_exit_is_told_apart_from_the_connection_closing() {
    let (client, mut guest) = connected().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait_main_exit().await }
    });
    let (channel, msg) = guest.request().await;
    assert_eq!(msg, HostMessage::WaitMainExit);
    let killed = GuestMessage::Exited {
        code: None,
        signal: Some(15),
    };
    guest.reply(channel, &killed).await;
    let status = waiting.await.unwrap().unwrap();
    assert_eq!((status.code, status.signal), (None, Some(15)));
    assert_eq!(status.shell_code(), 143);

    // A wait cut short by the VM going away (a suspend, a stop).
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait_main_exit().await }
    });
    let _ = guest.request().await;
    drop(guest);
    match waiting.await.unwrap() {
        Err(AgentError::Disconnected) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn accept_metadata_becomes_a_stream_and_a_dropped_accept_is_withdrawn() {
    let (client, mut guest) = connected().await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.accept_metadata().await }
    });
    let (channel, msg) = guest.request().await;
    assert_eq!(msg, HostMessage::AcceptMetadata);
    guest.reply(channel, &GuestMessage::Connected).await;
    guest
        .send(Frame::new(FrameKind::Data, channel, b"GET /".to_vec()))
        .await;
    let mut stream = waiting.await.unwrap().unwrap();
    let mut got = [0u8; 5];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET /");

    // An accept given up before any guest connection is reset, so the
    // agent never hands a connection to it.
    let abandoned = tokio::spawn({
        let client = client.clone();
        async move { client.accept_metadata().await }
    });
    let (second, msg) = guest.request().await;
    assert_eq!(msg, HostMessage::AcceptMetadata);
    abandoned.abort();
    let reset = loop {
        let f = guest.next().await;
        if f.channel == second {
            break f;
        }
    };
    assert_eq!(reset.kind, FrameKind::Reset);
}
