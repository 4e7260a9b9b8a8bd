//! Starting a program in a jail: `clone` into new namespaces, build the
//! root from the plan, drop every privilege, `execve`.
//!
//! The child of `clone` is a copy of a multi-threaded process, so between
//! the clone and the exec it may only make async-signal-safe calls: every
//! string, path and pointer it uses is prepared here, in [`Prepared`],
//! before the clone. A failing step writes its number and errno into a
//! close-on-exec pipe and exits; the parent reads the pipe, and EOF with
//! nothing in it means the exec happened.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::plan::{Access, MountPlan, Step};
use super::JailError;

/// The child's stack: it runs a few short loops of syscalls.
const STACK_BYTES: usize = 256 * 1024;
/// Descriptors handed to the child are first moved at or above this, so
/// moving them to their targets (0, 1, 2, 3, …) never overwrites another.
const FD_STAGING: RawFd = 64;

/// Fixed steps, numbered after the plan's own.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Fixed {
    Cgroup = 1 << 20,
    PrivateMounts,
    RootTmpfs,
    PivotRoot,
    DetachOldRoot,
    ReadOnlyRoot,
    Hostname,
    WorkDir,
    Limits,
    Descriptors,
    Capabilities,
    Groups,
    Gid,
    Uid,
    NoNewPrivs,
    DeathSignal,
    Exec,
}

const FIXED: [(Fixed, &str); 17] = [
    (Fixed::Cgroup, "joining the VM's cgroup"),
    (Fixed::PrivateMounts, "making the mount namespace private"),
    (Fixed::RootTmpfs, "mounting the jail's root"),
    (Fixed::PivotRoot, "pivot_root into the jail"),
    (Fixed::DetachOldRoot, "detaching the host's root"),
    (Fixed::ReadOnlyRoot, "making the jail's root read-only"),
    (Fixed::Hostname, "setting the jail's hostname"),
    (Fixed::WorkDir, "entering the VM's folder"),
    (Fixed::Limits, "setting resource limits"),
    (Fixed::Descriptors, "passing descriptors"),
    (Fixed::Capabilities, "dropping capabilities"),
    (Fixed::Groups, "dropping supplementary groups"),
    (Fixed::Gid, "switching to the VM's gid"),
    (Fixed::Uid, "switching to the VM's uid"),
    (Fixed::NoNewPrivs, "setting no_new_privs"),
    (Fixed::DeathSignal, "setting the parent-death signal"),
    (Fixed::Exec, "executing the program"),
];

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

enum ChildStep {
    Dir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Bind {
        src: CString,
        dst: CString,
        is_dir: bool,
        flags: libc::c_ulong,
    },
}

/// Everything the child touches, made before the clone.
struct Prepared {
    cgroup_procs: Vec<CString>,
    root: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    steps: Vec<ChildStep>,
    dot: CString,
    slash: CString,
    hostname: CString,
    cwd: CString,
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    fds: Vec<(RawFd, RawFd)>,
    highest_fd: RawFd,
    ids: (u32, u32),
    cap_last: libc::c_ulong,
    max_file_bytes: Option<u64>,
    die_with_parent: bool,
    report_fd: RawFd,
}

