//! The API's behaviour: one `Daemon` holding the store and the build
//! runner, answering every typed [`Action`].

mod catalog;
mod idempotency;
mod images;
mod microvms;
pub mod names;
mod spec;
mod tags;

use crate::connectors::DefaultEgress;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use ember_api::{Action, ApiError, Credentials, ErrorKind, Reply};
use ember_store::{StateStore, StoreError};

use crate::builds::Builds;
use crate::cluster::Action as Forward;
use crate::layout::DataDir;
use crate::microvms::Microvms;
use crate::now;
use crate::{build_logs, microvm_fork, microvm_logs, nodes_api};
use names::Arns;

pub struct Daemon {
    store: Arc<dyn StateStore>,
    builds: Arc<Builds>,
    microvms: Arc<Microvms>,
    layout: DataDir,
    arns: Arns,
    /// Egress of runs and builds that name no egress connector.
    default_egress: DefaultEgress,
}

impl Daemon {
    pub fn new(
        store: Arc<dyn StateStore>,
        builds: Arc<Builds>,
        microvms: Arc<Microvms>,
        layout: DataDir,
        region: String,
        account: String,
        default_egress: DefaultEgress,
    ) -> Self {
        Self {
            store,
            builds,
            microvms,
            layout,
            arns: Arns { region, account },
            default_egress,
        }
    }

    pub fn store(&self) -> &dyn StateStore {
        &*self.store
    }

    pub fn layout(&self) -> &DataDir {
        &self.layout
    }

    pub fn builds(&self) -> &Arc<Builds> {
        &self.builds
    }

    pub fn node_id(&self) -> &str {
        &self.microvms.config().node_id
    }

    pub fn microvms(&self) -> &Arc<Microvms> {
        &self.microvms
    }

    /// The image name an identifier (name or ARN) stands for; an ARN of
    /// another account or region maps to a name that cannot exist.
    pub fn image_name(&self, identifier: &str) -> String {
        self.arns
            .image_name(identifier)
            .unwrap_or(identifier)
            .to_string()
    }
}

/// Fills every image's warm pool, then each new version's as its build
/// succeeds. Call once, after the microVMs were recovered.
pub async fn start_pools(daemon: &Arc<Daemon>) {
    let mut successes = daemon.builds.subscribe_successes();
    let mut after: Option<String> = None;
    loop {
        let Ok((images, next)) = daemon.store.list_images(after.as_deref(), None, 500).await else {
            break;
        };
        for image in &images {
            daemon.fill_image_pool(&image.name).await;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let daemon = Arc::clone(daemon);
    tokio::spawn(async move {
        while let Some(image) = successes.recv().await {
            daemon.fill_image_pool(&image).await;
        }
    });
}

/// The API and Ember's own endpoints, all behind SigV4.
pub fn router(daemon: Arc<Daemon>, credentials: Arc<Credentials>) -> Router {
    let extra = Router::new()
        .route(build_logs::ROUTE, get(build_logs::get_build_log))
        .route(microvm_logs::ROUTE, get(microvm_logs::get_microvm_log))
        .route(microvm_fork::ROUTE, post(microvm_fork::fork_microvm))
        .route(nodes_api::LIST_ROUTE, get(nodes_api::list_nodes))
        .route(nodes_api::DRAIN_ROUTE, post(nodes_api::drain_node))
        .route(nodes_api::UNDRAIN_ROUTE, post(nodes_api::undrain_node))
        .with_state(Arc::clone(&daemon))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&credentials),
            ember_api::require_sigv4,
        ));
    let api = ember_api::router(daemon, credentials);
    extra.merge(api)
}

#[async_trait::async_trait]
impl ember_api::Service for Daemon {
    async fn handle(&self, action: Action) -> Result<Reply, ApiError> {
        let Some((token, hash)) = action.idempotency() else {
            return self.dispatch(action).await;
        };
        let (op, token, hash) = (action.operation().name(), token.to_string(), hash);
        // A retried request with a known token gets the first answer again;
        // the same token with other parameters is a conflict; one that
        // arrives while the first is still acting waits for its answer.
        let claimed = match idempotency::Claimed::take(&self.store, op, &token, &hash).await? {
            idempotency::Outcome::Replay(json) => return spec::replay(action.operation(), &json),
            idempotency::Outcome::Act(claimed) => claimed,
        };
        // An error here drops the claim, which frees the token for a retry.
        let reply = self.dispatch(action).await?;
        if let Some(json) = spec::recordable(&reply) {
            claimed.record(&json, now()).await.map_err(internal)?;
        }
        Ok(reply)
    }
}

