//! MicroVM images, their versions and builds, and the managed base images.
//! Request structs merge the URI labels, query string and body of one
//! operation; shapes the model repeats under several names share one struct.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::common::{
    Architecture, BuildState, Capability, Chipset, CodeArtifact, CpuConfiguration,
    EnvironmentVariables, Hooks, Logging, ManagedMicrovmImageVersionStatus, MicrovmImageState,
    MicrovmImageVersionState, MicrovmImageVersionStatus, Resources, SnapshotBuild, Tags, Timestamp,
};

/// What defines an image version: the members the create and update
/// requests carry and every description of a version echoes back.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageBuildConfig {
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

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMicrovmImageRequest {
    #[serde(flatten)]
    pub config: MicrovmImageBuildConfig,
    pub name: String,
    pub tags: Option<Tags>,
    pub client_token: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMicrovmImageRequest {
    pub image_identifier: String,
    #[serde(flatten)]
    pub config: MicrovmImageBuildConfig,
    pub client_token: Option<String>,
}

/// `CreateMicrovmImageResponse` and `UpdateMicrovmImageResponse` (the
/// latter has no `tags`: leave it `None` there).
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageWithVersion {
    pub image_arn: String,
    pub name: String,
    pub state: MicrovmImageState,
    pub latest_active_image_version: Option<String>,
    pub latest_failed_image_version: Option<String>,
    pub created_at: Timestamp,
    #[serde(flatten)]
    pub config: MicrovmImageBuildConfig,
    pub tags: Option<Tags>,
    pub updated_at: Option<Timestamp>,
    pub image_version: String,
}
pub type CreateMicrovmImageResponse = MicrovmImageWithVersion;
pub type UpdateMicrovmImageResponse = MicrovmImageWithVersion;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMicrovmImageInput {
    pub image_identifier: String,
}

/// `GetMicrovmImageOutput`; `MicrovmImageSummary` is the same without tags
/// and `updatedAt`.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImage {
    pub image_arn: String,
    pub name: String,
    pub state: MicrovmImageState,
    pub latest_active_image_version: Option<String>,
    pub latest_failed_image_version: Option<String>,
    pub created_at: Timestamp,
    pub tags: Option<Tags>,
    pub updated_at: Option<Timestamp>,
}
pub type GetMicrovmImageOutput = MicrovmImage;

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageSummary {
    pub image_arn: String,
    pub name: String,
    pub state: MicrovmImageState,
    pub latest_active_image_version: Option<String>,
    pub latest_failed_image_version: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMicrovmImageInput {
    pub image_identifier: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMicrovmImageOutput {
    pub image_identifier: String,
    pub state: MicrovmImageState,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImagesRequest {
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
    pub name_filter: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImagesResponse {
    pub next_token: Option<String>,
    pub items: Vec<MicrovmImageSummary>,
}

/// `GetMicrovmImageVersionInput` and `DeleteMicrovmImageVersionInput`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVersionRef {
    pub image_identifier: String,
    pub image_version: String,
}
pub type GetMicrovmImageVersionInput = ImageVersionRef;
pub type DeleteMicrovmImageVersionInput = ImageVersionRef;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMicrovmImageVersionOutput {
    pub image_identifier: String,
    pub image_version: String,
    pub state: MicrovmImageVersionState,
}

/// `GetMicrovmImageVersionOutput`, `UpdateMicrovmImageVersionResponse` and
/// `MicrovmImageVersionSummary`: the model gives all three the same members.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageVersion {
    #[serde(flatten)]
    pub config: MicrovmImageBuildConfig,
    pub image_arn: String,
    pub image_version: String,
    pub state: MicrovmImageVersionState,
    pub status: MicrovmImageVersionStatus,
    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
    pub state_reason: Option<String>,
    pub tags: Option<Tags>,
}
pub type GetMicrovmImageVersionOutput = MicrovmImageVersion;
pub type UpdateMicrovmImageVersionResponse = MicrovmImageVersion;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMicrovmImageVersionRequest {
    pub image_identifier: String,
    pub image_version: String,
    pub status: MicrovmImageVersionStatus,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageVersionsInput {
    pub image_identifier: String,
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageVersionsOutput {
    pub next_token: Option<String>,
    pub items: Vec<MicrovmImageVersion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMicrovmImageBuildInput {
    pub image_identifier: String,
    pub image_version: String,
    pub build_id: String,
}

/// `GetMicrovmImageBuildOutput`; in `MicrovmImageBuildSummary` (list items)
/// `snapshot_build` stays `None`.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageBuild {
    pub image_arn: String,
    pub image_version: String,
    pub build_id: String,
    pub build_state: BuildState,
    pub architecture: Architecture,
    pub chipset: Chipset,
    pub chipset_generation: String,
    pub state_reason: Option<String>,
    pub created_at: Timestamp,
    pub snapshot_build: Option<SnapshotBuild>,
}
pub type GetMicrovmImageBuildOutput = MicrovmImageBuild;

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageBuildsInput {
    pub image_identifier: String,
    pub image_version: String,
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
    pub architecture: Option<Architecture>,
    pub chipset: Option<Chipset>,
    pub chipset_generation: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageBuildsOutput {
    pub next_token: Option<String>,
    pub items: Vec<MicrovmImageBuild>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImagesInput {
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedMicrovmImageSummary {
    pub image_arn: String,
    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImagesOutput {
    pub next_token: Option<String>,
    pub items: Vec<ManagedMicrovmImageSummary>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImageVersionsInput {
    pub image_identifier: String,
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedMicrovmImageVersion {
    pub image_arn: String,
    pub image_version: String,
    pub status: Option<ManagedMicrovmImageVersionStatus>,
    pub supported_cpu_configurations: Option<Vec<CpuConfiguration>>,
    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImageVersionsOutput {
    pub next_token: Option<String>,
    pub items: Vec<ManagedMicrovmImageVersion>,
}