pub(crate) fn spawn(spec: &SpawnSpec<'_>) -> Result<JailedChild, JailError> {
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
        None => Ok(child),
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

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Prepared`, copied with the address
    // space, valid and unchanged for as long as this child runs.
    let p = unsafe { &*(arg as *const Prepared) };
    let (step, errno) = match child_main(p) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; the pipe is ours.
    unsafe {
        libc::write(p.report_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always readable.
    unsafe { *libc::__errno_location() }
}

/// `Err((step, errno))` when `rc` reports a failure.
fn check(rc: libc::c_long, step: u32) -> Result<(), (u32, i32)> {
    if rc < 0 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}

/// Runs in the child: only async-signal-safe calls, no allocation.
fn child_main(p: &Prepared) -> Result<Infallible, (u32, i32)> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY (all blocks below): plain syscalls on NUL-terminated strings
    // and buffers prepared by the parent, in a child that owns its copy of
    // them; nothing here allocates or takes a lock.
    unsafe {
        // Before anything else, so no instruction of the program runs
        // outside its limits.
        for procs in &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd.into(), Fixed::Cgroup as u32)?;
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let saved = errno();
            libc::close(fd);
            if written != 1 {
                return Err((Fixed::Cgroup as u32, saved));
            }
        }
        // The jail's folders are made with exactly the modes asked for,
        // whatever mask the caller runs with (emberd: 077, which would
        // lock QEMU out of them).
        libc::umask(0o022);
        // Nothing mounted here may propagate back to the host.
        let rc = libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        check(rc.into(), Fixed::PrivateMounts as u32)?;
        let rc = libc::mount(
            p.tmpfs.as_ptr(),
            p.root.as_ptr(),
            p.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            p.tmpfs_opts.as_ptr().cast(),
        );
        check(rc.into(), Fixed::RootTmpfs as u32)?;
        for (i, step) in p.steps.iter().enumerate() {
            let n = i as u32;
            match step {
                ChildStep::Dir(path) => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                        return Err((n, errno()));
                    }
                }
                ChildStep::Symlink { target, link } => {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()).into(), n)?;
                }
                ChildStep::Bind {
                    src,
                    dst,
                    is_dir,
                    flags,
                } => {
                    if *is_dir {
                        if libc::mkdir(dst.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                            return Err((n, errno()));
                        }
                    } else {
                        let fd = libc::open(
                            dst.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                            0o644,
                        );
                        check(fd.into(), n)?;
                        libc::close(fd);
                    }
                    let rc = libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND,
                        std::ptr::null(),
                    );
                    check(rc.into(), n)?;
                    let rc = libc::mount(
                        null,
                        dst.as_ptr(),
                        null,
                        libc::MS_REMOUNT | libc::MS_BIND | flags,
                        std::ptr::null(),
                    );
                    check(rc.into(), n)?;
                }
            }
        }
        check(libc::chdir(p.root.as_ptr()).into(), Fixed::PivotRoot as u32)?;
        // pivot_root(".", ".") stacks the old root on top of the new one;
        // detaching it leaves the jail's root alone in this namespace.
        let rc = libc::syscall(libc::SYS_pivot_root, p.dot.as_ptr(), p.dot.as_ptr());
        check(rc, Fixed::PivotRoot as u32)?;
        check(
            libc::umount2(p.dot.as_ptr(), libc::MNT_DETACH).into(),
            Fixed::DetachOldRoot as u32,
        )?;
        check(
            libc::chdir(p.slash.as_ptr()).into(),
            Fixed::DetachOldRoot as u32,
        )?;
        let rc = libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            std::ptr::null(),
        );
        check(rc.into(), Fixed::ReadOnlyRoot as u32)?;
        let rc = libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len());
        check(rc.into(), Fixed::Hostname as u32)?;
        check(libc::chdir(p.cwd.as_ptr()).into(), Fixed::WorkDir as u32)?;
        // What QEMU creates (its console log, disk layers) is the VM's alone.
        libc::umask(0o077);

        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(
            libc::setrlimit(libc::RLIMIT_CORE, &no_core).into(),
            Fixed::Limits as u32,
        )?;
        if let Some(bytes) = p.max_file_bytes {
            let cap = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            check(
                libc::setrlimit(libc::RLIMIT_FSIZE, &cap).into(),
                Fixed::Limits as u32,
            )?;
            // A write past the cap fails with EFBIG instead of killing.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        // The parent's mask and ignored SIGPIPE must not leak into QEMU.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        for &(from, to) in &p.fds {
            check(libc::dup2(from, to).into(), Fixed::Descriptors as u32)?;
        }
        // Whatever else is open (a library's descriptor without O_CLOEXEC)
        // closes at exec.
        let rc = libc::syscall(
            libc::SYS_close_range,
            (p.highest_fd + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        check(rc, Fixed::Descriptors as u32)?;

        for cap in 0..=p.cap_last {
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            check(rc.into(), Fixed::Capabilities as u32)?;
        }
        // Raw syscalls, not glibc's wrappers: those change the ids of every
        // thread glibc believes the process has (signalling each and
        // waiting for it), and this copy of a multi-threaded process has
        // only one thread: they would wait forever.
        let rc = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        check(rc, Fixed::Groups as u32)?;
        let (uid, gid) = p.ids;
        check(
            libc::syscall(libc::SYS_setresgid, gid, gid, gid),
            Fixed::Gid as u32,
        )?;
        // From root to a plain uid: the permitted, effective and ambient
        // capability sets are cleared by the kernel.
        check(
            libc::syscall(libc::SYS_setresuid, uid, uid, uid),
            Fixed::Uid as u32,
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            Fixed::NoNewPrivs as u32,
        )?;
        // After the uid change, which clears it.
        if p.die_with_parent {
            let rc = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            check(rc.into(), Fixed::DeathSignal as u32)?;
        }
        libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        Err((Fixed::Exec as u32, errno()))
    }
}
