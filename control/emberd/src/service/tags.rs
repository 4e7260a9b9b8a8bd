//! Tags on images, addressed by ARN. Ember reads one of them:
//! `ember:warm-pool` sets the image's warm pool size.

use ember_api::model::{
    ListTagsRequest, ListTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use ember_api::{ApiError, ErrorKind};
use ember_store::{ImageRecord, StoreError};

use super::images::MAX_TAGS;
use super::{internal, Daemon};
use crate::microvms::{parse_pool_size, WARM_POOL_TAG};

/// Refuses values Ember would not understand in the tags it reads.
pub(super) fn check_ember_tags<'a>(
    mut tags: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), ApiError> {
    match tags.find(|(k, _)| *k == WARM_POOL_TAG) {
        Some((_, v)) => parse_pool_size(v).map(drop).map_err(ApiError::validation),
        None => Ok(()),
    }
}

impl Daemon {
    /// Only this daemon's image ARNs are taggable here.
    async fn tagged_image(&self, arn: &str) -> Result<ImageRecord, ApiError> {
        if !arn.starts_with("arn:") || self.arns.image_name(arn).is_none() {
            return Err(ApiError::not_found("Resource", arn));
        }
        self.image_record(arn)
            .await
            .map_err(|_| ApiError::not_found("Resource", arn))
    }

    pub(super) async fn tag(&self, r: TagResourceRequest) -> Result<(), ApiError> {
        let image = self.tagged_image(&r.resource).await?;
        check_ember_tags(r.tags.iter())?;
        let tags: Vec<(String, String)> = r.tags.into_iter().collect();
        self.store
            .set_tags(&image.name, &tags, MAX_TAGS)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => ApiError::new(ErrorKind::Validation, m),
                other => internal(other),
            })?;
        if tags.iter().any(|(k, _)| k == WARM_POOL_TAG) {
            self.fill_image_pool(&image.name).await;
        }
        Ok(())
    }

    pub(super) async fn untag(&self, r: UntagResourceRequest) -> Result<(), ApiError> {
        let image = self.tagged_image(&r.resource).await?;
        self.store
            .remove_tags(&image.name, &r.tag_keys)
            .await
            .map_err(internal)?;
        if r.tag_keys.iter().any(|k| k == WARM_POOL_TAG) {
            self.fill_image_pool(&image.name).await;
        }
        Ok(())
    }

    pub(super) async fn list_tags(&self, r: ListTagsRequest) -> Result<ListTagsResponse, ApiError> {
        let image = self.tagged_image(&r.resource).await?;
        let tags = self.store.tags(&image.name).await.map_err(internal)?;
        Ok(ListTagsResponse {
            tags: Some(tags.into_iter().collect()),
        })
    }
}
