//! Runs image builds in the background, a bounded number at a time, and
//! records every transition in the store so a restart sees the truth.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_artifact::ArtifactSource;
use ember_assets::AssetStore;
use ember_builder::{BuildLog, BuildSpec, Builder, ImageHooks, ManagedBase};
use ember_store::StateStore;
use tokio::sync::Semaphore;

use crate::blobs::SnapshotBlobs;
use crate::layout::DataDir;
use crate::microvms::DiskReserve;
use crate::now;

/// What the service hands over once a version and its build are stored.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub build_id: String,
    pub image: String,
    pub version: u32,
    /// True for the image's first version: CREATED / CREATE_FAILED after,
    /// else UPDATED / UPDATE_FAILED.
    pub creates_image: bool,
    pub artifact: ArtifactSource,
    pub base: &'static ManagedBase,
    pub egress: bool,
    pub environment: Vec<(String, String)>,
    pub hooks: ImageHooks,
    pub memory_mib: u32,
}

/// How many builds run at once, and what each may take from the host.
pub struct BuildLimits {
    pub concurrent: usize,
    pub disk: DiskReserve,
    pub log_max_bytes: u64,
}

pub struct Builds {
    store: Arc<dyn StateStore>,
    builder: Arc<Builder>,
    assets: AssetStore,
    layout: DataDir,
    slots: Semaphore,
    /// A build starts only with this much disk free.
    disk: DiskReserve,
    /// The cap of each build's log file.
    log_max_bytes: u64,
    /// Builds queued or running: id → (image, log).
    live: Mutex<HashMap<String, (String, Arc<BuildLog>)>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Told the image of every version whose build succeeded.
    succeeded: Mutex<Option<tokio::sync::mpsc::Sender<String>>>,
    /// Where snapshots are uploaded before their version succeeds.
    blobs: Option<Arc<SnapshotBlobs>>,
}

/// Successes waiting for their subscriber; beyond this the news is
/// dropped (what it starts, the warm pool, is also filled by runs).
const SUCCESS_QUEUE: usize = 64;

impl Builds {
    pub fn new(
        store: Arc<dyn StateStore>,
        builder: Arc<Builder>,
        assets: AssetStore,
        layout: DataDir,
        limits: BuildLimits,
        metrics: Arc<crate::metrics::Metrics>,
        blobs: Option<Arc<SnapshotBlobs>>,
    ) -> Self {
        Self {
            store,
            builder,
            assets,
            layout,
            slots: Semaphore::new(limits.concurrent.max(1)),
            disk: limits.disk,
            log_max_bytes: limits.log_max_bytes,
            live: Mutex::new(HashMap::new()),
            metrics,
            succeeded: Mutex::new(None),
            blobs,
        }
    }

    /// The images of the versions whose builds succeed from now on, one
    /// per success; replaces any earlier subscriber.
    pub fn subscribe_successes(&self) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(SUCCESS_QUEUE);
        *self
            .succeeded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// Where this emberd's builds may take artifacts from.
    pub fn artifact_sources(&self) -> &ember_artifact::SourcePolicy {
        &self.builder.limits().sources
    }

    /// The log of a build that is still running, for followers.
    pub fn live_log(&self, build_id: &str) -> Option<Arc<BuildLog>> {
        self.lock_live()
            .get(build_id)
            .map(|(_, log)| Arc::clone(log))
    }

