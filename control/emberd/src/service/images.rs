//! Images, their versions and builds.

use std::time::{Duration, UNIX_EPOCH};

use ember_api::model::{
    Architecture, BuildState, Chipset, CreateMicrovmImageRequest, DeleteMicrovmImageOutput,
    DeleteMicrovmImageVersionOutput, GetMicrovmImageBuildInput, HookState,
    ListMicrovmImageBuildsInput, ListMicrovmImageBuildsOutput, ListMicrovmImageVersionsInput,
    ListMicrovmImageVersionsOutput, ListMicrovmImagesRequest, ListMicrovmImagesResponse,
    MicrovmImage, MicrovmImageBuild, MicrovmImageBuildConfig, MicrovmImageState,
    MicrovmImageSummary, MicrovmImageVersion, MicrovmImageVersionState, MicrovmImageVersionStatus,
    MicrovmImageWithVersion, SnapshotBuild, Tags, Timestamp, UpdateMicrovmImageRequest,
    UpdateMicrovmImageVersionRequest,
};
use ember_api::{page_size, ApiError, PageToken};
use ember_builder::ImageHooks;
use ember_store::{BuildRecord, ImageRecord, NewImage, NewVersion, StoreError, VersionRecord};

use super::names::new_id;
use super::spec;
use super::{internal, Daemon};
use crate::builds::BuildJob;
use crate::now;

const IMAGE: &str = "MicrovmImage";
/// Memory of an image's VM when the request names none, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
const MEMORY_RANGE: std::ops::RangeInclusive<i32> = 128..=16384;
/// Lambda's limit on tags per resource.
pub const MAX_TAGS: usize = 50;

/// Everything a build needs that the request decides, checked up front so
/// a bad request is a ValidationException and never a failed build.
struct CheckedSpec {
    artifact: ember_artifact::ArtifactSource,
    base: &'static ember_builder::ManagedBase,
    egress: bool,
    hooks: ImageHooks,
    memory_mib: u32,
    environment: Vec<(String, String)>,
}

impl Daemon {
    async fn check_spec(&self, spec: &MicrovmImageBuildConfig) -> Result<CheckedSpec, ApiError> {
        let base = self.arns.managed_base(&spec.base_image_arn).ok_or_else(|| {
            ApiError::validation(format!(
                "baseImageArn {:?} is not a managed base image; ListManagedMicrovmImages lists them \
                 (e.g. {})",
                spec.base_image_arn,
                self.arns.managed_image("busybox")
            ))
        })?;
        if let Some(v) = &spec.base_image_version {
            if v != base.version {
                return Err(ApiError::validation(format!(
                    "baseImageVersion {v:?} does not exist for {}; ListManagedMicrovmImageVersions lists {:?}",
                    base.name, base.version
                )));
            }
        }
        let uri = spec
            .code_artifact
            .uri
            .as_deref()
            .ok_or_else(|| ApiError::validation("codeArtifact.uri is required"))?;
        // A refused host or a file outside the artifact roots is decided
        // here, before a build is queued; the fetch checks every connection
        // again.
        let artifact = ember_artifact::validate_uri(uri, self.builds.artifact_sources())
            .await
            .map_err(|e| ApiError::validation(format!("codeArtifact.uri: {e}")))?;
        let egress = !crate::connectors::egress(
            spec.egress_network_connectors.as_deref(),
            self.default_egress,
        )
        .map_err(ApiError::validation)?
        .is_empty();
        for cpu in spec.cpu_configurations.iter().flatten() {
            if cpu.architecture != Architecture::X86_64 {
                return Err(ApiError::validation(format!(
                    "cpuConfigurations: this host builds and runs {} only, not {}",
                    Architecture::X86_64,
                    cpu.architecture
                )));
            }
        }
        let memory_mib = match spec.resources.as_deref() {
            Some([r, ..]) => {
                if !MEMORY_RANGE.contains(&r.minimum_memory_in_mib) {
                    return Err(ApiError::validation(format!(
                        "resources.minimumMemoryInMiB must be between {} and {}, got {}",
                        MEMORY_RANGE.start(),
                        MEMORY_RANGE.end(),
                        r.minimum_memory_in_mib
                    )));
                }
                r.minimum_memory_in_mib as u32
            }
            _ => DEFAULT_MEMORY_MIB,
        };
        Ok(CheckedSpec {
            artifact,
            base,
            egress,
            hooks: image_hooks(spec)?,
            memory_mib,
            environment: app_environment(spec)?,
        })
    }

