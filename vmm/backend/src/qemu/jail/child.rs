//! The child side of a jailed spawn: from `clone` to `execve`.
//!
//! This runs in a copy of a multi-threaded process, so it may only make
//! async-signal-safe calls on what the parent prepared ([`Prepared`]): no
//! allocation, no locks, no glibc wrapper that coordinates threads.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::RawFd;

/// Fixed steps, numbered after the plan's own.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(super) enum Fixed {
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

pub(super) const FIXED: [(Fixed, &str); 17] = [
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

pub(super) enum ChildStep {
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
pub(super) struct Prepared {
    pub(super) cgroup_procs: Vec<CString>,
    pub(super) root: CString,
    pub(super) tmpfs: CString,
    pub(super) tmpfs_opts: CString,
    pub(super) steps: Vec<ChildStep>,
    pub(super) dot: CString,
    pub(super) slash: CString,
    pub(super) hostname: CString,
    pub(super) cwd: CString,
    pub(super) program: CString,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) fds: Vec<(RawFd, RawFd)>,
    pub(super) highest_fd: RawFd,
    pub(super) ids: (u32, u32),
    pub(super) cap_last: libc::c_ulong,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) die_with_parent: bool,
    pub(super) report_fd: RawFd,
}

pub(super) extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
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
