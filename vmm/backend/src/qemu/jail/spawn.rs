//! Starting a program in a jail: `clone` into new namespaces, build the
//! root from the plan, drop every privilege, `execve`.
//!
//! The child of `clone` is a copy of a multi-threaded process, so between
//! the clone and the exec it may only make async-signal-safe calls: every
//! string, path and pointer it uses is prepared here, in [`Prepared`],
//! before the clone. A failing step writes its number and errno into a
//! close-on-exec pipe and exits; the parent reads the pipe, and EOF with
//! nothing in it means the exec happened.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::child::{child_entry, ChildStep, Prepared, FIXED};
use super::plan::{Access, MountPlan, Step};
use super::JailError;

/// The child's stack: it runs a few short loops of syscalls.
const STACK_BYTES: usize = 256 * 1024;
/// Descriptors handed to the child are first moved at or above this, so
/// moving them to their targets (0, 1, 2, 3, …) never overwrites another.
const FD_STAGING: RawFd = 64;

/// What to run and how to jail it.
pub(crate) struct SpawnSpec<'a> {
    /// Absolute; the same path inside the jail (the plan must bind it).
    pub program: &'a Path,
    pub args: &'a [String],
    /// An empty host folder the jail's root is mounted on, in the child's
    /// own mount namespace only (so every VM can use the same one).
    pub root_mount: &'a Path,
    pub plan: &'a MountPlan,
    /// The working directory, inside the jail.
    pub cwd: &'a Path,
    /// uid and gid to run as.
    pub ids: (u32, u32),
    /// A new, empty network namespace (only loopback, down).
    pub own_network: bool,
    pub hostname: &'a str,
    /// `cgroup.procs` files to join (one per v1 hierarchy, one on v2).
    pub cgroup_procs: &'a [PathBuf],
    /// `(descriptor, number in the child)`; 0, 1 and 2 must be among them.
    pub fds: Vec<(BorrowedFd<'a>, RawFd)>,
    pub die_with_parent: bool,
    /// `RLIMIT_FSIZE`: the largest file the program may write.
    pub max_file_bytes: Option<u64>,
}