    /// The app's environment: the request's, then what the real service
    /// sets in every microVM (last, so it wins over the Dockerfile's ENV).
    fn runtime_env(
        &self,
        image: &str,
        version: u32,
        mut env: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        // The names the request may not set, so the two lists never drift.
        let [name, arn, number, region] = RESERVED_ENV.map(String::from);
        env.extend([
            (name, image.to_string()),
            (arn, self.arns.image(image)),
            (number, version.to_string()),
            (region, self.arns.region.clone()),
        ]);
        env
    }

    async fn start_build(
        &self,
        image: &str,
        version: u32,
        build_id: &str,
        creates: bool,
        c: CheckedSpec,
    ) {
        let job = BuildJob {
            build_id: build_id.to_string(),
            image: image.to_string(),
            version,
            creates_image: creates,
            artifact: c.artifact,
            base: c.base,
            egress: c.egress,
            environment: self.runtime_env(image, version, c.environment),
            hooks: c.hooks,
            memory_mib: c.memory_mib,
        };
        if let Err(e) = self.builds.start(job) {
            let reason = format!("could not start the build: {e}");
            let t = now();
            let state = if creates {
                "CREATE_FAILED"
            } else {
                "UPDATE_FAILED"
            };
            let recorded = [
                self.store
                    .update_build_state(build_id, "FAILED", Some(&reason), t)
                    .await,
                self.store
                    .update_version_state(image, version, "FAILED", Some(&reason), None, t)
                    .await,
                self.store.set_image_state(image, state, t).await,
            ];
            for e in recorded.into_iter().filter_map(Result::err) {
                tracing::error!(build = %build_id, "recording a build that could not start: {e}");
            }
        }
    }

    fn new_version(&self, spec: &MicrovmImageBuildConfig) -> (String, NewVersion) {
        let build_id = new_id();
        let log_path = self.layout.relative(&self.layout.build_log(&build_id));
        let version = NewVersion {
            spec: spec::to_json(spec),
            state: MicrovmImageVersionState::Pending.as_str().into(),
            status: MicrovmImageVersionStatus::Active.as_str().into(),
            build_id: build_id.clone(),
            build_state: BuildState::Pending.as_str().into(),
            log_path,
            now: now(),
        };
        (build_id, version)
    }

