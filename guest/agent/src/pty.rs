//! `Exec` with `tty`: a process on a pseudo-terminal, bridged onto its
//! channel under `Window` flow control in both directions (like a TCP
//! stream, see `streams`).
//!
//! One pump thread owns the non-blocking master and `poll`s it together
//! with an eventfd that the wire reader (host data, credit, resets) and the
//! waiter thread (process exit) use to wake it. Output is read only while
//! the host has granted credit, so a flood of output waits in the kernel's
//! terminal buffer (and then blocks the writer), never in agent memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_agent_protocol::{ErrorKind, ExecRequest, FrameKind, GuestMessage, TtySize};

use crate::channel::{Failure, Sender};
use crate::exec::{self, ExecHandle};
use crate::streams::{Credit, Inflight};
use crate::{pty_spawn, spawn_thread};

/// A master read returns at most a few KiB; this only caps one syscall.
const READ_CHUNK: usize = 64 * 1024;
/// How long output is still collected after the process exited. What it
/// wrote itself is in kernel buffers and takes one read; a background job
/// that keeps the terminal open and keeps writing must not hold the exit
/// report back forever.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Typed on the host's `Eof` when the terminal's own VEOF is unreadable.
const CTRL_D: u8 = 4;

/// Bytes still to be typed into the terminal.
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    /// Host data is acknowledged with `Window`; our own ^D is not.
    from_host: bool,
}

#[derive(Default)]
struct State {
    credit: Credit,
    inflight: Inflight,
    input: VecDeque<Pending>,
    eof_queued: bool,
    /// Set by the waiter once the process is reaped (`None`: reaping failed).
    exit: Option<Option<ExitStatus>>,
    /// Reset by the host or abandoned: hang up and report nothing more.
    closed: bool,
    /// The pump has finished (reported the exit, or was closed).
    done: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Taken (and so closed, hanging the terminal up) only by the pump when
    /// it ends; locked by `resize` so it never uses a closed fd.
    master: Mutex<Option<OwnedFd>>,
    wake: OwnedFd,
    process: Arc<ExecHandle>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn master(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.master.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. It can
        // only fail when the counter is saturated, which still wakes.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// The wire reader's handle on one terminal.
pub struct PtyHandle {
    shared: Arc<Shared>,
}

impl PtyHandle {
    /// Queues host bytes as typed input. False if the host overran the
    /// window, in which case the caller resets the channel.
    pub fn host_data(&self, bytes: Vec<u8>) -> bool {
        let mut st = self.shared.lock();
        if st.closed || st.done {
            return true; // late data after the end: ignore
        }
        if !st.inflight.receive(bytes.len()) {
            return false;
        }
        st.input.push_back(Pending {
            bytes,
            written: 0,
            from_host: true,
        });
        drop(st);
        self.shared.wake();
        true
    }

    /// The host has no more input: type the terminal's EOF character, as
    /// a terminal has no half-close (in raw mode the process just sees it).
    pub fn host_eof(&self) {
        let veof = self.veof();
        let mut st = self.shared.lock();
        if st.eof_queued || st.closed {
            return;
        }
        st.eof_queued = true;
        st.input.push_back(Pending {
            bytes: vec![veof],
            written: 0,
            from_host: false,
        });
        drop(st);
        self.shared.wake();
    }

    fn veof(&self) -> u8 {
        let master = self.shared.master();
        let Some(fd) = master.as_ref() else {
            return CTRL_D;
        };
        // SAFETY: termios is plain data; all-zero is a valid value.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid out-pointer; the fd is open while locked.
        match unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } {
            0 if t.c_cc[libc::VEOF] != 0 => t.c_cc[libc::VEOF],
            _ => CTRL_D,
        }
    }

    pub fn grant(&self, credit: u32) {
        self.shared.lock().credit.grant(credit);
        self.shared.wake();
    }

    pub fn resize(&self, size: TtySize) -> Result<(), Failure> {
        let master = self.shared.master();
        let fd = master
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorKind::NotFound, "the terminal has closed"))?;
        pty_spawn::set_size(fd, size).map_err(|e| Failure::io("resizing the terminal", &e))
    }

    pub fn signal(&self, signal: i32) -> Result<(), Failure> {
        self.shared.process.signal(signal)
    }

    /// Hangs the terminal up (the session gets SIGHUP) and reports nothing.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake();
    }

    pub fn is_done(&self) -> bool {
        self.shared.lock().done
    }
}

/// Starts the process, replies `Started`, then starts the pump and waiter.
pub fn start(
    req: ExecRequest,
    size: TtySize,
    channel: u32,
    sender: &Sender,
) -> Result<PtyHandle, Failure> {
    // SAFETY: eventfd returns a new fd or -1.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if wake < 0 {
        return Err(Failure::io(
            "creating an eventfd",
            &io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let wake = unsafe { OwnedFd::from_raw_fd(wake) };
    let terminal = pty_spawn::spawn(&req, size)?;
    let master_fd = terminal.master.as_raw_fd();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        master: Mutex::new(Some(terminal.master)),
        wake,
        process: Arc::new(ExecHandle::new(terminal.pid)),
    });
    sender.control(
        channel,
        &GuestMessage::Started {
            pid: terminal.pid as u32,
        },
    );
    let waiter = Arc::clone(&shared);
    let waited = spawn_thread(format!("pty-wait-{channel}"), move || {
        let status = exec::reap(&waiter.process);
        waiter.lock().exit = Some(status);
        waiter.wake();
    });
    if let Err(e) = waited {
        // Nobody else reaps a tracked pid: kill and collect it here.
        let _ = shared.process.signal(libc::SIGKILL);
        exec::reap(&shared.process);
        return Err(Failure::io("cannot start a terminal waiter", &e));
    }
    let pump_shared = Arc::clone(&shared);
    let pump_sender = sender.clone();
    let pumping = spawn_thread(format!("pty-{channel}"), move || {
        pump(&pump_shared, master_fd, channel, &pump_sender)
    });
    if let Err(e) = pumping {
        // The waiter reaps it once it has died.
        shared.lock().closed = true;
        shared.master().take();
        let _ = shared.process.signal(libc::SIGKILL);
        return Err(Failure::io("cannot start a terminal pump", &e));
    }
    Ok(PtyHandle { shared })
}

