//! The managed base images: what `FROM` may name.

use ember_api::model::{
    Architecture, CpuConfiguration, ListManagedMicrovmImageVersionsInput,
    ListManagedMicrovmImageVersionsOutput, ListManagedMicrovmImagesInput,
    ListManagedMicrovmImagesOutput, ManagedMicrovmImageSummary, ManagedMicrovmImageVersion,
    ManagedMicrovmImageVersionStatus, Timestamp,
};
use ember_api::{page, ApiError};
use ember_builder::MANAGED_BASES;

use super::Daemon;

/// When the catalogue's recipes were published (version 1 of each).
const PUBLISHED: f64 = 1_793_232_000.0; // 2026-10-29T00:00:00Z

impl Daemon {
    pub(super) async fn list_managed(
        &self,
        r: ListManagedMicrovmImagesInput,
    ) -> Result<ListManagedMicrovmImagesOutput, ApiError> {
        let all: Vec<ManagedMicrovmImageSummary> = MANAGED_BASES
            .iter()
            .map(|b| ManagedMicrovmImageSummary {
                image_arn: self.arns.managed_image(b.name),
                created_at: published(),
                updated_at: Some(published()),
            })
            .collect();
        let (items, next_token) = page(
            all,
            |i| i.image_arn.clone(),
            "ListManagedMicrovmImages",
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListManagedMicrovmImagesOutput { next_token, items })
    }

    pub(super) async fn list_managed_versions(
        &self,
        r: ListManagedMicrovmImageVersionsInput,
    ) -> Result<ListManagedMicrovmImageVersionsOutput, ApiError> {
        let base = self
            .arns
            .managed_base(&r.image_identifier)
            .ok_or_else(|| ApiError::not_found("ManagedMicrovmImage", &r.image_identifier))?;
        let all = vec![ManagedMicrovmImageVersion {
            image_arn: self.arns.managed_image(base.name),
            image_version: base.version.to_string(),
            status: Some(ManagedMicrovmImageVersionStatus::Available),
            supported_cpu_configurations: Some(vec![CpuConfiguration {
                architecture: Architecture::X86_64,
            }]),
            created_at: published(),
            updated_at: Some(published()),
        }];
        let scope = format!("ListManagedMicrovmImageVersions:{}", base.name);
        let (items, next_token) = page(
            all,
            |v| v.image_version.clone(),
            &scope,
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListManagedMicrovmImageVersionsOutput { next_token, items })
    }
}

fn published() -> Timestamp {
    Timestamp::from_unix_seconds(PUBLISHED).unwrap_or_else(Timestamp::now)
}
