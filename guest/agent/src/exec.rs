//! `Exec` requests: spawn, pump output back, report the exit.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ember_agent_protocol::{ErrorKind, ExecRequest, FrameKind, GuestMessage, MAX_EXEC_STDIN};

use crate::channel::{Failure, Sender};
use crate::main_process::MainProcess;
use crate::reaper::{Exit, OnExit};
use crate::{reaper, spawn_thread};

pub const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

const PIPE_CHUNK: usize = 64 * 1024;

/// The agent's view of a running, non-detached process.
pub struct ExecHandle {
    pid: i32,
    /// True once the process has exited. Locked while signalling and while
    /// reaping, so a signal can never hit a recycled pid.
    exited: Mutex<bool>,
    /// Output and exit status have been reported (or discarded).
    done: AtomicBool,
    /// The session ended or the host reset the channel: keep draining the
    /// pipes so the process does not block, but send nothing.
    discard: AtomicBool,
}

impl ExecHandle {
    /// A handle for `pid`, a tracked child of ours (see `reaper`).
    pub fn new(pid: i32) -> Self {
        Self {
            pid,
            exited: Mutex::new(false),
            done: AtomicBool::new(false),
            discard: AtomicBool::new(false),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    pub fn discard_output(&self) {
        self.discard.store(true, Ordering::SeqCst);
    }

    /// Signals the process group (the process is a session leader).
    pub fn signal(&self, signal: i32) -> Result<(), Failure> {
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if *exited {
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("process {} has exited", self.pid),
            ));
        }
        // SAFETY: killpg has no memory-safety preconditions; the pid is our
        // unreaped child (guaranteed by holding `exited`).
        if unsafe { libc::killpg(self.pid, signal) } == 0 {
            Ok(())
        } else {
            let err = io::Error::last_os_error();
            Err(Failure::io(
                &format!("signal {signal} to process group {}", self.pid),
                &err,
            ))
        }
    }
}

fn build_command(req: &ExecRequest) -> Result<Command, Failure> {
    let (program, args) = req
        .argv
        .split_first()
        .ok_or_else(|| Failure::invalid("argv is empty"))?;
    if req.stdin.len() > MAX_EXEC_STDIN {
        return Err(Failure::new(
            ErrorKind::TooLarge,
            format!(
                "stdin of {} bytes exceeds {MAX_EXEC_STDIN}",
                req.stdin.len()
            ),
        ));
    }
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    // std resolves a bare program name against the PATH set here, not ours.
    if req.env.is_empty() {
        cmd.envs(DEFAULT_ENV.iter().copied());
    } else {
        cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    // std applies gid before uid (and drops supplementary groups).
    if let Some(gid) = req.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = req.uid {
        cmd.uid(uid);
    }
    // Its own process group keeps job-control signals aimed at the child
    // away from the agent and lets `Signal` use killpg. (A process group,
    // not setsid in a pre_exec hook: without hooks std spawns with
    // posix_spawn, a vfork-style clone that skips copying the agent's page
    // tables, which under TCG makes the first exec after a restore cheaper.)
    cmd.process_group(0);
    Ok(cmd)
}

pub fn spawn_failure(req: &ExecRequest, err: &io::Error) -> Failure {
    let program = req.argv.first().map(String::as_str).unwrap_or("");
    let mut what = format!("cannot start {program:?}");
    if let Some(cwd) = &req.cwd {
        what.push_str(&format!(" in {cwd:?}"));
    }
    Failure::io(&what, err)
}

/// Starts the process and replies `Started`. Returns the handle to keep for
/// a non-detached process; detached ones need no further attention. A
/// `main` one reports its end to `main`.
pub fn start(
    req: ExecRequest,
    channel: u32,
    sender: &Sender,
    reaper_running: bool,
    main: &Arc<MainProcess>,
) -> Result<Option<Arc<ExecHandle>>, Failure> {
    if req.main && !req.detach {
        return Err(Failure::invalid("a main process must be detached"));
    }
    let mut cmd = build_command(&req)?;
    if req.detach {
        start_detached(&req, cmd, channel, sender, reaper_running, main)?;
        return Ok(None);
    }
    cmd.stdin(if req.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = reaper::spawn_tracked(&mut cmd).map_err(|e| spawn_failure(&req, &e))?;
    let pid = reaper::pid_of(&child);
    sender.control(channel, &GuestMessage::Started { pid: pid as u32 });
    let handle = Arc::new(ExecHandle::new(pid));
    if let Err(e) = supervise(&mut child, req.stdin, channel, sender, &handle) {
        // Not enough resources for the helper threads: kill it rather than
        // leave a process nobody reports on.
        let _ = child.kill();
        let _ = child.wait();
        reaper::untrack(pid);
        handle.done.store(true, Ordering::SeqCst);
        return Err(Failure::io("cannot start output threads", &e));
    }
    // The waiter thread reaps by pid; the Child itself is no longer needed
    // (dropping it neither kills nor waits).
    Ok(Some(handle))
}

fn start_detached(
    req: &ExecRequest,
    mut cmd: Command,
    channel: u32,
    sender: &Sender,
    reaper_running: bool,
    main: &Arc<MainProcess>,
) -> Result<(), Failure> {
    let (out, err) = match &req.log_path {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Failure::io(&format!("opening log {path:?}"), &e))?;
            let dup = file
                .try_clone()
                .map_err(|e| Failure::io("duplicating the log fd", &e))?;
            (Stdio::from(file), Stdio::from(dup))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if !req.main {
        return spawn_detached(req, &mut cmd, channel, sender, reaper_running, None).map(drop);
    }
    let watcher = Arc::clone(main);
    let on_exit: OnExit = Box::new(move |exit| watcher.exited(exit));
    main.start(|| {
        spawn_detached(
            req,
            &mut cmd,
            channel,
            sender,
            reaper_running,
            Some(on_exit),
        )
    })
}

/// Spawns a detached process, replies `Started` and returns its pid;
/// `on_exit` gets its status once it is reaped.
fn spawn_detached(
    req: &ExecRequest,
    cmd: &mut Command,
    channel: u32,
    sender: &Sender,
    reaper_running: bool,
    on_exit: Option<OnExit>,
) -> Result<i32, Failure> {
    let (spawned, on_exit) = match (on_exit, reaper_running) {
        (Some(f), true) => (reaper::spawn_watched(cmd, f), None),
        (f, _) => (cmd.spawn().inspect(|_| reaper::spawned()), f),
    };
    let mut child = spawned.map_err(|e| spawn_failure(req, &e))?;
    let pid = reaper::pid_of(&child);
    sender.control(channel, &GuestMessage::Started { pid: child.id() });
    if !reaper_running {
        // No PID-1 reaper (development mode): someone still has to wait.
        let waited = spawn_thread(format!("detached-{pid}"), move || {
            if let (Ok(status), Some(on_exit)) = (child.wait(), on_exit) {
                on_exit(Exit::from(status));
            }
        });
        if let Err(e) = waited {
            log!("cannot start a waiter for a detached process: {e}");
        }
    }
    Ok(pid)
}

/// Starts the stdin feeder, both output pumps and the waiter.
fn supervise(
    child: &mut Child,
    stdin: Vec<u8>,
    channel: u32,
    sender: &Sender,
    handle: &Arc<ExecHandle>,
) -> io::Result<()> {
    if let Some(mut pipe) = child.stdin.take() {
        spawn_thread(format!("stdin-{channel}"), move || {
            // EPIPE just means the process did not want it all.
            let _ = pipe.write_all(&stdin);
        })?;
    }
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, FrameKind::Data, channel, sender, handle)?);
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, FrameKind::Stderr, channel, sender, handle)?);
    }
    let sender = sender.clone();
    let handle = Arc::clone(handle);
    spawn_thread(format!("wait-{channel}"), move || {
        let status = reap(&handle);
        for p in pumps {
            let _ = p.join();
        }
        if !handle.discard.load(Ordering::SeqCst) {
            sender.eof(channel);
            let (code, signal) = match status {
                Some(s) => (s.code(), s.signal()),
                None => (None, None),
            };
            sender.control(channel, &GuestMessage::Exited { code, signal });
        }
        handle.done.store(true, Ordering::SeqCst);
    })?;
    Ok(())
}

