//! The eight microVM operations: validation and the API's shapes; the
//! state machine itself is in `crate::microvms`.

use std::path::Path;

use ember_api::model::{
    AuthToken, CreateMicrovmAuthTokenRequest, CreateMicrovmShellAuthTokenRequest, IdlePolicy,
    ListMicrovmsRequest, ListMicrovmsResponse, Microvm, MicrovmImageBuildConfig,
    MicrovmImageVersionState, MicrovmImageVersionStatus, MicrovmItem, MicrovmState,
    PortSpecification, RunMicrovmRequest,
};
use ember_api::{page_size, ApiError, ErrorKind, PageToken};
use ember_proxy::{Claims, PortRule, PortScope, TokenKind};
use ember_store::{MicrovmRecord, NodeRecord, StoreError, VersionRecord};

use super::images::{token_after, ts, DEFAULT_MEMORY_MIB};
use super::{internal, spec, Daemon};
use crate::connectors::{self, HTTP_INGRESS, SHELL_INGRESS};
use crate::layout::DataDir;
use crate::microvms::spec::{RunHooks, RunSpec, DEFAULT_MAX_DURATION_S};
use crate::microvms::{PoolKey, RunPlan};

const RESOURCE: &str = "Microvm";
/// The header a token travels in, as the real service names it.
pub const AUTH_HEADER: &str = "X-aws-proxy-auth";
const MAX_TOKEN_MINUTES: i32 = 60;

/// What a fork answers.
#[derive(serde::Serialize)]
pub struct ForkedMicrovms {
    pub microvms: Vec<Microvm>,
}

impl Daemon {
    pub(super) async fn run_microvm(&self, r: RunMicrovmRequest) -> Result<Microvm, ApiError> {
        let image = self.image_record(&r.image_identifier).await?;
        let version = self
            .runnable_version(&image.name, r.image_version.as_deref())
            .await?;
        let build: MicrovmImageBuildConfig = spec::from_json(&version.spec)?;
        let snapshot_dir = version
            .snapshot_dir
            .as_ref()
            .map(|dir| self.layout.resolve(dir))
            .ok_or_else(|| {
                ApiError::conflict(
                    "MicrovmImageVersion",
                    &format!("{}:{}", image.name, version.version),
                    "this version has no snapshot to run",
                )
            })?;
        let placement = self.placement(&version, &snapshot_dir).await?;
        if let Some(p) = &r.idle_policy {
            self.check_idle_policy(p)?;
        }
        // The VM gets outbound internet when the list is non-empty.
        let egress =
            connectors::egress(r.egress_network_connectors.as_deref(), self.default_egress)
                .map_err(ApiError::validation)?;
        let ingress = connectors::ingress(r.ingress_network_connectors.as_deref())
            .map_err(ApiError::validation)?;
        let memory_mib = memory_mib(&build);
        let hooks = build.hooks.as_ref();
        let spec = RunSpec {
            idle_policy: r.idle_policy.clone(),
            maximum_duration_s: r
                .maximum_duration_in_seconds
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(DEFAULT_MAX_DURATION_S),
            execution_role_arn: r.execution_role_arn.clone(),
            ingress,
            egress,
            logging: r.logging.clone(),
            run_hook_payload: r.run_hook_payload.clone(),
            hooks: RunHooks::from_model(
                hooks.and_then(|h| h.port),
                hooks.and_then(|h| h.microvm_hooks.as_ref()),
            ),
            memory_mib,
            snapshot_dir,
            snapshot_node: version.snapshot_node.clone(),
            snapshot_blob: version.snapshot_blob.clone(),
        };
        let plan = RunPlan {
            image: image.name.clone(),
            version: version.version,
            image_arn: image.arn.clone(),
            spec,
        };
        let record = match placement {
            Some(nodes) => self.microvms.run_on(plan, &nodes).await?,
            None => self.microvms.run(plan).await?,
        };
        microvm_output(&record, &self.layout)
    }

