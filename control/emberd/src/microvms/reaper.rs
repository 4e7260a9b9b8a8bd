//! The timers: idle suspend, suspended-too-long and maximum-duration
//! termination, the end of VMs whose guest broke the agent protocol, and
//! the idle clock's persistence. One task ticks every
//! second; each VM's work is spawned so a slow suspend never delays
//! another VM's timer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ember_api::model::MicrovmState;

use super::instance::{now_ms, Instance};
use super::Microvms;
use crate::now;

const TICK: Duration = Duration::from_secs(1);

pub fn spawn(microvms: Arc<Microvms>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // No transitions while fenced: an idle VM is suspended, a
            // long-lived one ended, once the lease is good again.
            if microvms.is_fenced() {
                continue;
            }
            for inst in microvms.instances() {
                microvms.check(&inst).await;
            }
        }
    });
}

impl Microvms {
    async fn check(self: &Arc<Self>, inst: &Arc<Instance>) {
        let t = now();
        let status = inst.status();
        if matches!(
            status.state,
            MicrovmState::Terminating | MicrovmState::Terminated
        ) {
            return;
        }
        self.flush_activity(inst).await;
        // The host ended the guest's agent session: its control plane is
        // gone, so is the VM.
        if let Some(violation) = inst.vm().and_then(|vm| vm.agent().violation()) {
            self.terminate(
                Arc::clone(inst),
                format!("the guest broke the agent protocol: {violation}; terminated"),
            )
            .await;
            return;
        }
        let max = f64::from(inst.spec.maximum_duration_s);
        if t - inst.started_at >= max {
            self.terminate(
                Arc::clone(inst),
                format!(
                    "reached its maximumDurationInSeconds ({} s) and was terminated",
                    inst.spec.maximum_duration_s
                ),
            )
            .await;
            return;
        }
        // A parked VM has no snapshot on disk to compact (yet).
        if status.state == MicrovmState::Suspended
            && inst.parked().is_none()
            && t - status.suspended_at.unwrap_or(t) >= f64::from(self.config.compact_after_seconds)
        {
            self.compact_suspended(inst);
        }
        let Some(policy) = inst.spec.idle_policy.clone() else {
            return;
        };
        match status.state {
            // A suspend would have to write to the disk that is full;
            // the VM is idle only because the host holds it.
            MicrovmState::Running if inst.is_host_paused() => {}
            MicrovmState::Running => {
                let idle_ms = now_ms().saturating_sub(inst.last_active_ms());
                let limit_ms = u64::try_from(policy.max_idle_duration_seconds)
                    .unwrap_or(0)
                    .saturating_mul(1000);
                if inst.open_streams() == 0 && idle_ms >= limit_ms {
                    self.suspend_if_still_idle(inst, limit_ms, policy.max_idle_duration_seconds);
                }
            }
            MicrovmState::Suspended => {
                let since = status.suspended_at.unwrap_or(t);
                if t - since >= f64::from(policy.suspended_duration_seconds.max(0)) {
                    self.terminate(
                        Arc::clone(inst),
                        format!(
                            "suspended for its suspendedDurationSeconds ({} s) and was terminated",
                            policy.suspended_duration_seconds
                        ),
                    )
                    .await;
                }
            }
            _ => {}
        }
    }

    /// Suspends unless a transition is already underway or a request came
    /// in since the tick looked.
    fn suspend_if_still_idle(self: &Arc<Self>, inst: &Arc<Instance>, limit_ms: u64, secs: i32) {
        let Ok(guard) = Arc::clone(&inst.transition).try_lock_owned() else {
            return;
        };
        let this = Arc::clone(self);
        let inst = Arc::clone(inst);
        tokio::spawn(async move {
            let _guard = guard;
            let idle_ms = now_ms().saturating_sub(inst.last_active_ms());
            if inst.state() != MicrovmState::Running
                || inst.open_streams() > 0
                || idle_ms < limit_ms
                || inst.is_doomed()
                || inst.is_host_paused()
            {
                return;
            }
            let why = format!("suspended after {secs} s without requests (maxIdleDurationSeconds)");
            this.set_state(&inst, MicrovmState::Suspending, Some(&why), None)
                .await;
            this.suspend_locked(&inst, &why).await;
        });
    }

    /// Writes the idle clock to the store (at most once a tick per VM), so
    /// a restarted daemon resumes the timers where they were.
    async fn flush_activity(&self, inst: &Instance) {
        let last = inst.last_active_ms();
        let flushed = inst.flushed_active_ms.load(Ordering::Relaxed);
        if last > flushed {
            inst.flushed_active_ms.store(last, Ordering::Relaxed);
            if let Err(e) = self
                .store
                .set_microvm_last_active(&inst.id, last as f64 / 1000.0)
                .await
            {
                tracing::warn!(microvm = %inst.id, "recording activity: {e}");
            }
        }
    }
}
