//! The metadata listener's bookkeeping, with the host played over a
//! socketpair and the guest process played by a TCP client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ember_agent_protocol::{
    ErrorKind, Frame, FrameKind, GuestMessage, HostMessage, MAX_METADATA_ACCEPTS,
};

use crate::tests::Host;

fn guest_connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock
}

/// True when the agent closed the guest's connection without a word.
fn closed_unanswered(mut sock: TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(sock.read(&mut buf), Ok(0) | Err(_))
}

/// Frames until a control one, skipping `Window` acknowledgements.
fn next_non_window(host: &mut Host) -> Frame {
    loop {
        let f = host.recv();
        if f.kind != FrameKind::Window {
            return f;
        }
    }
}

#[test]
fn a_guest_connection_becomes_the_stream_of_an_outstanding_accept() {
    let (mut host, addr) = Host::connect_with_metadata();
    host.control(3, &HostMessage::AcceptMetadata);
    host.control(4, &HostMessage::AcceptMetadata);
    // Nothing is answered until a guest process connects.
    assert!(host.try_recv(Duration::from_millis(200)).is_none());

    let mut guest = guest_connect(addr);
    guest.write_all(b"PUT /latest/api/token").unwrap();
    // The oldest accept takes it.
    assert_eq!(host.recv_control(3), GuestMessage::Connected);
    let data = next_non_window(&mut host);
    assert_eq!((data.kind, data.channel), (FrameKind::Data, 3));
    assert_eq!(data.payload, b"PUT /latest/api/token");

    host.send(Frame::new(FrameKind::Data, 3, b"HTTP/1.1 200 OK".to_vec()));
    host.send(Frame::new(FrameKind::Eof, 3, Vec::new()));
    let mut answer = Vec::new();
    guest.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"HTTP/1.1 200 OK");
    drop(guest);
    let eof = next_non_window(&mut host);
    assert_eq!((eof.kind, eof.channel), (FrameKind::Eof, 3));

    // The second accept is still there for the next connection.
    let _guest = guest_connect(addr);
    assert_eq!(host.recv_control(4), GuestMessage::Connected);
}

#[test]
fn without_an_outstanding_accept_the_guest_connection_is_closed() {
    let (mut host, addr) = Host::connect_with_metadata();
    assert!(closed_unanswered(guest_connect(addr)));
    // An accept offered afterwards serves the next connection, not a stale one.
    host.control(5, &HostMessage::AcceptMetadata);
    let _guest = guest_connect(addr);
    assert_eq!(host.recv_control(5), GuestMessage::Connected);
}

#[test]
fn a_connection_waits_briefly_for_the_host_to_offer_an_accept() {
    let (mut host, addr) = Host::connect_with_metadata();
    let guest = guest_connect(addr);
    std::thread::sleep(Duration::from_millis(100));
    host.control(6, &HostMessage::AcceptMetadata);
    assert_eq!(host.recv_control(6), GuestMessage::Connected);
    drop(guest);
}

#[test]
fn outstanding_accepts_are_bounded_and_a_reset_frees_one() {
    let (mut host, addr) = Host::connect_with_metadata();
    let first = 10;
    for i in 0..MAX_METADATA_ACCEPTS as u32 {
        host.control(first + i, &HostMessage::AcceptMetadata);
    }
    let over = first + MAX_METADATA_ACCEPTS as u32;
    host.control(over, &HostMessage::AcceptMetadata);
    assert!(matches!(
        host.recv_control(over),
        GuestMessage::Error {
            kind: ErrorKind::TooLarge,
            ..
        }
    ));
    // The host cancels the oldest; its slot is free and it never connects.
    host.send(Frame::new(FrameKind::Reset, first, Vec::new()));
    host.control(over + 1, &HostMessage::AcceptMetadata);
    assert!(host.try_recv(Duration::from_millis(200)).is_none());
    let _guest = guest_connect(addr);
    assert_eq!(host.recv_control(first + 1), GuestMessage::Connected);
}

#[test]
fn a_new_session_drops_the_old_sessions_accepts() {
    let (mut host, addr) = Host::connect_with_metadata();
    host.control(3, &HostMessage::AcceptMetadata);
    host.hello(8);
    assert!(closed_unanswered(guest_connect(addr)));
    assert!(host.try_recv(Duration::from_millis(200)).is_none());
    host.control(3, &HostMessage::AcceptMetadata);
    let _guest = guest_connect(addr);
    assert_eq!(host.recv_control(3), GuestMessage::Connected);
}