    /// True while any build of `image` is queued or running.
    pub fn building(&self, image: &str) -> bool {
        self.lock_live().values().any(|(i, _)| i == image)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Arc<BuildLog>)>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a build in the background. The log exists (and is followable)
    /// before this returns.
    pub fn start(self: &Arc<Self>, job: BuildJob) -> std::io::Result<()> {
        let log = Arc::new(BuildLog::create_with_cap(
            &self.layout.build_log(&job.build_id),
            self.log_max_bytes,
        )?);
        log.line(&format!(
            "build {} of {} version {} queued",
            job.build_id, job.image, job.version
        ));
        self.lock_live()
            .insert(job.build_id.clone(), (job.image.clone(), Arc::clone(&log)));
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.run(&job, &log).await;
            this.lock_live().remove(&job.build_id);
        });
        Ok(())
    }

    async fn run(&self, job: &BuildJob, log: &BuildLog) {
        let _slot = match self.slots.acquire().await {
            Ok(s) => s,
            Err(_) => return, // closed: the daemon is going down
        };
        // Checked once the build may start, not when it was queued: the
        // disk may have filled while it waited. The model has no capacity
        // error for CreateMicrovmImage/UpdateMicrovmImage, so the build
        // fails with the reason instead.
        if let Some(shortage) = self.disk.shortage() {
            let reason = format!("the build did not start: {shortage}");
            log.line(&format!("build FAILED: {reason}"));
            log.finish();
            tracing::warn!(image = %job.image, version = job.version, "{reason}");
            self.record(job, "FAILED", Some(&reason), None).await;
            return;
        }
        self.record(job, "IN_PROGRESS", None, None).await;
        let started = std::time::Instant::now();
        let result = self.build(job, log).await;
        let result_label = if result.is_ok() {
            "SUCCESSFUL"
        } else {
            "FAILED"
        };
        self.metrics.observe_build(result_label, started.elapsed());
        let result = match result {
            Ok(out) => self.publish(job, log, out).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(out) => {
                let dir = self.layout.relative(&out.snapshot_dir);
                if let Err(e) = self
                    .store
                    .set_build_sizes(
                        &job.build_id,
                        out.memory_bytes,
                        out.disk_bytes,
                        out.code_bytes,
                    )
                    .await
                {
                    tracing::error!(build = %job.build_id, "recording sizes: {e}");
                }
                self.record(job, "SUCCESSFUL", None, Some(&dir)).await;
                tracing::info!(image = %job.image, version = job.version, "build succeeded");
                let subscriber = self
                    .succeeded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                if let Some(tx) = subscriber {
                    let _ = tx.try_send(job.image.clone());
                }
            }
            Err(reason) => {
                tracing::warn!(image = %job.image, version = job.version, "build failed: {reason}");
                self.record(job, "FAILED", Some(&reason), None).await;
            }
        }
    }

    /// With an object store, the snapshot is uploaded (and its digest
    /// recorded) before the version may succeed; a failed upload fails
    /// the build and removes the snapshot.
    async fn publish(
        &self,
        job: &BuildJob,
        log: &BuildLog,
        out: ember_builder::BuildOutput,
    ) -> Result<ember_builder::BuildOutput, String> {
        let Some(blobs) = &self.blobs else {
            return Ok(out);
        };
        log.line(&format!("uploading the snapshot to {}", blobs.location()));
        let t0 = std::time::Instant::now();
        let published = match blobs.publish(&out.snapshot_dir).await {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&out.snapshot_dir);
                return Err(e);
            }
        };
        if let Err(e) = self
            .store
            .set_version_blob(
                &job.image,
                job.version,
                &published.digest,
                &blobs.compatibility(),
                now(),
            )
            .await
        {
            let _ = std::fs::remove_dir_all(&out.snapshot_dir);
            return Err(format!("recording the uploaded snapshot: {e}"));
        }
        log.line(&format!(
            "snapshot {} uploaded: {} MiB in {} chunks, {} new ({} MiB), {} zero, in {:.1} s",
            published.digest,
            published.bytes >> 20,
            published.chunks,
            published.chunks_uploaded,
            published.bytes_uploaded >> 20,
            published.chunks_zero,
            t0.elapsed().as_secs_f64()
        ));
        Ok(out)
    }

    async fn build(
        &self,
        job: &BuildJob,
        log: &BuildLog,
    ) -> Result<ember_builder::BuildOutput, String> {
        log.line(&format!(
            "preparing base image {}:{}",
            job.base.name, job.base.version
        ));
        let assets = self.assets.clone();
        let base = job.base;
        let rootfs =
            tokio::task::spawn_blocking(move || ember_builder::bases::ensure(&assets, base))
                .await
                .map_err(|e| format!("preparing the base image: {e}"))??;
        let spec = BuildSpec {
            id: job.build_id.clone(),
            artifact: job.artifact.clone(),
            base: rootfs,
            egress: job.egress,
            environment: job.environment.clone(),
            hooks: job.hooks.clone(),
            memory_mib: job.memory_mib,
            work_dir: self.layout.build_work(&job.build_id),
            output_dir: self.layout.snapshot(&job.image, job.version),
        };
        if let Some(parent) = spec.output_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        self.builder.build(&spec, log).await.map_err(|e| e.reason())
    }

    /// Writes a build's state to its build, version and image rows.
    async fn record(
        &self,
        job: &BuildJob,
        state: &str,
        reason: Option<&str>,
        snapshot: Option<&str>,
    ) {
        let t = now();
        let version_state = state;
        let image_state = match (state, job.creates_image) {
            ("SUCCESSFUL", true) => Some("CREATED"),
            ("SUCCESSFUL", false) => Some("UPDATED"),
            ("FAILED", true) => Some("CREATE_FAILED"),
            ("FAILED", false) => Some("UPDATE_FAILED"),
            _ => None,
        };
        let results = [
            self.store
                .update_build_state(&job.build_id, state, reason, t)
                .await,
            self.store
                .update_version_state(&job.image, job.version, version_state, reason, snapshot, t)
                .await,
            match image_state {
                Some(s) => self.store.set_image_state(&job.image, s, t).await,
                None => Ok(()),
            },
        ];
        for r in results {
            if let Err(e) = r {
                tracing::error!(build = %job.build_id, "recording build state {state}: {e}");
            }
        }
    }
}