    /// The named version, or the newest that can run.
    async fn runnable_version(
        &self,
        image: &str,
        version: Option<&str>,
    ) -> Result<VersionRecord, ApiError> {
        let number = match version {
            Some(v) => v.to_string(),
            None => self.latest_versions(image).await?.0.ok_or_else(|| {
                ApiError::conflict(
                    "MicrovmImage",
                    image,
                    format!("image {image} has no SUCCESSFUL, ACTIVE version to run yet"),
                )
            })?,
        };
        let v = self.version_record(image, &number).await?;
        let runnable = v.state == MicrovmImageVersionState::Successful.as_str()
            && v.status == MicrovmImageVersionStatus::Active.as_str();
        if !runnable {
            return Err(ApiError::conflict(
                "MicrovmImageVersion",
                &format!("{image}:{number}"),
                format!(
                    "version {number} of image {image} is {} and {}; only a SUCCESSFUL, ACTIVE version can run",
                    v.state, v.status
                ),
            ));
        }
        Ok(v)
    }

    fn check_idle_policy(&self, p: &IdlePolicy) -> Result<(), ApiError> {
        let floor = self.microvms.config().min_idle_seconds;
        if i64::from(p.max_idle_duration_seconds) < i64::from(floor) {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value {} at 'idlePolicy.maxIdleDurationSeconds' failed \
                 to satisfy constraint: Member must have value greater than or equal to {floor}",
                p.max_idle_duration_seconds
            )));
        }
        Ok(())
    }

    /// Where a run of `version` may start: `None` here, without the
    /// store (its snapshot is in this data dir and no other node could
    /// fetch it), else the nodes the store picks from: every registered
    /// node when the snapshot is in the object store and this is a
    /// cluster, else the node whose data dir holds it.
    async fn placement(
        &self,
        version: &VersionRecord,
        dir: &Path,
    ) -> Result<Option<Vec<String>>, ApiError> {
        if version.snapshot_blob.is_some() && self.microvms.places_anywhere() {
            let nodes = self.store.nodes().await.map_err(internal)?;
            return restorable_on(nodes, version.snapshot_class.as_deref())
                .map(Some)
                .map_err(|m| ApiError::new(ErrorKind::InsufficientCapacity, m));
        }
        let built_by = version.snapshot_node.as_deref();
        if self.microvms.holds_snapshot(dir, built_by) {
            return Ok(None);
        }
        match built_by {
            Some(node) if node != self.node_id() => Ok(Some(vec![node.to_string()])),
            // Without an object store, snapshots live in the data dir of
            // the node that built them: saying so beats a VM that ends at
            // its restore.
            _ => Err(ApiError::conflict(
                "MicrovmImageVersion",
                &format!("{}:{}", version.image, version.version),
                format!(
                    "version {} of {} was built by another node: its snapshot {} is not in \
                     node {}'s data dir; run it through the node that built it, or give every \
                     node one --blob-store",
                    version.version,
                    version.image,
                    dir.display(),
                    self.node_id()
                ),
            )),
        }
    }

    /// Brings the warm pool of `image`'s default version (the newest
    /// SUCCESSFUL, ACTIVE one) to the image's pool size; a no-op for an
    /// image with nothing to run.
    pub async fn fill_image_pool(&self, image: &str) {
        let Ok((Some(number), _)) = self.latest_versions(image).await else {
            return;
        };
        let Ok(version) = self.version_record(image, &number).await else {
            return;
        };
        let build: Result<MicrovmImageBuildConfig, _> = spec::from_json(&version.spec);
        let (Some(dir), Ok(build)) = (version.snapshot_dir.as_ref(), build) else {
            return;
        };
        let dir = self.layout.resolve(dir);
        if !self
            .microvms
            .holds_snapshot(&dir, version.snapshot_node.as_deref())
        {
            return;
        }
        let key = PoolKey {
            snapshot_dir: dir,
            memory_mib: memory_mib(&build),
        };
        self.microvms.fill_pool(image, key);
    }

    /// Ember's fork (`crate::microvm_fork`): the new microVMs, PENDING.
    pub async fn fork_microvm(&self, id: &str, count: u32) -> Result<ForkedMicrovms, ApiError> {
        let records = self.microvms.fork(id, count).await?;
        Ok(ForkedMicrovms {
            microvms: records
                .iter()
                .map(|m| microvm_output(m, &self.layout))
                .collect::<Result<_, _>>()?,
        })
    }

    pub(super) async fn get_microvm(&self, id: &str) -> Result<Microvm, ApiError> {
        let record = self
            .microvms
            .with_waiting_state(self.microvm_record(id).await?);
        let mut out = microvm_output(&record, &self.layout)?;
        // On a full data disk the store may not have taken the reason.
        if out.state == MicrovmState::Running {
            if let Some(reason) = self
                .microvms
                .instance(id)
                .and_then(|i| i.host_pause_reason())
            {
                out.state_reason = Some(reason.into());
            }
        }
        Ok(out)
    }

    pub(super) async fn list_microvms(
        &self,
        r: ListMicrovmsRequest,
    ) -> Result<ListMicrovmsResponse, ApiError> {
        let image = r.image_identifier.as_ref().map(|i| self.image_name(i));
        let version = match &r.image_version {
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                ApiError::validation(format!("imageVersion {v:?} is not a version number"))
            })?),
            None => None,
        };
        let scope = format!(
            "ListMicrovms:{}:{}",
            image.as_deref().unwrap_or(""),
            version.map(|v| v.to_string()).unwrap_or_default()
        );
        let after = token_after(&scope, r.next_token.as_deref())?;
        let (rows, next) = self
            .store
            .list_microvms(
                after.as_deref(),
                image.as_deref(),
                version,
                page_size(r.max_results),
            )
            .await
            .map_err(internal)?;
        let rows: Vec<_> = rows
            .into_iter()
            .map(|m| self.microvms.with_waiting_state(m))
            .collect();
        let items = rows
            .iter()
            .map(|m| {
                Ok(MicrovmItem {
                    microvm_id: m.id.clone(),
                    state: parse_state(&m.state)?,
                    image_arn: m.image_arn.clone(),
                    image_version: m.version.to_string(),
                    started_at: ts(m.started_at),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(ListMicrovmsResponse {
            next_token: next
                .map(|k| PageToken::new(&scope, k).map(|t| t.encode()))
                .transpose()?,
            items,
        })
    }

    pub(super) async fn create_auth_token(
        &self,
        r: CreateMicrovmAuthTokenRequest,
    ) -> Result<AuthToken, ApiError> {
        let rec = self.tokenable(&r.microvm_identifier).await?;
        let ports = port_scope(&r.allowed_ports)?;
        self.mint(&rec, ports, TokenKind::Endpoint, r.expiration_in_minutes)
    }

    pub(super) async fn create_shell_token(
        &self,
        r: CreateMicrovmShellAuthTokenRequest,
    ) -> Result<AuthToken, ApiError> {
        let rec = self.tokenable(&r.microvm_identifier).await?;
        let spec = RunSpec::from_json(&rec.spec, &self.layout)
            .map_err(|e| ApiError::internal(format!("stored run spec: {e}")))?;
        if !spec.shell_allowed() {
            return Err(ApiError::validation(format!(
                "microVM {} was not run with the {SHELL_INGRESS} ingress network connector; \
                 run it with --ingress-network-connectors {HTTP_INGRESS} {SHELL_INGRESS} to allow a shell",
                rec.id
            )));
        }
        self.mint(
            &rec,
            PortScope::All,
            TokenKind::Shell,
            r.expiration_in_minutes,
        )
    }

    async fn tokenable(&self, id: &str) -> Result<MicrovmRecord, ApiError> {
        let rec = self.microvm_record(id).await?;
        if [MicrovmState::Terminating, MicrovmState::Terminated]
            .iter()
            .any(|s| s.as_str() == rec.state)
        {
            return Err(ApiError::conflict(
                RESOURCE,
                id,
                format!("microVM {id} is {}", rec.state),
            ));
        }
        Ok(rec)
    }

    fn mint(
        &self,
        rec: &MicrovmRecord,
        ports: PortScope,
        kind: TokenKind,
        minutes: i32,
    ) -> Result<AuthToken, ApiError> {
        if !(1..=MAX_TOKEN_MINUTES).contains(&minutes) {
            return Err(ApiError::validation(format!(
                "expirationInMinutes must be between 1 and {MAX_TOKEN_MINUTES}, got {minutes}"
            )));
        }
        let now = crate::now() as u64;
        let claims = Claims::new(
            &rec.id,
            ports,
            kind,
            now,
            u64::from(minutes.unsigned_abs()) * 60,
        );
        let token = self
            .microvms
            .tokens()
            .mint(&claims)
            .map_err(|e| ApiError::validation(e.to_string()))?;
        Ok(AuthToken {
            auth_token: [(AUTH_HEADER.to_string(), token)].into_iter().collect(),
        })
    }

    async fn microvm_record(&self, id: &str) -> Result<MicrovmRecord, ApiError> {
        self.store.microvm(id).await.map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found(RESOURCE, id),
            other => internal(other),
        })
    }

    /// Images and versions that live microVMs run from cannot be deleted:
    /// their snapshot disks back the VMs' disks.
    pub(super) async fn refuse_if_in_use(
        &self,
        image: &str,
        version: Option<u32>,
    ) -> Result<(), ApiError> {
        let in_use = self
            .store
            .first_live_microvm(image, version)
            .await
            .map_err(internal)?;
        if let Some(vm) = in_use {
            let what = match version {
                Some(v) => format!("version {v} of image {image}"),
                None => format!("image {image}"),
            };
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{what} is in use by microVM {} ({}); terminate its microVMs first",
                    vm.id, vm.state
                ),
            ));
        }
        Ok(())
    }
}

