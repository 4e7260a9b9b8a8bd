//! What a `RunMicrovm` decided, stored with the microVM so a restarted
//! daemon runs it the same way.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::layout::DataDir;

use ember_api::model::{HookState, IdlePolicy, Logging, MicrovmHooks};
pub use ember_builder::hooks::Hook;

/// A VM's life when the request sets no `maximumDurationInSeconds`: the
/// model's maximum, 8 hours.
pub const DEFAULT_MAX_DURATION_S: u32 = 28_800;
/// A hook's timeout when the image names none.
const DEFAULT_HOOK_TIMEOUT_S: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration_s: u32,
    pub execution_role_arn: Option<String>,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub logging: Option<Logging>,
    pub run_hook_payload: Option<String>,
    pub hooks: RunHooks,
    pub memory_mib: u32,
    /// The image version's snapshot this VM was restored from; its disk
    /// is the backing file of the VM's own copy-on-write layer. Stored
    /// relative to the data dir of the node that built it.
    pub snapshot_dir: PathBuf,
    /// The node whose data dir holds `snapshot_dir` (none: written before
    /// nodes recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_node: Option<String>,
    /// The same snapshot in the object store (its index digest), for a
    /// node whose data dir does not hold `snapshot_dir`: it restores a
    /// copy fetched into its cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_blob: Option<String>,
}

/// The image's lifecycle hooks that apply to running VMs, with timeouts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunHooks {
    pub port: Option<u16>,
    pub run: Option<u64>,
    pub resume: Option<u64>,
    pub suspend: Option<u64>,
    pub terminate: Option<u64>,
}

impl RunHooks {
    pub fn from_model(port: Option<i32>, hooks: Option<&MicrovmHooks>) -> Self {
        let Some(h) = hooks else {
            return Self::default();
        };
        let timeout = |state: Option<HookState>, secs: Option<i32>| {
            (state == Some(HookState::Enabled)).then(|| {
                secs.and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .unwrap_or(DEFAULT_HOOK_TIMEOUT_S)
            })
        };
        Self {
            port: port.and_then(|p| u16::try_from(p).ok()),
            run: timeout(h.run, h.run_timeout_in_seconds),
            resume: timeout(h.resume, h.resume_timeout_in_seconds),
            suspend: timeout(h.suspend, h.suspend_timeout_in_seconds),
            terminate: timeout(h.terminate, h.terminate_timeout_in_seconds),
        }
    }

    /// The guest port and timeout of an enabled hook.
    pub fn get(&self, hook: Hook) -> Option<(u16, Duration)> {
        let secs = match hook {
            Hook::Run => self.run,
            Hook::Resume => self.resume,
            Hook::Suspend => self.suspend,
            Hook::Terminate => self.terminate,
            // Build hooks; a running VM never calls them.
            Hook::Ready | Hook::Validate => None,
        }?;
        Some((self.port?, Duration::from_secs(secs)))
    }
}

impl RunSpec {
    /// The spec as the store keeps it: paths in the data dir relative to
    /// it, so the folder can move.
    pub fn to_json(&self, layout: &DataDir) -> String {
        let stored = Self {
            snapshot_dir: layout.relative(&self.snapshot_dir).into(),
            ..self.clone()
        };
        // A struct of plain fields always serialises.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    pub fn from_json(text: &str, layout: &DataDir) -> Result<Self, serde_json::Error> {
        let mut spec: Self = serde_json::from_str(text)?;
        spec.snapshot_dir = layout.resolve(&spec.snapshot_dir);
        Ok(spec)
    }

    pub fn shell_allowed(&self) -> bool {
        crate::connectors::allows_shell(&self.ingress)
    }

    /// Outbound internet (the connectors were validated at run time).
    pub fn internet(&self) -> bool {
        !self.egress.is_empty()
    }

    pub fn auto_resume(&self) -> bool {
        self.idle_policy
            .as_ref()
            .is_some_and(|p| p.auto_resume_enabled)
    }
}
