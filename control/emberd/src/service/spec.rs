//! What a version was built from (kept as its store row's `spec`), and
//! the idempotent replay of create/update answers.

use ember_api::model::{MicrovmImageBuildConfig, MicrovmImageWithVersion};
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
