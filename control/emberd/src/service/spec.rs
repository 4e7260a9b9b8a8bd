//! What a version was built from (kept as its store row's `spec`), and
//! the idempotent replay of create/update answers.

use ember_api::model::MicrovmImageBuildConfig;
use ember_api::{ApiError, Reply};

/// A version's build configuration as stored in its row.
pub fn to_json(config: &MicrovmImageBuildConfig) -> String {
    // Plain data: serialising cannot fail.
    serde_json::to_string(config).unwrap_or_default()
}

pub fn from_json(text: &str) -> Result<MicrovmImageBuildConfig, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::internal(format!("stored version configuration unreadable: {e}")))
}

/// The JSON kept for replaying an idempotent answer.
pub fn recordable(reply: &Reply) -> Option<String> {
    match reply {
        Reply::CreateMicrovmImage(r) | Reply::UpdateMicrovmImage(r) => {
            serde_json::to_string(r).ok()
        }
        Reply::RunMicrovm(r) => serde_json::to_string(r).ok(),
        _ => None,
    }
}

/// The stored answer to a retried create, update or run. A replayed run
/// answers with the microVM as it was first reported (PENDING), like the
/// first answer; GetMicrovm tells its state now.
pub fn replay(op: ember_api::Operation, json: &str) -> Result<Reply, ApiError> {
    let unreadable =
        |e: serde_json::Error| ApiError::internal(format!("stored reply unreadable: {e}"));
    match op {
        ember_api::Operation::CreateMicrovmImage => Ok(Reply::CreateMicrovmImage(
            serde_json::from_str(json).map_err(unreadable)?,
        )),
        ember_api::Operation::UpdateMicrovmImage => Ok(Reply::UpdateMicrovmImage(
            serde_json::from_str(json).map_err(unreadable)?,
        )),
        ember_api::Operation::RunMicrovm => Ok(Reply::RunMicrovm(
            serde_json::from_str(json).map_err(unreadable)?,
        )),
        other => Err(ApiError::internal(format!(
            "no replay for {}",
            other.name()
        ))),
    }
}
