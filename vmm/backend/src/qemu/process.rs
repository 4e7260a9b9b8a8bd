//! The QEMU process of a VM: a child this backend started in its jail, or
//! one an earlier backend instance (a daemon before its restart) started
//! and this one adopted. Both are held through a pidfd, so a recycled pid
//! can never be signalled by mistake, and their exit can be awaited; our
//! own children are also reaped, with their exit status kept.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

pub(super) struct QemuProcess {
    pidfd: Pidfd,
    /// Started by this process: ours to reap (`waitid`).
    own_child: bool,
    /// How it ended, once it has.
    status: Option<String>,
}

impl QemuProcess {
    /// A child started by this process (its pidfd from `clone`).
    pub fn child(pidfd: OwnedFd) -> std::io::Result<Self> {
        Ok(Self {
            pidfd: Pidfd::from_owned(pidfd)?,
            own_child: true,
            status: None,
        })
    }

    pub fn pidfd(&self) -> &Pidfd {
        &self.pidfd
    }

    /// A process an earlier backend instance started.
    pub fn adopted(pidfd: Pidfd) -> Self {
        Self {
            pidfd,
            own_child: false,
            status: None,
        }
    }

    /// How the process ended, if it has (reaps our own child).
    pub fn try_exit(&mut self) -> Option<String> {
        if self.status.is_none() {
            self.status = if self.own_child {
                self.pidfd.reap()
            } else {
                self.pidfd.has_exited().then(|| "exited".to_string())
            };
        }
        self.status.clone()
    }

    /// Waits up to `limit` for the process to end; true when it has.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        if self.try_exit().is_some() {
            return true;
        }
        let ended = tokio::time::timeout(limit, self.pidfd.exited())
            .await
            .is_ok();
        if ended {
            self.try_exit();
        }
        ended
    }

    /// Sends SIGKILL and waits for the end.
    pub async fn kill(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        if self.pidfd.kill().is_ok() {
            self.pidfd.exited().await;
        }
        self.try_exit();
    }

    /// Sends SIGKILL without waiting (for `Drop`).
    pub fn start_kill(&mut self) {
        if self.status.is_none() {
            let _ = self.pidfd.kill();
        }
    }
}

/// A process file descriptor (Linux 5.3+).
pub(super) struct Pidfd {
    fd: AsyncFd<OwnedFd>,
}

impl Pidfd {
    /// Needs a tokio runtime (the fd is registered with its reactor).
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(|_| std::io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        Self::from_owned(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Needs a tokio runtime (the fd is registered with its reactor).
    pub fn from_owned(owned: OwnedFd) -> std::io::Result<Self> {
        // SAFETY: `owned` is a valid open fd that the AsyncFd owns from
        // here on and never replaces.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }?;
        Ok(Self { fd })
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    pub fn kill(&self) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no
        // siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Resolves once the process has exited: a pidfd polls readable then.
    pub async fn exited(&self) {
        // An error here means the reactor is gone; nothing left to wait on.
        let _ = self.fd.readable().await.map(|mut g| g.retain_ready());
    }

    /// Whether the process has exited, without waiting.
    fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd with a zero timeout.
        unsafe { libc::poll(&mut poll, 1, 0) > 0 }
    }

    /// Reaps our own child if it has exited: its exit status as text.
    fn reap(&self) -> Option<String> {
        // SAFETY: waitid on a pidfd with a zeroed siginfo it fills in.
        let info = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            );
            if rc != 0 || info.si_pid() == 0 {
                // ECHILD: reaped already, or not ours: gone either way.
                return (rc != 0).then(|| "exited".to_string());
            }
            info
        };
        // SAFETY: si_status is valid in a siginfo filled by waitid.
        let status = unsafe { info.si_status() };
        Some(match info.si_code {
            libc::CLD_EXITED => format!("exit status: {status}"),
            _ => format!("killed by signal {status}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pidfd_kills_and_sees_the_exit_of_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        let mut process = QemuProcess::adopted(pidfd);
        assert!(!process.wait_exit(Duration::from_millis(100)).await);
        process.kill().await;
        assert!(process.wait_exit(Duration::from_millis(100)).await);
        let _ = child.wait();
    }
}