fn port_scope(specs: &[PortSpecification]) -> Result<PortScope, ApiError> {
    // The proxy's constructors check the numbers (1..=65535, ordered
    // ranges); this only maps the union and names the entry.
    let bad = |i: usize, e: ember_proxy::TokenError| {
        ApiError::validation(format!("allowedPorts entry {}: {e}", i + 1))
    };
    let mut rules = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        match (s.port, &s.range, &s.all_ports) {
            (Some(p), None, None) => rules.push(PortRule::port(p).map_err(|e| bad(i, e))?),
            (None, Some(r), None) => {
                rules.push(PortRule::range(r.start_port, r.end_port).map_err(|e| bad(i, e))?)
            }
            (None, None, Some(_)) => return Ok(PortScope::All),
            _ => {
                return Err(ApiError::validation(
                    "allowedPorts: each entry sets exactly one of port, range, allPorts",
                ))
            }
        }
    }
    if rules.is_empty() {
        return Err(ApiError::validation(
            "allowedPorts must name at least one port",
        ));
    }
    Ok(PortScope::Only(rules))
}

fn parse_state(s: &str) -> Result<MicrovmState, ApiError> {
    s.parse()
        .map_err(|e: String| ApiError::internal(format!("stored microVM state: {e}")))
}

/// The memory a version's VMs get: its build's first resource entry.
fn memory_mib(build: &MicrovmImageBuildConfig) -> u32 {
    match build.resources.as_deref() {
        Some([r, ..]) => u32::try_from(r.minimum_memory_in_mib).unwrap_or(DEFAULT_MEMORY_MIB),
        _ => DEFAULT_MEMORY_MIB,
    }
}