    pub(super) async fn create_image(
        &self,
        r: CreateMicrovmImageRequest,
    ) -> Result<MicrovmImageWithVersion, ApiError> {
        let spec = r.config.clone();
        let checked = self.check_spec(&spec).await?;
        let tags = r.tags.clone().unwrap_or_default();
        if tags.len() > MAX_TAGS {
            return Err(ApiError::validation(format!(
                "at most {MAX_TAGS} tags per image"
            )));
        }
        super::tags::check_ember_tags(tags.iter())?;
        let (build_id, version) = self.new_version(&spec);
        let t = version.now;
        let new = NewImage {
            name: r.name.clone(),
            arn: self.arns.image(&r.name),
            state: MicrovmImageState::Creating.as_str().into(),
            tags: tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            version,
        };
        self.store.create_image(&new).await.map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::conflict(
                IMAGE,
                &r.name,
                format!("a microVM image named {} already exists", r.name),
            ),
            other => internal(other),
        })?;
        self.start_build(&r.name, 1, &build_id, true, checked).await;
        Ok(with_version(
            &new.arn,
            &r.name,
            MicrovmImageState::Creating,
            t,
            spec,
            Some(tags),
            1,
        ))
    }

    pub(super) async fn update_image(
        &self,
        r: UpdateMicrovmImageRequest,
    ) -> Result<MicrovmImageWithVersion, ApiError> {
        // Checked first: it may wait on a DNS lookup, and nothing may
        // await between the in-progress check and recording the version.
        let spec = r.config.clone();
        let checked = self.check_spec(&spec).await?;
        let image = self.image_record(&r.image_identifier).await?;
        if self.builds.building(&image.name) {
            return Err(ApiError::conflict(
                IMAGE,
                &image.name,
                format!(
                    "{} has a build in progress; wait for it to finish",
                    image.name
                ),
            ));
        }
        let (build_id, version) = self.new_version(&spec);
        let t = version.now;
        let number = self
            .store
            .add_version(&image.name, MicrovmImageState::Updating.as_str(), &version)
            .await
            .map_err(|e| self.not_found_or(e, &image.name))?;
        self.start_build(&image.name, number, &build_id, false, checked)
            .await;
        let mut out = with_version(
            &image.arn,
            &image.name,
            MicrovmImageState::Updating,
            t,
            spec,
            None,
            number,
        );
        out.created_at = ts(image.created_at);
        let (active, failed) = self.latest_versions(&image.name).await?;
        out.latest_active_image_version = active;
        out.latest_failed_image_version = failed;
        Ok(out)
    }

    pub(super) async fn get_image(&self, identifier: &str) -> Result<MicrovmImage, ApiError> {
        let image = self.image_record(identifier).await?;
        let (active, failed) = self.latest_versions(&image.name).await?;
        let tags: Tags = self
            .store
            .tags(&image.name)
            .await
            .map_err(internal)?
            .into_iter()
            .collect();
        Ok(MicrovmImage {
            image_arn: image.arn,
            name: image.name,
            state: image_state(&image.state),
            latest_active_image_version: active,
            latest_failed_image_version: failed,
            created_at: ts(image.created_at),
            tags: Some(tags),
            updated_at: Some(ts(image.updated_at)),
        })
    }

    pub(super) async fn list_images(
        &self,
        r: ListMicrovmImagesRequest,
    ) -> Result<ListMicrovmImagesResponse, ApiError> {
        let scope = format!(
            "ListMicrovmImages:{}",
            r.name_filter.as_deref().unwrap_or("")
        );
        let after = token_after(&scope, r.next_token.as_deref())?;
        let (rows, next) = self
            .store
            .list_images(
                after.as_deref(),
                r.name_filter.as_deref(),
                page_size(r.max_results),
            )
            .await
            .map_err(internal)?;
        let mut items = Vec::with_capacity(rows.len());
        for image in rows {
            let (active, failed) = self.latest_versions(&image.name).await?;
            items.push(MicrovmImageSummary {
                image_arn: image.arn,
                name: image.name,
                state: image_state(&image.state),
                latest_active_image_version: active,
                latest_failed_image_version: failed,
                created_at: ts(image.created_at),
            });
        }
        Ok(ListMicrovmImagesResponse {
            next_token: next
                .map(|k| PageToken::new(&scope, k).map(|t| t.encode()))
                .transpose()?,
            items,
        })
    }

    pub(super) async fn delete_image(
        &self,
        identifier: &str,
    ) -> Result<DeleteMicrovmImageOutput, ApiError> {
        let image = self.image_record(identifier).await?;
        self.refuse_if_in_use(&image.name, None).await?;
        if self.builds.building(&image.name) {
            return Err(ApiError::conflict(
                IMAGE,
                &image.name,
                format!(
                    "{} has a build in progress; delete it once the build ends",
                    image.name
                ),
            ));
        }
        let logs = self.all_builds(&image.name).await?;
        self.store
            .delete_image(&image.name)
            .await
            .map_err(internal)?;
        // The rows are gone first: a crash below leaves unreferenced files,
        // never a version whose snapshot is missing.
        self.microvms.end_pool_of(&image.name, None);
        remove_tree(&self.layout.image_dir(&image.name));
        for b in logs {
            let _ = std::fs::remove_file(self.layout.resolve(&b.log_path));
        }
        tracing::info!(image = %image.name, "image deleted");
        Ok(DeleteMicrovmImageOutput {
            image_identifier: identifier.to_string(),
            state: MicrovmImageState::Deleted,
        })
    }

    pub(super) async fn get_version(
        &self,
        identifier: &str,
        version: &str,
    ) -> Result<MicrovmImageVersion, ApiError> {
        let image = self.image_record(identifier).await?;
        let rec = self.version_record(&image.name, version).await?;
        self.version_output(&image, &rec)
    }

    pub(super) async fn list_versions(
        &self,
        r: ListMicrovmImageVersionsInput,
    ) -> Result<ListMicrovmImageVersionsOutput, ApiError> {
        let image = self.image_record(&r.image_identifier).await?;
        let scope = format!("ListMicrovmImageVersions:{}", image.name);
        let after = match token_after(&scope, r.next_token.as_deref())? {
            Some(a) => a
                .parse()
                .map_err(|_| ApiError::validation("invalid nextToken"))?,
            None => 0,
        };
        let (rows, next) = self
            .store
            .list_versions(&image.name, after, page_size(r.max_results))
            .await
            .map_err(internal)?;
        let items = rows
            .iter()
            .map(|v| self.version_output(&image, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListMicrovmImageVersionsOutput {
            next_token: next
                .map(|k| PageToken::new(&scope, k.to_string()).map(|t| t.encode()))
                .transpose()?,
            items,
        })
    }

    pub(super) async fn update_version_status(
        &self,
        r: UpdateMicrovmImageVersionRequest,
    ) -> Result<MicrovmImageVersion, ApiError> {
        let image = self.image_record(&r.image_identifier).await?;
        let rec = self.version_record(&image.name, &r.image_version).await?;
        self.store
            .set_version_status(&image.name, rec.version, r.status.as_str(), now())
            .await
            .map_err(internal)?;
        let rec = self.version_record(&image.name, &r.image_version).await?;
        self.version_output(&image, &rec)
    }

    pub(super) async fn delete_version(
        &self,
        identifier: &str,
        version: &str,
    ) -> Result<DeleteMicrovmImageVersionOutput, ApiError> {
        let image = self.image_record(identifier).await?;
        let rec = self.version_record(&image.name, version).await?;
        self.refuse_if_in_use(&image.name, Some(rec.version))
            .await?;
        let builds = self.version_builds(&image.name, rec.version).await?;
        if builds.iter().any(|b| self.builds.live_log(&b.id).is_some()) {
            return Err(ApiError::conflict(
                "MicrovmImageVersion",
                version,
                format!("version {version} of {} is still building", image.name),
            ));
        }
        self.store
            .delete_version(&image.name, rec.version)
            .await
            .map_err(internal)?;
        // The pool knows a version by the snapshot folder its runs name.
        if let Some(dir) = &rec.snapshot_dir {
            self.microvms
                .end_pool_of(&image.name, Some(&self.layout.resolve(dir)));
        }
        if let Some(parent) = self.layout.snapshot(&image.name, rec.version).parent() {
            remove_tree(parent);
        }
        for b in builds {
            let _ = std::fs::remove_file(self.layout.resolve(&b.log_path));
        }
        Ok(DeleteMicrovmImageVersionOutput {
            image_identifier: identifier.to_string(),
            image_version: version.to_string(),
            state: MicrovmImageVersionState::Deleted,
        })
    }

    pub(super) async fn get_build(
        &self,
        r: GetMicrovmImageBuildInput,
    ) -> Result<MicrovmImageBuild, ApiError> {
        let image = self.image_record(&r.image_identifier).await?;
        let version = self.version_record(&image.name, &r.image_version).await?;
        let build = match self.store.build(&r.build_id).await {
            Ok(b) if b.image == image.name && b.version == version.version => b,
            Ok(_) | Err(StoreError::NotFound(_)) => {
                return Err(ApiError::not_found("MicrovmImageBuild", &r.build_id))
            }
            Err(e) => return Err(internal(e)),
        };
        let mut out = build_output(&image, &build);
        if build.state == "SUCCESSFUL" {
            let size = |b: Option<u64>| b.map(|v| v.min(i64::MAX as u64) as i64);
            out.snapshot_build = Some(SnapshotBuild {
                memory_snapshot_size_in_bytes: size(build.memory_bytes),
                code_install_size_in_bytes: size(build.code_bytes),
                disk_snapshot_size_in_bytes: size(build.disk_bytes),
            });
        }
        Ok(out)
    }

    pub(super) async fn list_builds(
        &self,
        r: ListMicrovmImageBuildsInput,
    ) -> Result<ListMicrovmImageBuildsOutput, ApiError> {
        let image = self.image_record(&r.image_identifier).await?;
        let version = self.version_record(&image.name, &r.image_version).await?;
        // Every build here is x86-64 on this host's chipset: a filter for
        // anything else matches nothing.
        let filtered_out = r.architecture.is_some_and(|a| a != Architecture::X86_64)
            || r.chipset.is_some_and(|c| c != host_chipset())
            || r.chipset_generation
                .as_deref()
                .is_some_and(|g| g != chipset_generation());
        let scope = format!("ListMicrovmImageBuilds:{}:{}", image.name, version.version);
        let after = token_after(&scope, r.next_token.as_deref())?;
        let (rows, next) = self
            .store
            .list_builds(
                &image.name,
                version.version,
                after.as_deref(),
                page_size(r.max_results),
            )
            .await
            .map_err(internal)?;
        if filtered_out {
            return Ok(ListMicrovmImageBuildsOutput {
                next_token: None,
                items: Vec::new(),
            });
        }
        Ok(ListMicrovmImageBuildsOutput {
            next_token: next
                .map(|k| PageToken::new(&scope, k).map(|t| t.encode()))
                .transpose()?,
            items: rows.iter().map(|b| build_output(&image, b)).collect(),
        })
    }

    pub(super) async fn image_record(&self, identifier: &str) -> Result<ImageRecord, ApiError> {
        let Some(name) = self.arns.image_name(identifier) else {
            return Err(ApiError::not_found(IMAGE, identifier));
        };
        match self.store.image(name).await {
            Ok(image) => Ok(image),
            Err(StoreError::NotFound(_)) => Err(ApiError::not_found(IMAGE, identifier)),
            Err(e) => Err(internal(e)),
        }
    }

    pub(super) async fn version_record(
        &self,
        image: &str,
        version: &str,
    ) -> Result<VersionRecord, ApiError> {
        let not_found =
            || ApiError::not_found("MicrovmImageVersion", &format!("{image}:{version}"));
        let number: u32 = version.parse().map_err(|_| not_found())?;
        self.store
            .version(image, number)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => not_found(),
                other => internal(other),
            })
    }

    fn not_found_or(&self, e: StoreError, image: &str) -> ApiError {
        match e {
            StoreError::NotFound(_) => ApiError::not_found(IMAGE, image),
            other => internal(other),
        }
    }

    fn version_output(
        &self,
        image: &ImageRecord,
        v: &VersionRecord,
    ) -> Result<MicrovmImageVersion, ApiError> {
        Ok(MicrovmImageVersion {
            config: spec::from_json(&v.spec)?,
            image_arn: image.arn.clone(),
            image_version: v.version.to_string(),
            state: version_state(&v.state),
            status: if v.status == "INACTIVE" {
                MicrovmImageVersionStatus::Inactive
            } else {
                MicrovmImageVersionStatus::Active
            },
            created_at: ts(v.created_at),
            updated_at: Some(ts(v.updated_at)),
            state_reason: v.state_reason.clone(),
            tags: None,
        })
    }

    /// (latest ACTIVE successful version, latest failed version).
    pub(super) async fn latest_versions(
        &self,
        image: &str,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        let mut active = None;
        let mut failed = None;
        let mut after = 0;
        loop {
            let (rows, next) = self
                .store
                .list_versions(image, after, 500)
                .await
                .map_err(internal)?;
            for v in rows {
                if v.state == "SUCCESSFUL" && v.status == "ACTIVE" {
                    active = Some(v.version.to_string());
                }
                if v.state == "FAILED" {
                    failed = Some(v.version.to_string());
                }
            }
            match next {
                Some(n) => after = n,
                None => return Ok((active, failed)),
            }
        }
    }

    async fn version_builds(
        &self,
        image: &str,
        version: u32,
    ) -> Result<Vec<BuildRecord>, ApiError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (rows, next) = self
                .store
                .list_builds(image, version, after.as_deref(), 500)
                .await
                .map_err(internal)?;
            out.extend(rows);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    async fn all_builds(&self, image: &str) -> Result<Vec<BuildRecord>, ApiError> {
        let mut out = Vec::new();
        let (versions, _) = self
            .store
            .list_versions(image, 0, usize::MAX / 2)
            .await
            .map_err(internal)?;
        for v in versions {
            out.extend(self.version_builds(image, v.version).await?);
        }
        Ok(out)
    }
}