/// Marks builds a previous emberd left unfinished as FAILED (their VMs
/// died with it), and removes their scratch and partial snapshots.
pub async fn recover_interrupted(
    store: &dyn StateStore,
    layout: &DataDir,
) -> anyhow::Result<usize> {
    // Builds run where they were asked for, and write their log there:
    // a store shared by several nodes holds the others' builds too, and
    // those are still running.
    let unfinished: Vec<_> = store
        .unfinished_builds()
        .await?
        .into_iter()
        .filter(|b| layout.resolve(&b.log_path).starts_with(layout.root()))
        .collect();
    let t = now();
    let reason = "emberd stopped while this build was running and found it unfinished at restart; \
                  the build was abandoned. Run UpdateMicrovmImage to build again.";
    for b in &unfinished {
        store
            .update_build_state(&b.id, "FAILED", Some(reason), t)
            .await?;
        store
            .update_version_state(&b.image, b.version, "FAILED", Some(reason), None, t)
            .await?;
        let image = store.image(&b.image).await?;
        let state = if b.version == 1 || image.state == "CREATING" {
            "CREATE_FAILED"
        } else {
            "UPDATE_FAILED"
        };
        store.set_image_state(&b.image, state, t).await?;
        remove_quietly(&layout.build_work(&b.id));
        remove_quietly(&layout.snapshot(&b.image, b.version));
        tracing::warn!(build = %b.id, image = %b.image, version = b.version, "interrupted build marked FAILED");
    }
    remove_stale_build_vms(layout);
    Ok(unfinished.len())
}

/// Build and image-check VMs die with the emberd that started them (their
/// QEMU has a parent-death signal); their runtime folders stay behind.
fn remove_stale_build_vms(layout: &DataDir) {
    let Ok(entries) = std::fs::read_dir(layout.vm_state().join("vms")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("build-") || name.starts_with("image-") {
            tracing::info!(vm = %name, "removing the runtime folder of a build VM from before the restart");
            remove_quietly(&entry.path());
        }
    }
}

fn remove_quietly(path: &Path) {
    if path.exists() {
        if let Err(e) = std::fs::remove_dir_all(path) {
            tracing::warn!(path = %path.display(), "cleanup failed: {e}");
        }
    }
}

/// Time a build may take before it is abandoned.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
