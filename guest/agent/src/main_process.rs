//! The guest's main process (the image's command). The agent keeps how it
//! ended, so a host learns it however late it asks: the record lives in
//! guest memory, through snapshots, suspends and reconnects.

use std::sync::{Mutex, MutexGuard};

use ember_agent_protocol::{ErrorKind, GuestMessage};

use crate::channel::{Failure, Sender};
use crate::reaper::Exit;

/// Waits kept at once. A host asks once per session; a few cover a new
/// session's wait arriving before the old one's is known to be stale.
const MAX_WAITERS: usize = 4;

#[derive(Default)]
pub struct MainProcess {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pid: Option<i32>,
    exit: Option<Exit>,
    /// Who asked, answered once the process ends.
    waiters: Vec<(Sender, u32)>,
}

impl MainProcess {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the main process with `spawn` (which returns its pid) unless
    /// the guest already has one: there is one app per guest, and its
    /// exit status must never be confused with another's.
    pub fn start(&self, spawn: impl FnOnce() -> Result<i32, Failure>) -> Result<(), Failure> {
        let mut state = self.lock();
        if let Some(pid) = state.pid {
            return Err(Failure::invalid(format!(
                "the guest already has a main process (pid {pid})"
            )));
        }
        state.pid = Some(spawn()?);
        Ok(())
    }

    /// Records the exit and answers everyone waiting for it.
    pub fn exited(&self, exit: Exit) {
        let waiters = {
            let mut state = self.lock();
            state.exit = Some(exit);
            std::mem::take(&mut state.waiters)
        };
        log!("the main process ended: {exit:?}");
        for (sender, channel) in waiters {
            sender.control(channel, &exited(exit));
        }
    }

    /// `WaitMainExit` on `channel`: answered now if the process has ended,
    /// else when it does.
    pub fn wait(&self, channel: u32, sender: &Sender) -> Result<(), Failure> {
        let mut state = self.lock();
        if state.pid.is_none() {
            return Err(Failure::new(
                ErrorKind::NotFound,
                "no main process was started",
            ));
        }
        if let Some(exit) = state.exit {
            drop(state);
            sender.control(channel, &exited(exit));
            return Ok(());
        }
        // Waits of ended sessions can never be answered: their senders
        // are silent.
        state.waiters.retain(|(s, _)| s.is_current());
        let replaced = if state.waiters.len() >= MAX_WAITERS {
            Some(state.waiters.remove(0))
        } else {
            None
        };
        state.waiters.push((sender.clone(), channel));
        drop(state);
        if let Some((old, old_channel)) = replaced {
            old.failure(
                old_channel,
                Failure::invalid("replaced by a newer WaitMainExit"),
            );
        }
        Ok(())
    }
}

fn exited(exit: Exit) -> GuestMessage {
    GuestMessage::Exited {
        code: exit.code,
        signal: exit.signal,
    }
}
