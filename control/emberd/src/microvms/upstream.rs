//! The proxy's way into a VM: a stream to a guest port through the
//! agent, or a shell on a guest terminal (`GET /shell` at the endpoint),
//! resuming the VM first when it is suspended and allowed to. Both count as
//! an open stream for the idle policy while they last.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use ember_api::model::MicrovmState;
use ember_proxy::tap::{Direction, Tap};
use ember_proxy::{AsyncStream, Shell, TerminalSize, Upstream, UpstreamError};
use ember_vmm::Vm;

use super::instance::{Instance, StreamGuard};
use super::Microvms;
use crate::metrics::Metrics;

/// Set once the `Microvms` exists: the proxy is created first because
/// the microVMs need it for their endpoints.
#[derive(Default)]
pub struct VmUpstream {
    microvms: OnceLock<Weak<Microvms>>,
}

impl VmUpstream {
    pub fn attach(&self, microvms: &Arc<Microvms>) {
        let _ = self.microvms.set(Arc::downgrade(microvms));
    }

    /// Whether this node runs `microvm_id` (it is in the live map).
    pub fn runs(&self, microvm_id: &str) -> bool {
        self.microvms()
            .is_ok_and(|m| m.instance(microvm_id).is_some())
    }

    fn microvms(&self) -> Result<Arc<Microvms>, UpstreamError> {
        self.microvms
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| UpstreamError::Unavailable("emberd is starting or stopping".into()))
    }
}

#[async_trait::async_trait]
impl Upstream for VmUpstream {
    async fn connect(
        &self,
        microvm_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, UpstreamError> {
        let microvms = self.microvms()?;
        let inst = microvms
            .instance(microvm_id)
            .ok_or(UpstreamError::NotFound)?;
        // No touch here: the proxy calls `touch` on every request before
        // it connects.
        let asked = Instant::now();
        let resuming = inst.state() == MicrovmState::Suspended;
        let vm = microvms.serving_vm(&inst).await?;
        let guard = inst.stream_opened();
        let stream = vm
            .agent()
            .connect(port)
            .await
            .map_err(|e| UpstreamError::Refused(format!("guest port {port}: {e}")))?;
        let first_byte = resuming.then(|| (asked, Arc::clone(&microvms.config.metrics)));
        Ok(Box::new(tracked(stream, guard, first_byte)))
    }

    async fn open_shell(
        &self,
        microvm_id: &str,
        size: TerminalSize,
    ) -> Result<Shell, UpstreamError> {
        let microvms = self.microvms()?;
        let inst = microvms
            .instance(microvm_id)
            .ok_or(UpstreamError::NotFound)?;
        // Shell tokens are minted only for such VMs; a VM's connectors
        // never change, so this is a second lock on the same door.
        if !inst.spec.shell_allowed() {
            return Err(UpstreamError::Unavailable(
                "the microVM was not run with the SHELL_INGRESS connector".into(),
            ));
        }
        let vm = microvms.serving_vm(&inst).await?;
        let guard = inst.stream_opened();
        let (terminal, control) = crate::shell::start(&*vm, size)
            .await
            .map_err(|e| UpstreamError::Refused(format!("starting a shell: {e}")))?;
        Ok(Shell {
            terminal: Box::new(tracked(terminal, guard, None)),
            control: Box::new(control),
        })
    }

    fn touch(&self, microvm_id: &str) {
        if let Ok(m) = self.microvms() {
            if let Some(inst) = m.instance(microvm_id) {
                inst.touch();
            }
        }
    }
}

impl Microvms {
    /// The VM to send a request to: the running one, or, after waiting for
    /// the transition in progress, the one an auto-resume brings back.
    /// Concurrent callers share one resume: they queue on the transition
    /// lock and find the VM running.
    pub(super) async fn serving_vm(
        &self,
        inst: &Arc<Instance>,
    ) -> Result<Arc<dyn Vm>, UpstreamError> {
        // The guest cannot answer: a request would wait for the host's
        // disk, and the client rather hears so now.
        if let Some(reason) = inst.host_pause_reason() {
            return Err(UpstreamError::Unavailable(reason.into()));
        }
        if let Some(reason) = self.fenced_reason() {
            return Err(UpstreamError::Unavailable(format!(
                "this node holds its microVMs paused: {reason}"
            )));
        }
        if inst.state() == MicrovmState::Running {
            if let Some(vm) = inst.vm() {
                return Ok(vm);
            }
        }
        let _guard = inst.transition.lock().await;
        match inst.state() {
            MicrovmState::Running => inst
                .vm()
                .ok_or_else(|| UpstreamError::Unavailable("the microVM is not running".into())),
            MicrovmState::Suspended if inst.spec.auto_resume() => self
                .resume_locked(inst, "resumed by a request to its endpoint (autoResumeEnabled)")
                .await
                .map_err(UpstreamError::Unavailable),
            MicrovmState::Suspended => Err(UpstreamError::Unavailable(
                "the microVM is SUSPENDED and its idle policy does not auto-resume; call ResumeMicrovm"
                    .into(),
            )),
            MicrovmState::Terminating | MicrovmState::Terminated => Err(UpstreamError::NotFound),
            other => Err(UpstreamError::Unavailable(format!("the microVM is {other}"))),
        }
    }
}

/// A guest stream that counts as an open connection while it lives, and
/// its bytes as activity; for a request that found its VM suspended,
/// `first_byte` (when it asked) times the app's first byte back.
fn tracked<S: AsyncStream + 'static>(
    inner: S,
    guard: StreamGuard,
    mut first_byte: Option<(Instant, Arc<Metrics>)>,
) -> Tap<S, impl FnMut(Direction, usize) + Send + Unpin + 'static> {
    Tap::new(inner, move |direction, _| {
        if direction == Direction::Read {
            if let Some((asked, metrics)) = first_byte.take() {
                metrics.observe_auto_resume_first_byte(asked.elapsed());
            }
        }
        guard.moved();
    })
}
