//! What a version was built from (kept as its store row's `spec`), and
//! the idempotent replay of create/update answers.

use serde::{Deserialize, Serialize};

use ember_api::model::{
    Capability, CodeArtifact, CpuConfiguration, CreateMicrovmImageRequest, EnvironmentVariables,
    Hooks, Logging, MicrovmImageWithVersion, Resources, UpdateMicrovmImageRequest,
};
use ember_api::{ApiError, Reply};

/// The request members that define a version, exactly as the client sent
/// them: Get/List answers echo them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSpec {
    pub base_image_arn: String,
    pub base_image_version: Option<String>,
    pub build_role_arn: String,
    pub description: Option<String>,
    pub code_artifact: CodeArtifact,
    pub logging: Option<Logging>,
    pub egress_network_connectors: Option<Vec<String>>,
    pub cpu_configurations: Option<Vec<CpuConfiguration>>,
    pub resources: Option<Vec<Resources>>,
    pub additional_os_capabilities: Option<Vec<Capability>>,
    pub hooks: Option<Hooks>,
    pub environment_variables: Option<EnvironmentVariables>,
}

/// Create and update requests carry the same version members.
macro_rules! spec_from_request {
    ($($request:ty),+) => {$(
        impl From<&$request> for VersionSpec {
            fn from(r: &$request) -> Self {
                Self {
                    base_image_arn: r.base_image_arn.clone(),
                    base_image_version: r.base_image_version.clone(),
                    build_role_arn: r.build_role_arn.clone(),
                    description: r.description.clone(),
                    code_artifact: r.code_artifact.clone(),
                    logging: r.logging.clone(),
                    egress_network_connectors: r.egress_network_connectors.clone(),
                    cpu_configurations: r.cpu_configurations.clone(),
                    resources: r.resources.clone(),
                    additional_os_capabilities: r.additional_os_capabilities.clone(),
                    hooks: r.hooks.clone(),
                    environment_variables: r.environment_variables.clone(),
                }
            }
        }
    )+};
}
spec_from_request!(CreateMicrovmImageRequest, UpdateMicrovmImageRequest);

impl VersionSpec {
    pub fn to_json(&self) -> String {
        // Plain data: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, ApiError> {
        serde_json::from_str(text)
            .map_err(|e| ApiError::internal(format!("stored version spec unreadable: {e}")))
    }
}

/// The JSON kept for replaying an idempotent answer.
pub fn recordable(reply: &Reply) -> Option<String> {
    match reply {
        Reply::CreateMicrovmImage(r) | Reply::UpdateMicrovmImage(r) => {
            serde_json::to_string(r).ok()
        }
        _ => None,
    }
}

/// The stored answer to a retried create or update.
pub fn replay(op: ember_api::Operation, json: &str) -> Result<Reply, ApiError> {
    let parsed: MicrovmImageWithVersion = serde_json::from_str(json)
        .map_err(|e| ApiError::internal(format!("stored reply unreadable: {e}")))?;
    match op {
        ember_api::Operation::CreateMicrovmImage => Ok(Reply::CreateMicrovmImage(parsed)),
        ember_api::Operation::UpdateMicrovmImage => Ok(Reply::UpdateMicrovmImage(parsed)),
        other => Err(ApiError::internal(format!(
            "no replay for {}",
            other.name()
        ))),
    }
}