impl Daemon {
    async fn dispatch(&self, action: Action) -> Result<Reply, ApiError> {
        Ok(match action {
            Action::CreateMicrovmImage(r) => Reply::CreateMicrovmImage(self.create_image(r).await?),
            Action::UpdateMicrovmImage(r) => Reply::UpdateMicrovmImage(self.update_image(r).await?),
            Action::GetMicrovmImage(r) => {
                Reply::GetMicrovmImage(self.get_image(&r.image_identifier).await?)
            }
            Action::ListMicrovmImages(r) => Reply::ListMicrovmImages(self.list_images(r).await?),
            Action::DeleteMicrovmImage(r) => {
                Reply::DeleteMicrovmImage(self.delete_image(&r.image_identifier).await?)
            }
            Action::GetMicrovmImageVersion(r) => Reply::GetMicrovmImageVersion(
                self.get_version(&r.image_identifier, &r.image_version)
                    .await?,
            ),
            Action::ListMicrovmImageVersions(r) => {
                Reply::ListMicrovmImageVersions(self.list_versions(r).await?)
            }
            Action::UpdateMicrovmImageVersion(r) => {
                Reply::UpdateMicrovmImageVersion(self.update_version_status(r).await?)
            }
            Action::DeleteMicrovmImageVersion(r) => Reply::DeleteMicrovmImageVersion(
                self.delete_version(&r.image_identifier, &r.image_version)
                    .await?,
            ),
            Action::GetMicrovmImageBuild(r) => {
                Reply::GetMicrovmImageBuild(self.get_build(r).await?)
            }
            Action::ListMicrovmImageBuilds(r) => {
                Reply::ListMicrovmImageBuilds(self.list_builds(r).await?)
            }
            Action::ListManagedMicrovmImages(r) => {
                Reply::ListManagedMicrovmImages(self.list_managed(r).await?)
            }
            Action::ListManagedMicrovmImageVersions(r) => {
                Reply::ListManagedMicrovmImageVersions(self.list_managed_versions(r).await?)
            }
            Action::TagResource(r) => {
                self.tag(r).await?;
                Reply::TagResource
            }
            Action::UntagResource(r) => {
                self.untag(r).await?;
                Reply::UntagResource
            }
            Action::ListTags(r) => Reply::ListTags(self.list_tags(r).await?),
            Action::RunMicrovm(r) => Reply::RunMicrovm(self.run_microvm(r).await?),
            Action::GetMicrovm(r) => {
                Reply::GetMicrovm(self.get_microvm(&r.microvm_identifier).await?)
            }
            Action::ListMicrovms(r) => Reply::ListMicrovms(self.list_microvms(r).await?),
            Action::SuspendMicrovm(r) => {
                self.microvms
                    .act(&r.microvm_identifier, Forward::Suspend)
                    .await?;
                Reply::SuspendMicrovm(Default::default())
            }
            Action::ResumeMicrovm(r) => {
                self.microvms
                    .act(&r.microvm_identifier, Forward::Resume)
                    .await?;
                Reply::ResumeMicrovm(Default::default())
            }
            Action::TerminateMicrovm(r) => {
                self.microvms
                    .act(&r.microvm_identifier, Forward::Terminate)
                    .await?;
                Reply::TerminateMicrovm(Default::default())
            }
            Action::CreateMicrovmAuthToken(r) => {
                Reply::CreateMicrovmAuthToken(self.create_auth_token(r).await?)
            }
            Action::CreateMicrovmShellAuthToken(r) => {
                Reply::CreateMicrovmShellAuthToken(self.create_shell_token(r).await?)
            }
        })
    }
}

/// Store failures the caller cannot fix; not-found and conflicts are
/// mapped by the handlers, which know what was asked for.
pub(crate) fn internal(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(ErrorKind::Conflict, m),
        StoreError::Capacity(m) => ApiError::new(ErrorKind::InsufficientCapacity, m),
        StoreError::Quota(m) => ApiError::new(ErrorKind::ServiceQuotaExceeded, m),
        other => {
            tracing::error!("state store: {other}");
            ApiError::internal(format!("state store error: {other}"))
        }
    }
}
