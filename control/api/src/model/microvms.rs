//! Running microVMs and the tokens that open their endpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::common::{IdlePolicy, Logging, MicrovmState, PortSpecification, Timestamp};

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMicrovmRequest {
    pub ingress_network_connectors: Option<Vec<String>>,
    pub egress_network_connectors: Option<Vec<String>>,
    pub image_identifier: String,
    pub image_version: Option<String>,
    pub execution_role_arn: Option<String>,
    pub idle_policy: Option<IdlePolicy>,
    pub logging: Option<Logging>,
    pub run_hook_payload: Option<String>,
    pub maximum_duration_in_seconds: Option<i32>,
    pub client_token: Option<String>,
}

/// `RunMicrovmResponse` and `GetMicrovmResponse` (same members).
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Microvm {
    pub microvm_id: String,
    pub state: MicrovmState,
    pub endpoint: String,
    pub image_arn: String,
    pub image_version: String,
    pub execution_role_arn: Option<String>,
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration_in_seconds: i32,
    pub started_at: Timestamp,
    pub terminated_at: Option<Timestamp>,
    pub state_reason: Option<String>,
    pub ingress_network_connectors: Option<Vec<String>>,
    pub egress_network_connectors: Option<Vec<String>>,
}
pub type RunMicrovmResponse = Microvm;
pub type GetMicrovmResponse = Microvm;

/// The input of every operation that only names one microVM: `GetMicrovm`,
/// `SuspendMicrovm`, `ResumeMicrovm`, `TerminateMicrovm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmRef {
    pub microvm_identifier: String,
}
pub type GetMicrovmRequest = MicrovmRef;
pub type SuspendMicrovmRequest = MicrovmRef;
pub type ResumeMicrovmRequest = MicrovmRef;
pub type TerminateMicrovmRequest = MicrovmRef;

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmsRequest {
    pub max_results: Option<i32>,
    pub next_token: Option<String>,
    pub image_identifier: Option<String>,
    pub image_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmItem {
    pub microvm_id: String,
    pub state: MicrovmState,
    pub image_arn: String,
    pub image_version: String,
    pub started_at: Timestamp,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmsResponse {
    pub next_token: Option<String>,
    pub items: Vec<MicrovmItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMicrovmAuthTokenRequest {
    pub microvm_identifier: String,
    pub expiration_in_minutes: i32,
    pub allowed_ports: Vec<PortSpecification>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMicrovmShellAuthTokenRequest {
    pub microvm_identifier: String,
    pub expiration_in_minutes: i32,
}

/// `CreateMicrovmAuthTokenResponse` and `CreateMicrovmShellAuthTokenResponse`:
/// `authToken` is `TokenParts`, header name → value, 1 to 10 entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthToken {
    pub auth_token: BTreeMap<String, String>,
}
pub type CreateMicrovmAuthTokenResponse = AuthToken;
pub type CreateMicrovmShellAuthTokenResponse = AuthToken;

/// `SuspendMicrovmResponse`, `ResumeMicrovmResponse`, `TerminateMicrovmResponse`:
/// structures without members, sent as `{}`.
pub type SuspendMicrovmResponse = super::common::Empty;
pub type ResumeMicrovmResponse = super::common::Empty;
pub type TerminateMicrovmResponse = super::common::Empty;
