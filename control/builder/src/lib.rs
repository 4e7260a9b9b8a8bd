//! Image builds: artifact → Dockerfile steps in a build microVM → boot the
//! result, start the app, wait until ready → snapshot.
//!
//! The host only ever copies bytes: the artifact is unpacked by hostile-
//! input code (`ember-artifact`), `RUN` executes in the build VM, tars are
//! unpacked by the guest. Every stage logs to the live [`BuildLog`], and a
//! failure names the stage and carries the log's last lines.

pub mod bases;
mod cache;
mod finish;
pub mod guest_http;
pub mod hooks;
mod layers;
mod log;
mod registry_bases;
mod stages;
mod steps;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_artifact::{ArtifactSource, Limits};
use ember_dockerfile::{BaseRef, BuildPlan, ImageConfig};
use ember_vmm::{Hypervisor, Network, Vm, VmConfig};

pub use bases::{BaseRootfs, ManagedBase, MANAGED_BASES};
pub use cache::{BuildCache, CacheKey};
pub use finish::APP_LOG;
pub use log::{BuildLog, LogProgress};
pub use registry_bases::RegistryBases;
pub use steps::DEFAULT_PATH;

/// Host-wide settings for builds.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Identifies the kernel and agent builds run on; part of cache keys.
    pub guest_version: String,
    pub cache_dir: PathBuf,
    pub build_memory_mib: u32,
    pub build_vcpus: u8,
    pub limits: Limits,
    /// Bound on a whole build, so a hung `RUN` cannot hold a slot forever.
    pub timeout: Duration,
}

/// What one build makes.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub id: String,
    pub artifact: ArtifactSource,
    pub base: BaseRootfs,
    /// Outbound internet for `RUN` steps.
    pub egress: bool,
    /// The request's `environmentVariables`, on top of the Dockerfile's ENV.
    pub environment: Vec<(String, String)>,
    pub hooks: ImageHooks,
    pub memory_mib: u32,
    /// Scratch space of this build, removed afterwards.
    pub work_dir: PathBuf,
    /// Where the finished snapshot goes; must not exist.
    pub output_dir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct ImageHooks {
    pub port: Option<u16>,
    /// Set when the ready hook is enabled: its timeout.
    pub ready: Option<Duration>,
    /// `readyTimeoutInSeconds` even without the hook: bounds the port wait.
    pub ready_timeout: Option<Duration>,
    pub validate: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub snapshot_dir: PathBuf,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub code_bytes: u64,
    pub steps: usize,
    pub cached_steps: usize,
    pub snapshot_reused: bool,
    pub config: ImageConfig,
}

/// A failed build: which stage, why, and what the log said last.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage}: {message}")]
pub struct BuildError {
    pub stage: String,
    pub message: String,
    pub log_tail: Vec<String>,
}

impl BuildError {
    pub fn new(stage: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            message: message.into(),
            log_tail: Vec::new(),
        }
    }

    async fn with_app_log(mut self, vm: &dyn Vm) -> Self {
        let tail = finish::app_log_tail(vm).await;
        if !tail.is_empty() {
            self.message
                .push_str(&format!("; the app's last output: {}", tail.join(" | ")));
        }
        self
    }

    /// The `stateReason` a person reads: stage, cause, last log lines.
    pub fn reason(&self) -> String {
        let mut r = format!("{}: {}", self.stage, self.message);
        if !self.log_tail.is_empty() {
            r.push_str("\nlast log lines:\n");
            r.push_str(&self.log_tail.join("\n"));
        }
        r.chars().take(4000).collect()
    }
}

pub struct Builder {
    hv: Arc<dyn Hypervisor>,
    config: BuilderConfig,
    cache: BuildCache,
    /// Without it, a `FROM` naming a registry image fails the build.
    registry: Option<RegistryBases>,
}

impl Builder {
    pub fn new(hv: Arc<dyn Hypervisor>, config: BuilderConfig) -> std::io::Result<Self> {
        let cache = BuildCache::open(&config.cache_dir)?;
        Ok(Self {
            hv,
            config,
            cache,
            registry: None,
        })
    }

