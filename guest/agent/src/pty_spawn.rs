//! Starting a process on a new pseudo-terminal: open the pair, fork, and in
//! the child become a session leader whose controlling terminal is the pty.
//!
//! `posix_spawn` cannot make a controlling terminal (TIOCSCTTY), and std's
//! `pre_exec` would do the same fork with less control over what runs in
//! the child, so this is a small fork + execve. Everything the child needs
//! (paths, argv, envp as C strings) is built before the fork: between fork
//! and exec a multi-threaded program may only make async-signal-safe calls.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use ember_agent_protocol::{ErrorKind, ExecRequest, TtySize};

use crate::channel::Failure;
use crate::exec::{spawn_failure, DEFAULT_ENV};
use crate::reaper;

const DEFAULT_TERM: &str = "xterm-256color";

/// A started process and the master side of its terminal (non-blocking).
pub struct Terminal {
    pub pid: i32,
    pub master: OwnedFd,
}

/// What the child needs, prepared before the fork.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
}

pub fn spawn(req: &ExecRequest, size: TtySize) -> Result<Terminal, Failure> {
    let prepared = prepare(req)?;
    let (master, slave) = open_pair(size).map_err(|e| Failure::io("opening a terminal", &e))?;
    let pid = fork_exec(&prepared, &slave).map_err(|e| spawn_failure(req, &e))?;
    drop(slave); // the child holds it now; our copy would keep EIO away
    set_nonblocking(&master).map_err(|e| Failure::io("configuring the terminal", &e))?;
    Ok(Terminal { pid, master })
}

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, Failure> {
    CString::new(s).map_err(|_| Failure::invalid(format!("{what} contains a NUL byte")))
}

fn prepare(req: &ExecRequest) -> Result<Prepared, Failure> {
    let first = req
        .argv
        .first()
        .ok_or_else(|| Failure::invalid("argv is empty"))?;
    if req.detach || !req.stdin.is_empty() {
        return Err(Failure::invalid(
            "a tty exec cannot be detached or carry stdin (send Data instead)",
        ));
    }
    let mut env: Vec<(String, String)> = if req.env.is_empty() {
        DEFAULT_ENV
            .iter()
            .filter(|(k, _)| *k != "TERM")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        req.env.clone()
    };
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), DEFAULT_TERM.into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let program = resolve(first, path_var).ok_or_else(|| {
        Failure::new(
            ErrorKind::NotFound,
            format!("cannot start {first:?}: not found on PATH {path_var:?}"),
        )
    })?;
    let envp = env
        .iter()
        .map(|(k, v)| cstring("an environment variable", format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        program: cstring("the program path", program.as_bytes())?,
        argv: req
            .argv
            .iter()
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<Result<_, _>>()?,
        envp,
        cwd: req
            .cwd
            .as_deref()
            .map(|c| cstring("cwd", c.as_bytes()))
            .transpose()?,
        uid: req.uid,
        gid: req.gid,
    })
}

/// `execvp`'s search, done before the fork (execvp may allocate).
fn resolve<'a>(program: &'a str, path_var: &str) -> Option<std::borrow::Cow<'a, OsStr>> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(OsStr::new(program).into());
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|p| p.into_os_string().into())
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A master/slave pair of the given size. O_NOCTTY everywhere: as PID 1
/// the agent is a session leader without a terminal and must not acquire
/// one by opening it.
fn open_pair(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = check(unsafe { libc::posix_openpt(flags) })?;
    // SAFETY: `master` is a fresh fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: unlockpt only takes the fd.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    // TIOCGPTPEER opens the slave through the master, so no path lookup can
    // pick a different device.
    // SAFETY: the ioctl takes its open flags by value and returns a new fd.
    let slave = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: `slave` is a fresh fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_size(&master, size)?;
    Ok((master, slave))
}