/// Set by the service in every app's environment (see `runtime_env`);
/// an image may not set them itself.
const RESERVED_ENV: [&str; 4] = [
    "AWS_LAMBDA_MICROVM_IMAGE_NAME",
    "AWS_LAMBDA_MICROVM_IMAGE_ARN",
    "AWS_LAMBDA_MICROVM_IMAGE_VERSION",
    "AWS_REGION",
];

fn app_environment(spec: &MicrovmImageBuildConfig) -> Result<Vec<(String, String)>, ApiError> {
    let vars = spec.environment_variables.iter().flatten();
    if let Some((k, _)) = vars
        .clone()
        .find(|(k, _)| RESERVED_ENV.contains(&k.as_str()))
    {
        return Err(ApiError::validation(format!(
            "environmentVariables: {k} is reserved: the service sets it in every microVM \
             (reserved: {})",
            RESERVED_ENV.join(", ")
        )));
    }
    Ok(vars.map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn image_hooks(spec: &MicrovmImageBuildConfig) -> Result<ImageHooks, ApiError> {
    let Some(hooks) = &spec.hooks else {
        return Ok(ImageHooks::default());
    };
    let secs =
        |s: Option<i32>, default: u64| Duration::from_secs(s.map_or(default, |v| v.max(1) as u64));
    let image = hooks.microvm_image_hooks.clone().unwrap_or_default();
    let vm = hooks.microvm_hooks.clone().unwrap_or_default();
    let enabled = |h: Option<HookState>| h == Some(HookState::Enabled);
    let any_enabled = [
        image.ready,
        image.validate,
        vm.run,
        vm.resume,
        vm.suspend,
        vm.terminate,
    ]
    .into_iter()
    .any(enabled);
    let any_vm_hook = [vm.run, vm.resume, vm.suspend, vm.terminate]
        .into_iter()
        .any(enabled);
    if any_vm_hook && !enabled(image.ready) {
        return Err(ApiError::validation(
            "hooks.microvmImageHooks.ready must be ENABLED when any of hooks.microvmHooks is: \
             the service calls the run, resume, suspend and terminate hooks only on an app that \
             answered its ready hook",
        ));
    }
    if any_enabled && hooks.port.is_none() {
        return Err(ApiError::validation(
            "hooks.port is required when a hook is ENABLED: it is the port the app's hook listener uses",
        ));
    }
    Ok(ImageHooks {
        port: hooks.port.and_then(|p| u16::try_from(p).ok()),
        ready: enabled(image.ready).then(|| secs(image.ready_timeout_in_seconds, 300)),
        ready_timeout: image
            .ready_timeout_in_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64)),
        validate: enabled(image.validate).then(|| secs(image.validate_timeout_in_seconds, 300)),
    })
}

