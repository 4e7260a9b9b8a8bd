//! The QEMU process of a VM: a child this backend spawned, or one an
//! earlier backend instance (a daemon before its restart) spawned and this
//! one adopted. Adopted processes are held through a pidfd, so a recycled
//! pid can never be signalled by mistake, and their exit can be awaited
//! although they are not our children.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::process::Child;

pub(super) enum QemuProcess {
    Child(Child),
    Adopted(Pidfd),
}

impl QemuProcess {
    /// Waits up to `limit` for the process to end; true when it has.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        match self {
            Self::Child(c) => tokio::time::timeout(limit, c.wait()).await.is_ok(),
            Self::Adopted(p) => tokio::time::timeout(limit, p.exited()).await.is_ok(),
        }
    }

    /// Sends SIGKILL and waits for the end.
    pub async fn kill(&mut self) {
        match self {
            Self::Child(c) => {
                let _ = c.kill().await;
            }
            Self::Adopted(p) => {
                if p.kill().is_ok() {
                    p.exited().await;
                }
            }
        }
    }

    /// Sends SIGKILL without waiting (for `Drop`).
    pub fn start_kill(&mut self) {
        match self {
            Self::Child(c) => {
                let _ = c.start_kill();
            }
            Self::Adopted(p) => {
                let _ = p.kill();
            }
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
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `owned` is a valid open fd that the AsyncFd owns from
        // here on and never replaces.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }?;
        Ok(Self { fd })
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
        let mut process = QemuProcess::Adopted(pidfd);
        assert!(!process.wait_exit(Duration::from_millis(100)).await);
        process.kill().await;
        assert!(process.wait_exit(Duration::from_millis(100)).await);
        let _ = child.wait();
    }
}