/// Waits for the process to exit, then reaps it with `exited` held so that
/// `signal` never targets a pid that may have been recycled.
pub fn reap(handle: &ExecHandle) -> Option<ExitStatus> {
    if let Err(e) = reaper::wait_exited(handle.pid) {
        log!("waiting for process {}: {e}", handle.pid);
    }
    let mut exited = handle.exited.lock().unwrap_or_else(|e| e.into_inner());
    let status = loop {
        let mut raw = 0;
        // SAFETY: `raw` is a valid out-pointer; the pid is our tracked child,
        // which nobody else reaps.
        let r = unsafe { libc::waitpid(handle.pid, &mut raw, 0) };
        if r == handle.pid {
            break Some(ExitStatus::from_raw(raw));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            log!("reaping process {}: {err}", handle.pid);
            break None;
        }
    };
    *exited = true;
    reaper::untrack(handle.pid);
    status
}

/// Copies a pipe to the host as `kind` frames until EOF.
fn pump(
    mut pipe: impl Read + Send + 'static,
    kind: FrameKind,
    channel: u32,
    sender: &Sender,
    handle: &Arc<ExecHandle>,
) -> io::Result<JoinHandle<()>> {
    let sender = sender.clone();
    let handle = Arc::clone(handle);
    spawn_thread(format!("pipe-{channel}"), move || {
        let mut buf = vec![0u8; PIPE_CHUNK];
        let mut sending = true;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    // Once a send fails (session over, transport broken)
                    // keep draining so the process never blocks on a full
                    // pipe.
                    if sending && !handle.discard.load(Ordering::SeqCst) {
                        sending = sender.bulk(channel, kind, &buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("reading output of process {}: {e}", handle.pid);
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_argv_and_oversized_stdin() {
        let empty = ExecRequest::default();
        assert_eq!(
            build_command(&empty).err().map(|f| f.kind),
            Some(ErrorKind::InvalidRequest)
        );
        let big = ExecRequest {
            argv: vec!["cat".into()],
            stdin: vec![0; MAX_EXEC_STDIN + 1],
            ..Default::default()
        };
        assert_eq!(
            build_command(&big).err().map(|f| f.kind),
            Some(ErrorKind::TooLarge)
        );
    }

    #[test]
    fn default_environment_is_used_when_none_given() {
        let req = ExecRequest {
            argv: vec!["env".into()],
            ..Default::default()
        };
        let cmd = build_command(&req).map_err(|f| f.message).unwrap();
        let vars: Vec<_> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?, v?.to_str()?)))
            .collect();
        assert!(vars.contains(&("HOME", "/root")));
        assert!(vars.iter().any(|(k, _)| *k == "PATH"));
    }
}
