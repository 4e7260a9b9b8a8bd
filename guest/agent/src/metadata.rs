//! The instance metadata address (169.254.169.254:80) inside the guest.
//!
//! AWS SDKs look for the execution role's credentials there. The agent
//! listens on it and carries each connection to the host, which answers
//! it: the host keeps a few `AcceptMetadata` requests outstanding
//! ([`Accepts`]), and each accepted connection becomes the stream of one of
//! them. The guest needs no network card for this, and nothing but the host
//! ever answers: the address lives on loopback.
//!
//! Port 80 itself stays free for the app: the kernel steers connections
//! for the address to the agent's socket (`steer.rs`).
//!
//! One thread accepts, one connection at a time: a connection that finds
//! no outstanding request waits briefly (the host replaces a used request
//! within a round trip) and is then closed. The kernel's listen backlog
//! bounds the rest.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_agent_protocol::{ErrorKind, MAX_METADATA_ACCEPTS};

use crate::channel::{Failure, Sender};
use crate::spawn_thread;
use crate::streams::{PendingStream, StreamHandle};

pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;
/// How long a guest connection waits for the host to offer a stream.
const WAIT_FOR_HOST: Duration = Duration::from_millis(500);

/// The host's outstanding `AcceptMetadata` requests, oldest first.
#[derive(Default)]
pub struct Accepts {
    queue: Mutex<VecDeque<PendingStream>>,
    offered: Condvar,
}

impl Accepts {
    fn lock(&self) -> MutexGuard<'_, VecDeque<PendingStream>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers one `AcceptMetadata`; the handle goes into the session's
    /// channel table. Requests the host reset or whose session ended are
    /// dropped first, so only live ones count against the bound.
    pub fn offer(&self, channel: u32, sender: &Sender) -> Result<StreamHandle, Failure> {
        let mut queue = self.lock();
        queue.retain(|p| !p.is_abandoned());
        if queue.len() >= MAX_METADATA_ACCEPTS {
            return Err(Failure::new(
                ErrorKind::TooLarge,
                format!("at most {MAX_METADATA_ACCEPTS} metadata accepts may be outstanding"),
            ));
        }
        let (handle, pending) = PendingStream::new(channel, sender);
        queue.push_back(pending);
        drop(queue);
        self.offered.notify_all();
        Ok(handle)
    }

    /// The oldest live request, waiting up to `wait` for one.
    fn take(&self, wait: Duration) -> Option<PendingStream> {
        let deadline = Instant::now() + wait;
        let mut queue = self.lock();
        loop {
            while let Some(pending) = queue.pop_front() {
                if !pending.is_abandoned() {
                    return Some(pending);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            queue = self
                .offered
                .wait_timeout(queue, left)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// Puts the address on loopback, listens for it and serves it from a
/// thread for the agent's whole life (a restored guest keeps the listener).
///
/// The listener is bound to an ephemeral port and port 80 is steered to it
/// (`steer.rs`), which leaves port 80 to the app. On a kernel that refuses
/// the steering the listener takes port 80 itself: then an app binding
/// `0.0.0.0:80` fails, but credentials still work.
pub fn start(accepts: Arc<Accepts>) {
    if let Err(e) = crate::net::add_loopback_address(ADDRESS) {
        log!("adding {ADDRESS} to lo: {e}");
        return;
    }
    let steered = TcpListener::bind(SocketAddr::from((ADDRESS, 0))).and_then(|listener| {
        let steering = crate::steer::steer(ADDRESS, PORT, &listener)?;
        Ok((listener, steering))
    });
    let (listener, steering) = match steered {
        Ok((listener, steering)) => (listener, Some(steering)),
        Err(e) => {
            log!("cannot steer {ADDRESS}:{PORT} ({e}); listening on port {PORT} itself");
            match TcpListener::bind(SocketAddr::from((ADDRESS, PORT))) {
                Ok(listener) => (listener, None),
                Err(e) => {
                    log!("listening on {ADDRESS}:{PORT}: {e}");
                    return;
                }
            }
        }
    };
    let spawned = spawn_thread("metadata".into(), move || {
        let _steering = steering;
        serve(&listener, &accepts)
    });
    if let Err(e) = spawned {
        log!("cannot start the metadata listener: {e}");
    }
}

#[cfg(test)]
pub fn spawn_listener(listener: TcpListener, accepts: Arc<Accepts>) -> io::Result<()> {
    spawn_thread("metadata".into(), move || serve(&listener, &accepts)).map(|_| ())
}

fn serve(listener: &TcpListener, accepts: &Accepts) {
    loop {
        match listener.accept() {
            Ok((sock, _)) => hand_over(sock, accepts),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                log!("metadata listener: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn hand_over(sock: TcpStream, accepts: &Accepts) {
    let Some(pending) = accepts.take(WAIT_FOR_HOST) else {
        return; // dropping the socket closes it: nobody answers metadata now
    };
    if let Err(e) = pending.attach(sock) {
        log!("metadata connection: {e}");
    }
}
