//! Zombie reaping for PID 1 without stealing exit statuses.
//!
//! Exec requests own their children through `std::process::Child` and wait
//! for them themselves. Those pids are *tracked*. The global reaper only
//! peeks at exited children (`WNOWAIT`) and reaps those that are untracked:
//! orphans re-parented to PID 1 and detached processes.
//!
//! Race freedom: a pid enters the registry while the registry lock is held
//! across `spawn`, and the reaper holds the same lock from its check until
//! it has reaped, so it can never reap a tracked child. An exited child's
//! pid cannot be reused until someone reaps it, so the peeked pid is still
//! the same process when the reaper checks it.
//!
//! A detached child whose exit status matters (the guest's main process)
//! is *watched*: the reaper hands its status to a callback. The registry
//! lock is held across its `spawn`, and the reaper takes it before
//! reaping, so an instant exit still finds the callback.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// How a child ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        Self {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

pub type OnExit = Box<dyn FnOnce(Exit) + Send>;

/// Watched children by pid, lock order after `TRACKED`.
static WATCHED: Mutex<BTreeMap<i32, OnExit>> = Mutex::new(BTreeMap::new());

/// Counts spawns, so a reaper with no children can sleep until the next
/// one instead of polling (an idle guest should not wake up at all: under
/// TCG every wake-up costs host CPU).
static SPAWNS: Mutex<u64> = Mutex::new(0);
static SPAWNED: Condvar = Condvar::new();

/// Pause while a tracked child's owner has not collected it yet; owners
/// are woken by the same exit, so this is short.
const TRACKED_BACKOFF: Duration = Duration::from_millis(5);

/// Spawns `cmd` and registers its pid so the reaper leaves it alone.
pub fn spawn_tracked(cmd: &mut Command) -> io::Result<Child> {
    let mut tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    tracked.insert(pid_of(&child));
    spawned();
    Ok(child)
}

/// Like [`spawn_tracked`] for children started without `Command` (a fork
/// that must make a controlling terminal): `spawn` returns the new pid.
pub fn spawn_tracked_with(spawn: impl FnOnce() -> io::Result<i32>) -> io::Result<i32> {
    let mut tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    let pid = spawn()?;
    tracked.insert(pid);
    spawned();
    Ok(pid)
}

/// Spawns `cmd`, a detached child the reaper reaps, and has `on_exit`
/// called with its status when it does (on the reaper's thread).
pub fn spawn_watched(cmd: &mut Command, on_exit: OnExit) -> io::Result<Child> {
    let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    watched.insert(pid_of(&child), on_exit);
    spawned();
    Ok(child)
}

/// Records that the agent started a child (tracked or not). New children
/// only appear this way: orphans are re-parented from our own descendants,
/// which keep the reaper's blocking wait busy while they exist.
pub fn spawned() {
    *SPAWNS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    SPAWNED.notify_all();
}

/// Sleeps until a spawn after generation `seen`.
fn wait_for_spawn_after(seen: u64) {
    let mut spawns = SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
    while *spawns == seen {
        spawns = SPAWNED.wait(spawns).unwrap_or_else(|e| e.into_inner());
    }
}

/// Called once the owner has reaped `pid`.
pub fn untrack(pid: i32) {
    TRACKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

pub fn pid_of(child: &Child) -> i32 {
    // Pids fit in i32 (pid_max is at most 2^22).
    child.id() as i32
}

/// Blocks until `pid` (a child of ours) has exited, without reaping it.
pub fn wait_exited(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the call.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub fn start() -> io::Result<()> {
    crate::spawn_thread("reaper".into(), run).map(drop)
}

fn run() {
    loop {
        // Read before waitid: a spawn racing with an ECHILD answer bumps it.
        let seen = *SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // Blocks until some child has exited; WNOWAIT leaves it a zombie so
        // that we can decide whose it is.
        // SAFETY: `info` is a valid, writable siginfo_t for the call.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => wait_for_spawn_after(seen),
                _ => thread::sleep(Duration::from_secs(1)),
            }
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so the kernel filled in the
        // child fields of `info`.
        let pid = unsafe { info.si_pid() };
        let tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
        if pid == 0 || tracked.contains(&pid) {
            drop(tracked);
            thread::sleep(TRACKED_BACKOFF);
            continue;
        }
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as above; reaps exactly the untracked pid we peeked at,
        // with the registries still locked.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        let on_exit = if r == 0 { watched.remove(&pid) } else { None };
        drop(watched);
        drop(tracked);
        if let Some(on_exit) = on_exit {
            on_exit(exit_of(&info));
        }
    }
}

/// The status in a `waitid` answer for a child that has exited.
fn exit_of(info: &libc::siginfo_t) -> Exit {
    // SAFETY: only called after waitid reaped a child, which fills in the
    // child fields.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => Exit {
            code: Some(status),
            signal: None,
        },
        libc::CLD_KILLED | libc::CLD_DUMPED => Exit {
            code: None,
            signal: Some(status),
        },
        _ => Exit {
            code: None,
            signal: None,
        },
    }
}