fn with_version(
    arn: &str,
    name: &str,
    state: MicrovmImageState,
    t: f64,
    spec: MicrovmImageBuildConfig,
    tags: Option<Tags>,
    version: u32,
) -> MicrovmImageWithVersion {
    MicrovmImageWithVersion {
        image_arn: arn.to_string(),
        name: name.to_string(),
        state,
        latest_active_image_version: None,
        latest_failed_image_version: None,
        created_at: ts(t),
        config: spec,
        tags,
        updated_at: Some(ts(t)),
        image_version: version.to_string(),
    }
}

fn build_output(image: &ImageRecord, b: &BuildRecord) -> MicrovmImageBuild {
    MicrovmImageBuild {
        image_arn: image.arn.clone(),
        image_version: b.version.to_string(),
        build_id: b.id.clone(),
        build_state: match b.state.as_str() {
            "IN_PROGRESS" => BuildState::InProgress,
            "SUCCESSFUL" => BuildState::Successful,
            "FAILED" => BuildState::Failed,
            _ => BuildState::Pending,
        },
        architecture: Architecture::X86_64,
        chipset: host_chipset(),
        chipset_generation: chipset_generation().to_string(),
        state_reason: b.state_reason.clone(),
        created_at: ts(b.created_at),
        snapshot_build: None,
    }
}

