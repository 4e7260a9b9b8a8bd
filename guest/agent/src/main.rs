//! `ember-agent`: PID 1 inside every Ember guest.
//!
//! As PID 1 it prepares the machine (pseudo filesystems, kernel modules, the
//! real root filesystem), then serves the host's control channel on the
//! `agent` virtio-serial port. Run by hand (not PID 1) it skips the machine
//! setup and serves whatever file or Unix socket `argv[1]` names, which is
//! handy for development; `unpack-oci-layer` instead applies an image layer
//! to the build VM's root disk (see unpack.rs), and `mkdir-p DIR` and
//! `alive PID` stand in for `mkdir -p` and `kill -0` in images without them.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// Logs one line, prefixed `ember-agent:`, to stdout (the serial console).
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log_line(format_args!($($arg)*))
    };
}

mod channel;
mod exec;
mod files;
mod health;
#[cfg(feature = "hostile")]
mod hostile;
mod init;
mod main_process;
#[cfg(test)]
mod main_process_tests;
mod metadata;
#[cfg(test)]
mod metadata_tests;
mod net;
mod pty;
mod pty_spawn;
#[cfg(test)]
mod pty_tests;
mod reaper;
mod restore;
mod session;
mod steer;
mod streams;
#[cfg(test)]
mod tests;
mod unpack;

use channel::Wire;
use session::{Agent, Config};

/// Writes errors are ignored on purpose: there is nowhere else to report
/// them, and a broken console must never take PID 1 down.
pub(crate) fn log_line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ember-agent: {args}");
    let _ = out.flush();
}

fn main() {
    // A panic in a helper thread only ends that thread; log it so it is
    // visible on the console instead of vanishing.
    std::panic::set_hook(Box::new(|info| log!("panic: {info}")));
    // SAFETY: getpid has no preconditions and cannot fail.
    if unsafe { libc::getpid() } == 1 {
        run_as_init()
    } else {
        std::process::exit(run_by_hand());
    }
}

/// The PID 1 flow. Never returns: init exiting panics the kernel.
fn run_as_init() -> ! {
    if let Err(e) = init::boot() {
        init::fatal(&format!("boot failed: {e}"));
    }
    if let Err(e) = reaper::start() {
        // Without the reaper orphans pile up as zombies, but the guest is
        // still usable, so carry on.
        log!("cannot start the zombie reaper: {e}");
    }
    let config = Config {
        reaper_running: true,
    };
    let mut agent: Option<Agent> = None;
    loop {
        let path = init::wait_for_agent_port();
        let port = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                log!("cannot open {}: {e}", path.display());
                thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let writer = match port.try_clone() {
            Ok(w) => w,
            Err(e) => {
                log!("cannot duplicate the port fd: {e}");
                thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        // Session state survives a reopen of the port: only the fd changes.
        let agent = match &mut agent {
            Some(a) => {
                a.wire().replace_writer(Box::new(writer));
                a
            }
            None => {
                log!("serving {}", path.display());
                let agent = agent.insert(Agent::new(Wire::new(Box::new(writer)), config));
                metadata::start(agent.metadata_accepts());
                log!("ready");
                agent
            }
        };
        if let Err(e) = channel::serve(agent, port, true) {
            log!("reading {} failed: {e}; reopening", path.display());
            thread::sleep(Duration::from_millis(100));
        }
    }
}

const MKDIR_SUBCOMMAND: &str = "mkdir-p";
const ALIVE_SUBCOMMAND: &str = "alive";

/// Development mode: serve `argv[1]`, a Unix socket or a bidirectional file.
fn run_by_hand() -> i32 {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == unpack::SUBCOMMAND) {
        return unpack::run(&args[1..]);
    }
    // The host's own `mkdir -p` in images that have no shell or mkdir
    // (a registry image with one program): the agent is always there.
    // The host's `kill -0 PID`, likewise: exit 0 while PID runs (a zombie
    // has ended).
    if args.first().is_some_and(|a| a == ALIVE_SUBCOMMAND) {
        let stat = args.get(1).and_then(|pid| {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.to_string_lossy())).ok()
        });
        let running = stat.is_some_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        });
        return if running { 0 } else { 1 };
    }
    if args.first().is_some_and(|a| a == MKDIR_SUBCOMMAND) {
        return match args.get(1).map(std::fs::create_dir_all) {
            Some(Ok(())) => 0,
            Some(Err(e)) => {
                eprintln!("{MKDIR_SUBCOMMAND}: {e}");
                1
            }
            None => {
                eprintln!("usage: ember-agent {MKDIR_SUBCOMMAND} DIR");
                2
            }
        };
    }
    let Some(path) = args.first() else {
        eprintln!("usage: ember-agent PORT  (a Unix socket or a read/write device)");
        return 2;
    };
    let path = Path::new(path);
    let is_socket = std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    let config = Config {
        reaper_running: false,
    };
    let result = if is_socket {
        UnixStream::connect(path).and_then(|s| {
            let writer = s.try_clone()?;
            let mut agent = Agent::new(Wire::new(Box::new(writer)), config);
            log!("ready");
            channel::serve(&mut agent, s, false)
        })
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .and_then(|f| {
                let writer = f.try_clone()?;
                let mut agent = Agent::new(Wire::new(Box::new(writer)), config);
                log!("ready");
                channel::serve(&mut agent, f, true)
            })
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            log!("{}: {e}", path.display());
            1
        }
    }
}

/// Spawns a named thread, reporting failure instead of panicking the way
/// `thread::spawn` does when the system is out of threads or memory.
pub(crate) fn spawn_thread<F, T>(name: String, f: F) -> std::io::Result<thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    thread::Builder::new().name(name).spawn(f)
}