    /// Lets builds start `FROM` registry images.
    pub fn with_registry(mut self, registry: RegistryBases) -> Self {
        self.registry = Some(registry);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Runs a whole build. On failure nothing is left in `output_dir` or
    /// `work_dir`, and no VM keeps running.
    pub async fn build(&self, spec: &BuildSpec, log: &BuildLog) -> Result<BuildOutput, BuildError> {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.config.timeout, self.build_inner(spec, log)).await {
                Ok(r) => r,
                Err(_) => Err(BuildError::new(
                    "build",
                    format!("the build did not finish within {:?}", self.config.timeout),
                )),
            };
        let _ = std::fs::remove_dir_all(&spec.work_dir);
        match &result {
            Ok(out) => log.line(&format!(
                "build succeeded in {:.1} s ({} of {} steps cached{}); memory snapshot {} bytes, disk {} bytes",
                started.elapsed().as_secs_f64(),
                out.cached_steps,
                out.steps,
                if out.snapshot_reused { ", snapshot reused" } else { "" },
                out.memory_bytes,
                out.disk_bytes
            )),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&spec.output_dir);
                log.line(&format!("build FAILED: {e}"));
            }
        }
        log.finish();
        result.map_err(|mut e| {
            if e.log_tail.is_empty() {
                e.log_tail = log.tail();
            }
            e
        })
    }

    async fn build_inner(
        &self,
        spec: &BuildSpec,
        log: &BuildLog,
    ) -> Result<BuildOutput, BuildError> {
        std::fs::create_dir_all(&spec.work_dir)
            .map_err(|e| BuildError::new("prepare", format!("{}: {e}", spec.work_dir.display())))?;
        log.line(&format!(
            "fetching the code artifact {}",
            describe(&spec.artifact)
        ));
        let context = ember_artifact::fetch(
            &spec.artifact,
            &spec.work_dir.join("context"),
            &self.config.limits,
        )
        .await
        .map_err(|e| BuildError::new("fetch artifact", e.to_string()))?;
        log.line(&format!("code artifact: {} bytes", context.total_bytes()));
        let dockerfile = context
            .dockerfile()
            .map_err(|e| BuildError::new("read Dockerfile", e.to_string()))?;
        let parsed = ember_dockerfile::parse(&dockerfile)
            .map_err(|e| BuildError::new("parse Dockerfile", e.to_string()))?;
        let no_args = Default::default();
        let mut plan = parsed
            .plan(&no_args)
            .map_err(|e| BuildError::new("parse Dockerfile", e.to_string()))?;
        check_base(&plan, &spec.base)?;

        // Every step's key covers the base, the steps before it, its own
        // instruction and, for COPY/ADD, the bytes it copies (for COPY
        // --from, the key of the stage it copies from): a layer is reused
        // only when everything that shaped it is the same. A registry
        // base's key is that of its layers.
        let managed_root = CacheKey::new(
            &spec.base.name,
            &spec.base.content_version,
            &self.config.guest_version,
        );
        // Only the registry images of the stages the image needs are
        // pulled; their configurations then shape the plan.
        let registry_images: Vec<BaseRef> = {
            let work = stages::stages(&plan, |_| managed_root.clone());
            let needed = stages::needed(&work);
            let mut bases: Vec<BaseRef> = Vec::new();
            for i in needed {
                let base = work[i].base;
                if base.image.is_some() && !bases.iter().any(|b| b.image == base.image) {
                    bases.push(base.clone());
                }
            }
            bases
        };
        let ready = self
            .registry_bases(spec, &registry_images.iter().collect::<Vec<_>>(), log)
            .await?;
        if !ready.is_empty() {
            let configs = ready
                .iter()
                .map(|(reference, base)| (reference.clone(), base.config.clone()))
                .collect();
            plan = parsed
                .plan_with_bases(&no_args, &configs)
                .map_err(|e| BuildError::new("parse Dockerfile", e.to_string()))?;
        }
        let root_of = |base: &BaseRef| match base.image.as_ref().and_then(|r| ready.get(r)) {
            Some(ready) => ready.key.clone(),
            None => managed_root.clone(),
        };
        let mut stages = stages::stages(&plan, root_of);
        let needed = stages::needed(&stages);
        self.stage_keys(&mut stages, &context)?;
        let count = stages.len();
        let mut tops: Vec<Option<PathBuf>> = vec![None; count];
        let (mut total_steps, mut cached_steps) = (0, 0);
        for i in 0..count {
            if !needed.contains(&i) {
                log.line(&format!(
                    "{}skipped: the image does not use it",
                    stages[i].label(count)
                ));
                continue;
            }
            let start = match stages[i].parent {
                Some(p) => tops[p].clone(),
                None => match stages[i].base.image.as_ref() {
                    Some(reference) => ready.get(reference).map(|b| b.disk.clone()),
                    None => Some(spec.base.image.clone()),
                },
            }
            .ok_or_else(|| BuildError::new("build", "a stage's parent was not built"))?;
            let (top, cached) = self
                .layer(spec, (&stages, i), &start, &context, &tops, log)
                .await?;
            total_steps += stages[i].steps.len();
            cached_steps += cached;
            tops[i] = Some(top);
        }
        let image = &stages[count - 1];
        let rootfs = tops[count - 1]
            .clone()
            .ok_or_else(|| BuildError::new("build", "the image's stage was not built"))?;
        // The image's own layers: its stage's and those of the stages it is
        // built on (not those it only copied from).
        let mut image_layer_keys: Vec<String> = image.keys.clone();
        let mut parent = image.parent;
        while let Some(p) = parent {
            image_layer_keys.extend(stages[p].keys.iter().cloned());
            parent = stages[p].parent;
        }
        let key = image.top.clone();

        let mut finish_key = key.clone();
        finish_key.add(&serde_json::to_string(&plan.config).unwrap_or_default());
        finish_key.add(&serde_json::to_string(&spec.environment).unwrap_or_default());
        finish_key.add(&format!("{:?} {}", spec.hooks, spec.memory_mib));
        // What the image VM is, beyond the filesystem: snapshots taken
        // before it had an (isolated) network card cannot get internet.
        finish_key.add(IMAGE_VM_SHAPE);
        let finish_key = finish_key.hex();
        let snapshot_reused = self
            .snapshot(spec, &plan.config, &rootfs, &finish_key, log)
            .await?;

        let snapshot = self
            .hv
            .snapshot_info(&spec.output_dir)
            .map_err(|e| BuildError::new("snapshot", e.to_string()))?;
        // The image's own disk: every layer its steps made over the base
        // (shared with other images where steps match), plus the snapshot's.
        let layer_bytes: u64 = image_layer_keys
            .iter()
            .filter_map(|k| self.cache.layer(k))
            .map(|p| allocated(&p))
            .sum();
        Ok(BuildOutput {
            snapshot_dir: spec.output_dir.clone(),
            memory_bytes: snapshot.memory_bytes,
            disk_bytes: snapshot.disk_bytes + layer_bytes,
            code_bytes: context.total_bytes(),
            steps: total_steps,
            cached_steps,
            snapshot_reused,
            config: plan.config,
        })
    }

    /// Boots the built filesystem, readies the app and snapshots it into
    /// `spec.output_dir`; or links an identical earlier snapshot. Returns
    /// whether the snapshot came from the cache.
    async fn snapshot(
        &self,
        spec: &BuildSpec,
        config: &ImageConfig,
        rootfs: &Path,
        key: &str,
        log: &BuildLog,
    ) -> Result<bool, BuildError> {
        let stage = |m: String| BuildError::new("snapshot", m);
        if let Some(cached) = self.cache.snapshot(key) {
            log.line(
                "snapshot CACHED: the same filesystem, app and settings were snapshotted before",
            );
            cache::link_dir(&cached, &spec.output_dir).map_err(|e| stage(e.to_string()))?;
            return Ok(true);
        }
        log.line(&format!("booting the image ({} MiB)", spec.memory_mib));
        let mut vm_config = VmConfig::new(
            format!("image-{}", short(&spec.id)),
            &self.config.kernel,
            &self.config.initramfs,
            rootfs,
        );
        vm_config.mem_mib = spec.memory_mib;
        // Isolated, but with the card an internet VM has: a microVM
        // restored from the snapshot gets internet only when it asks.
        vm_config.network = Network::Isolated;
        let vm = self
            .hv
            .boot(vm_config)
            .await
            .map_err(|e| BuildError::new("boot image", e.to_string()))?;
        let ready = async {
            // For when a restore plugs the card in; harmless while isolated.
            // A minimal registry image may have no /etc at all: it then
            // resolves no names, which is its own choice.
            match vm
                .agent()
                .write_file("/etc/resolv.conf", SLIRP_RESOLV_CONF, 0o644)
                .await
            {
                Ok(_) => {}
                Err(ember_vmm::agent::AgentError::Guest {
                    kind: ember_vmm::agent::ErrorKind::NotFound,
                    ..
                }) => log.line("the image has no /etc: no resolv.conf written"),
                Err(e) => return Err(BuildError::new("network set-up", e.to_string())),
            }
            finish::start_and_wait(vm.as_ref(), spec, config, log).await
        }
        .await;
        if let Err(e) = ready {
            let _ = vm.stop().await;
            return Err(e);
        }
        let scratch = self.cache.scratch(&format!("{}-snapshot", spec.id));
        let snap = vm.snapshot(&scratch).await;
        let _ = vm.stop().await;
        let info = snap.map_err(|e| stage(e.to_string()))?;
        log.line(&format!(
            "snapshot taken in {} ms: memory {} bytes, device state {} bytes, disk {} bytes",
            info.duration_ms, info.memory_bytes, info.device_state_bytes, info.disk_bytes
        ));
        let cached = self
            .cache
            .put_snapshot(key, &scratch)
            .map_err(|e| stage(e.to_string()))?;
        cache::link_dir(&cached, &spec.output_dir).map_err(|e| stage(e.to_string()))?;
        Ok(false)
    }
}