/// The nodes that can restore a snapshot of compatibility `class`: those
/// of that class, and those that never reported one (an emberd from
/// before classes: its restore still checks). Restoring elsewhere would
/// fail after a fetch; the caller hears now instead.
fn restorable_on(nodes: Vec<NodeRecord>, class: Option<&str>) -> Result<Vec<String>, String> {
    let Some(class) = class else {
        return Ok(nodes.into_iter().map(|n| n.id).collect());
    };
    let (fit, other): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .partition(|n| n.compat_class.as_deref().map_or(true, |c| c == class));
    if fit.is_empty() {
        let others: Vec<String> = other
            .iter()
            .map(|n| format!("{}: {}", n.id, n.compat_class.as_deref().unwrap_or("?")))
            .collect();
        return Err(format!(
            "no node can restore this image's snapshot: it was written by {class}, and the \
             nodes run {}; update the image through one of them to build it for its class",
            others.join(", ")
        ));
    }
    Ok(fit.into_iter().map(|n| n.id).collect())
}

fn microvm_output(m: &MicrovmRecord, layout: &DataDir) -> Result<Microvm, ApiError> {
    // A damaged run record still describes its VM (emberd ends such a VM
    // at restart, saying why): what it held is left out, the rest answers.
    let spec = RunSpec::from_json(&m.spec, layout)
        .inspect_err(|e| tracing::warn!(microvm = %m.id, "stored run spec: {e}"))
        .ok();
    let none_if_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Ok(Microvm {
        microvm_id: m.id.clone(),
        state: parse_state(&m.state)?,
        endpoint: m.endpoint.clone(),
        image_arn: m.image_arn.clone(),
        image_version: m.version.to_string(),
        execution_role_arn: spec.as_ref().and_then(|s| s.execution_role_arn.clone()),
        idle_policy: spec.as_ref().and_then(|s| s.idle_policy.clone()),
        maximum_duration_in_seconds: spec.as_ref().map_or(0, |s| {
            i32::try_from(s.maximum_duration_s).unwrap_or(i32::MAX)
        }),
        started_at: ts(m.started_at),
        terminated_at: m.terminated_at.map(ts),
        state_reason: m.state_reason.clone(),
        ingress_network_connectors: spec.as_ref().and_then(|s| none_if_empty(&s.ingress)),
        egress_network_connectors: spec.as_ref().and_then(|s| none_if_empty(&s.egress)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_api::model::{Empty, PortRange};

    fn node(id: &str, class: Option<&str>) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            epoch: 1,
            state: "READY".into(),
            state_reason: None,
            lease_expires_at: 0.0,
            lease_left_seconds: 10.0,
            registered_at: 0.0,
            live_microvms: 0,
            address: None,
            free_mib: None,
            compat_class: class.map(String::from),
        }
    }

    #[test]
    fn runs_are_placed_only_where_the_snapshot_restores() {
        let nodes = || {
            vec![
                node("n1", Some("qemu 7.2 tcg")),
                node("n2", Some("qemu 8.2 kvm Xeon")),
                node("old", None),
            ]
        };
        assert_eq!(
            restorable_on(nodes(), Some("qemu 7.2 tcg")).unwrap(),
            ["n1", "old"]
        );
        assert_eq!(restorable_on(nodes(), None).unwrap(), ["n1", "n2", "old"]);
        let refused = restorable_on(
            vec![node("n2", Some("qemu 8.2 kvm Xeon"))],
            Some("qemu 7.2 tcg"),
        )
        .unwrap_err();
        assert!(
            refused.contains("qemu 7.2 tcg") && refused.contains("n2: qemu 8.2 kvm Xeon"),
            "{refused}"
        );
    }

    #[test]
    fn port_specifications_become_token_scopes() {
        let one = PortSpecification {
            port: Some(8080),
            ..Default::default()
        };
        let range = PortSpecification {
            range: Some(PortRange {
                start_port: 9000,
                end_port: 9010,
            }),
            ..Default::default()
        };
        let scope = port_scope(&[one.clone(), range]).unwrap();
        assert!(scope.allows(8080) && scope.allows(9005) && !scope.allows(22));
        let all = PortSpecification {
            all_ports: Some(Empty {}),
            ..Default::default()
        };
        assert_eq!(port_scope(&[one, all]).unwrap(), PortScope::All);
        let backwards = PortSpecification {
            range: Some(PortRange {
                start_port: 10,
                end_port: 5,
            }),
            ..Default::default()
        };
        assert!(port_scope(&[backwards]).is_err());
        assert!(port_scope(&[PortSpecification {
            port: Some(70000),
            ..Default::default()
        }])
        .is_err());
        assert!(port_scope(&[PortSpecification::default()]).is_err());
    }
}