enum Step {
    Continue,
    /// The slave side is closed for good (EIO): no more output or input.
    SlaveGone,
    /// Nothing to read right now.
    Idle,
}

/// Moves bytes both ways until the process has exited and its output is
/// drained (or the channel is closed), then hangs up and reports.
fn pump(shared: &Shared, master: RawFd, channel: u32, sender: &Sender) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut slave_gone = false;
    let mut exit_seen: Option<Instant> = None;
    let status = loop {
        let (budget, want_write, exit, closed) = {
            let st = shared.lock();
            let budget = st.credit.available().min(buf.len());
            (budget, !st.input.is_empty(), st.exit, st.closed)
        };
        if closed {
            break None;
        }
        if let Some(status) = exit {
            // Reading until EAGAIN flushes the kernel's pending terminal
            // buffers first, so everything the process wrote is collected.
            let since = *exit_seen.get_or_insert_with(Instant::now);
            if slave_gone || since.elapsed() > DRAIN_LIMIT {
                break Some(status);
            }
            if budget > 0 {
                match read_output(shared, master, &mut buf[..budget], channel, sender) {
                    Step::Continue => continue,
                    Step::Idle | Step::SlaveGone => break Some(status),
                }
            }
        }
        let mut events = 0;
        if budget > 0 && !slave_gone && exit.is_none() {
            events |= libc::POLLIN;
        }
        if want_write && !slave_gone {
            events |= libc::POLLOUT;
        }
        let mut fds = [
            libc::pollfd {
                // Negative fds are skipped, so a hung-up master with
                // nothing wanted cannot spin on POLLHUP.
                fd: if events == 0 { -1 } else { master },
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log!("polling the terminal on channel {channel}: {err}");
                break None;
            }
            continue;
        }
        if fds[1].revents != 0 {
            let mut counter = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer; resets the eventfd.
            unsafe { libc::read(shared.wake.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
        }
        let ready = fds[0].revents;
        if ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && events & libc::POLLIN != 0
        {
            if let Step::SlaveGone =
                read_output(shared, master, &mut buf[..budget], channel, sender)
            {
                slave_gone = true;
            }
        }
        if ready != 0 && want_write && !slave_gone && !write_input(shared, master, channel, sender)
        {
            slave_gone = true;
        }
        if slave_gone {
            discard_input(shared, channel, sender);
        }
    };
    // Closing the master hangs up anything still on the terminal.
    shared.master().take();
    let report = !shared.lock().closed;
    if let (Some(status), true) = (status, report) {
        sender.eof(channel);
        let (code, signal) = match status {
            Some(s) => (s.code(), s.signal()),
            None => (None, None),
        };
        sender.control(channel, &GuestMessage::Exited { code, signal });
    }
    shared.lock().done = true;
}

fn read_output(
    shared: &Shared,
    master: RawFd,
    buf: &mut [u8],
    channel: u32,
    sender: &Sender,
) -> Step {
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        let n = n as usize;
        shared.lock().credit.consume(n);
        if !sender.bulk(channel, FrameKind::Data, &buf[..n]) {
            shared.lock().closed = true; // the session is gone
        }
        return Step::Continue;
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        _ if n == 0 => Step::SlaveGone,
        Some(libc::EAGAIN | libc::EINTR) => Step::Idle,
        // EIO: every slave fd is closed.
        Some(libc::EIO) => Step::SlaveGone,
        _ => {
            log!("reading the terminal on channel {channel}: {err}");
            Step::SlaveGone
        }
    }
}

/// Types queued input; false once the terminal refuses it for good.
fn write_input(shared: &Shared, master: RawFd, channel: u32, sender: &Sender) -> bool {
    let mut st = shared.lock();
    while let Some(front) = st.input.front_mut() {
        let rest = &front.bytes[front.written..];
        // SAFETY: writes from a live slice. Non-blocking, so holding the
        // state lock here never waits on the process.
        let n = unsafe { libc::write(master, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR));
        }
        let n = n as usize;
        front.written += n;
        let (from_host, finished) = (front.from_host, front.written == front.bytes.len());
        if finished {
            st.input.pop_front();
        }
        if from_host {
            st.inflight.acknowledge(n);
            // n ≤ one frame's payload, which fits in u32.
            sender.window(channel, n as u32);
        }
    }
    true
}

/// The terminal is gone: acknowledge what the host sent so it never waits
/// for credit that will not come.
fn discard_input(shared: &Shared, channel: u32, sender: &Sender) {
    let mut st = shared.lock();
    while let Some(p) = st.input.pop_front() {
        if p.from_host {
            let n = p.bytes.len() - p.written;
            st.inflight.acknowledge(n);
            sender.window(channel, n as u32);
        }
    }
}