/// A started jailed process; reap it through the pidfd (`waitid`).
pub(crate) struct JailedChild {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

pub(crate) fn spawn(spec: &SpawnSpec<'_>) -> Result<JailedChild, JailError> {
    let started = std::time::Instant::now();
    let (report_read, report_write) = pipe()?;
    let staged = stage_fds(&spec.fds)?;
    // argv[0] is the program's own name, as a shell would give it.
    let argv0 = spec.program.file_name().unwrap_or(spec.program.as_os_str());
    let args: Vec<CString> = std::iter::once(argv0)
        .chain(spec.args.iter().map(OsStr::new))
        .map(c)
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let prepared = Prepared {
        cgroup_procs: spec
            .cgroup_procs
            .iter()
            .map(|p| c(p.as_os_str()))
            .collect::<Result<_, _>>()?,
        root: c(spec.root_mount.as_os_str())?,
        tmpfs: c(OsStr::new("tmpfs"))?,
        // Only folders, mount points and symlinks live on it.
        tmpfs_opts: c(OsStr::new("mode=0755,size=1m,nr_inodes=4096"))?,
        steps: child_steps(spec.root_mount, spec.plan)?,
        dot: c(OsStr::new("."))?,
        slash: c(OsStr::new("/"))?,
        hostname: c(OsStr::new(spec.hostname))?,
        cwd: c(spec.cwd.as_os_str())?,
        program: c(spec.program.as_os_str())?,
        argv,
        envp: vec![std::ptr::null()],
        highest_fd: spec.fds.iter().map(|(_, n)| *n).max().unwrap_or(2),
        fds: staged
            .iter()
            .zip(&spec.fds)
            .map(|(s, (_, target))| (s.as_raw_fd(), *target))
            .collect(),
        ids: spec.ids,
        cap_last: cap_last()?,
        max_file_bytes: spec.max_file_bytes,
        die_with_parent: spec.die_with_parent,
        report_fd: report_write.as_raw_fd(),
    };
    let mut stack = vec![0u8; STACK_BYTES];
    // The stack grows down from its (16-byte aligned) top.
    let top = {
        let end = stack.as_mut_ptr() as usize + STACK_BYTES;
        (end & !15) as *mut libc::c_void
    };
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD
        | libc::SIGCHLD;
    if spec.own_network {
        flags |= libc::CLONE_NEWNET;
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: without CLONE_VM the child runs on its own copy of this
    // address space, on `stack`'s copy, and only reads `prepared` (a copy
    // too) with async-signal-safe calls before it execs or exits. The
    // parent keeps `stack` and `prepared` alive across the call; the
    // kernel stores the pidfd into `pidfd`.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top,
            flags,
            std::ptr::addr_of!(prepared) as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(JailError::Clone(std::io::Error::last_os_error()));
    }
    // SAFETY: CLONE_PIDFD made the kernel open this fd for us alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(report_write);
    drop(staged);
    let child = JailedChild {
        pid: pid as u32,
        pidfd,
    };
    match read_report(&report_read) {
        None => {
            tracing::debug!(
                pid = child.pid,
                ms = started.elapsed().as_secs_f64() * 1e3,
                steps = spec.plan.steps().len(),
                "jailed process exec'd"
            );
            Ok(child)
        }
        Some((step, errno)) => {
            reap(&child.pidfd);
            Err(JailError::Setup {
                step: describe(step, spec.plan),
                source: std::io::Error::from_raw_os_error(errno),
            })
        }
    }
}

fn c(s: &OsStr) -> Result<CString, JailError> {
    CString::new(s.as_bytes()).map_err(|_| JailError::UnsafeFile {
        path: PathBuf::from(s),
        reason: "contains a NUL byte".into(),
    })
}

fn child_steps(root: &Path, plan: &MountPlan) -> Result<Vec<ChildStep>, JailError> {
    let inside = |p: &Path| -> Result<CString, JailError> {
        let rel = p.strip_prefix("/").unwrap_or(p);
        c(root.join(rel).as_os_str())
    };
    plan.steps()
        .iter()
        .map(|step| {
            Ok(match step {
                Step::Dir(p) => ChildStep::Dir(inside(p)?),
                Step::Symlink { link, target } => ChildStep::Symlink {
                    target: c(target.as_os_str())?,
                    link: inside(link)?,
                },
                Step::Bind {
                    path,
                    is_dir,
                    access,
                } => ChildStep::Bind {
                    src: c(path.as_os_str())?,
                    dst: inside(path)?,
                    is_dir: *is_dir,
                    flags: match access {
                        Access::ReadOnly => {
                            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
                        }
                        Access::Program => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                        Access::Writable => libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        Access::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
                    },
                },
            })
        })
        .collect()
}

fn describe(step: u32, plan: &MountPlan) -> String {
    if let Some(s) = plan.steps().get(step as usize) {
        return match s {
            Step::Dir(p) => format!("making {} in the jail", p.display()),
            Step::Symlink { link, .. } => format!("linking {} in the jail", link.display()),
            Step::Bind { path, .. } => format!("binding {} into the jail", path.display()),
        };
    }
    FIXED
        .iter()
        .find(|(f, _)| *f as u32 == step)
        .map_or_else(|| format!("step {step}"), |(_, d)| (*d).to_string())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::io("create the jail's report pipe")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both fds were just created for us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies of the descriptors to hand over, at or above [`FD_STAGING`] and
/// close-on-exec, so the child's moves to their targets cannot collide.
fn stage_fds(fds: &[(BorrowedFd<'_>, RawFd)]) -> Result<Vec<OwnedFd>, JailError> {
    fds.iter()
        .map(|(fd, _)| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we borrow.
            let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FD_STAGING) };
            if raw < 0 {
                return Err(JailError::io("stage a descriptor for the jail")(
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: the duplicate is ours alone.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect()
}

fn cap_last() -> Result<libc::c_ulong, JailError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(JailError::io("read /proc/sys/kernel/cap_last_cap"))?;
    text.trim()
        .parse()
        .map_err(|_| JailError::Prerequisite(format!("cap_last_cap reads {text:?}")))
}

/// `None` when the child exec'd (the pipe closed with nothing in it).
fn read_report(fd: &OwnedFd) -> Option<(u32, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled rest of a local buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got < buf.len() {
        return None;
    }
    let step = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some((step, errno))
}

/// Waits for a child that failed its set-up (it exits right away).
fn reap(pidfd: &OwnedFd) {
    // SAFETY: waitid on a pidfd of our own child, with a zeroed siginfo.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        );
    }
}