/// Points the guest at the user-mode network's DNS relay.
const SLIRP_RESOLV_CONF: &[u8] = b"nameserver 10.0.2.3\n";

/// Part of the snapshot cache key: change it when the image VM's devices
/// or set-up change, so no older snapshot is reused.
const IMAGE_VM_SHAPE: &str = "image vm: isolated virtio-net, resolv.conf to slirp dns";

/// Every stage's managed base must be the request's: the build has that
/// base's root filesystem (and the image's base is the last stage's).
/// Registry images are checked when they are pulled.
fn check_base(plan: &BuildPlan, base: &BaseRootfs) -> Result<(), BuildError> {
    check_stage_base(&plan.base, base)?;
    for stage in &plan.stages {
        check_stage_base(&stage.base, base).map_err(|mut e| {
            e.message
                .push_str(" (every stage of a build starts from the request's base image)");
            e
        })?;
    }
    Ok(())
}

fn check_stage_base(from: &BaseRef, base: &BaseRootfs) -> Result<(), BuildError> {
    if from.image.is_some() {
        return Ok(());
    }
    if from.name != base.name {
        return Err(BuildError::new(
            "parse Dockerfile",
            format!(
                "Dockerfile line {}: FROM {} does not match the request's base image {}",
                from.line, from.name, base.name
            ),
        ));
    }
    if let Some(v) = &from.version {
        if v != &base.version && v != "latest" {
            return Err(BuildError::new(
                "parse Dockerfile",
                format!(
                    "Dockerfile line {}: FROM {}:{v} but the build uses version {}",
                    from.line, from.name, base.version
                ),
            ));
        }
    }
    Ok(())
}

/// How a failed step is named: its stage, number, line and instruction.
fn step_stage(label: &str, steps: &[ember_dockerfile::Step], n: usize) -> String {
    let step = &steps[n];
    format!(
        "{label}step {}/{} (Dockerfile line {}) `{}`",
        n + 1,
        steps.len(),
        step.line,
        step.instruction.chars().take(200).collect::<String>()
    )
}

fn describe(source: &ArtifactSource) -> String {
    match source {
        ArtifactSource::ZipFile(p) => format!("zip {}", p.display()),
        ArtifactSource::Directory(p) => format!("folder {}", p.display()),
        ArtifactSource::Http(u) => format!("zip at {u}"),
        ArtifactSource::S3 { bucket, key } => format!("zip at s3://{bucket}/{key}"),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}