pub fn set_size(master: &OwnedFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize the kernel only reads.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Forks and execs; an exec failure in the child comes back as its errno
/// through a close-on-exec pipe (nothing read = exec succeeded).
fn fork_exec(p: &Prepared, slave: &OwnedFd) -> io::Result<i32> {
    let argv = null_terminated(&p.argv);
    let envp = null_terminated(&p.envp);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are fresh and owned by nothing else.
    let (err_rd, err_wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pid = reaper::spawn_tracked_with(|| {
        // SAFETY: the child only runs `child`, which makes async-signal-safe
        // calls on memory prepared before the fork and never returns.
        match check(unsafe { libc::fork() })? {
            0 => unsafe { child(p, &argv, &envp, slave.as_raw_fd(), err_wr.as_raw_fd()) },
            pid => Ok(pid),
        }
    })?;
    drop(err_wr);
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        // SAFETY: reads into the unfilled tail of `errno`.
        let n = unsafe {
            libc::read(
                err_rd.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    // The child reported a failure and exited: collect it.
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our tracked child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    reaper::untrack(pid);
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// The forked child. Only async-signal-safe calls, no allocation.
///
/// # Safety
/// Must run in a freshly forked child; the pointer arrays must be
/// null-terminated and point into `p`.
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    slave: RawFd,
    err_wr: RawFd,
) -> ! {
    // The agent ignores SIGPIPE (std does) and ignored dispositions survive
    // exec; a shell must start with defaults and nothing blocked.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
    for sig in 1..libc::SIGRTMIN() {
        libc::signal(sig, libc::SIG_DFL);
    }
    if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
        fail(err_wr);
    }
    for target in 0..3 {
        if libc::dup2(slave, target) < 0 {
            fail(err_wr);
        }
    }
    if slave > 2 {
        libc::close(slave);
    }
    if let Some(cwd) = &p.cwd {
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(err_wr);
        }
    }
    // Like std: groups, then gid, then uid.
    if let Some(gid) = p.gid {
        if libc::setgid(gid) < 0 {
            fail(err_wr);
        }
    }
    if let Some(uid) = p.uid {
        if libc::getuid() == 0 && libc::setgroups(0, ptr::null()) < 0 {
            fail(err_wr);
        }
        if libc::setuid(uid) < 0 {
            fail(err_wr);
        }
    }
    libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(err_wr)
}

/// Reports errno to the parent and exits without running any destructors.
unsafe fn fail(err_wr: RawFd) -> ! {
    let errno = *libc::__errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(err_wr, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_on_the_requested_path() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin").unwrap(),
            OsStr::new("/bin/sh")
        );
        assert!(resolve("sh", "/nonexistent").is_none());
        assert_eq!(resolve("./x", "").unwrap(), OsStr::new("./x"));
    }

    #[test]
    fn term_defaults_only_when_missing() {
        let term = |env: Vec<(String, String)>| {
            let req = ExecRequest {
                argv: vec!["sh".into()],
                env,
                ..Default::default()
            };
            let p = prepare(&req).map_err(|f| f.message).unwrap();
            p.envp
                .iter()
                .filter_map(|e| e.to_str().ok()?.strip_prefix("TERM=").map(str::to_string))
                .collect::<Vec<_>>()
        };
        assert_eq!(term(vec![]), vec![DEFAULT_TERM]);
        let path = ("PATH".to_string(), "/bin".to_string());
        assert_eq!(term(vec![path.clone()]), vec![DEFAULT_TERM]);
        let vt = ("TERM".to_string(), "vt100".to_string());
        assert_eq!(term(vec![path, vt]), vec!["vt100"]);
    }

    #[test]
    fn detached_or_stdin_tty_requests_are_invalid() {
        let req = ExecRequest {
            argv: vec!["sh".into()],
            detach: true,
            ..Default::default()
        };
        assert_eq!(
            prepare(&req).err().map(|f| f.kind),
            Some(ErrorKind::InvalidRequest)
        );
    }
}