fn image_state(s: &str) -> MicrovmImageState {
    MicrovmImageState::ALL
        .iter()
        .copied()
        .find(|x| x.as_str() == s)
        .unwrap_or(MicrovmImageState::CreateFailed)
}

fn version_state(s: &str) -> MicrovmImageVersionState {
    MicrovmImageVersionState::ALL
        .iter()
        .copied()
        .find(|x| x.as_str() == s)
        .unwrap_or(MicrovmImageVersionState::Failed)
}

pub(super) fn ts(secs: f64) -> Timestamp {
    Timestamp::from_unix_seconds(secs).unwrap_or(Timestamp(UNIX_EPOCH))
}

/// The position a client's `nextToken` encodes for `scope`.
pub(super) fn token_after(scope: &str, token: Option<&str>) -> Result<Option<String>, ApiError> {
    token
        .map(|t| PageToken::decode(scope, t).map(|p| p.after))
        .transpose()
}

fn remove_tree(path: &std::path::Path) {
    if path.exists() {
        if let Err(e) = std::fs::remove_dir_all(path) {
            tracing::warn!(path = %path.display(), "removing: {e}");
        }
    }
}

/// The model's chipsets are INTEL and GRAVITON; an x86-64 host is INTEL.
fn host_chipset() -> Chipset {
    Chipset::Intel
}

/// The host CPU's model name, as builds snapshot for it.
fn chipset_generation() -> &'static str {
    static GENERATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    GENERATION.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().chars().take(64).collect::<String>())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "x86-64".to_string())
    })
}
