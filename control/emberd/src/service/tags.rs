//! Tags on images, addressed by ARN.

use ember_api::model::{
    ListTagsRequest, ListTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use ember_api::{ApiError, ErrorKind};
use ember_store::{ImageRecord, StoreError};

use super::images::MAX_TAGS;
use super::{internal, Daemon};

impl Daemon {
    /// Only this daemon's image ARNs are taggable here.
    fn tagged_image(&self, arn: &str) -> Result<ImageRecord, ApiError> {
        if !arn.starts_with("arn:") || self.arns.image_name(arn).is_none() {
            return Err(ApiError::not_found("Resource", arn));
        }
        self.image_record(arn)
            .map_err(|_| ApiError::not_found("Resource", arn))
    }

    pub(super) fn tag(&self, r: TagResourceRequest) -> Result<(), ApiError> {
        let image = self.tagged_image(&r.resource)?;
        let tags: Vec<(String, String)> = r.tags.into_iter().collect();
        self.store
            .set_tags(&image.name, &tags, MAX_TAGS)
            .map_err(|e| match e {
                StoreError::Conflict(m) => ApiError::new(ErrorKind::Validation, m),
                other => internal(other),
            })
    }

    pub(super) fn untag(&self, r: UntagResourceRequest) -> Result<(), ApiError> {
        let image = self.tagged_image(&r.resource)?;
        self.store
            .remove_tags(&image.name, &r.tag_keys)
            .map_err(internal)
    }

    pub(super) fn list_tags(&self, r: ListTagsRequest) -> Result<ListTagsResponse, ApiError> {
        let image = self.tagged_image(&r.resource)?;
        let tags = self.store.tags(&image.name).map_err(internal)?;
        Ok(ListTagsResponse {
            tags: Some(tags.into_iter().collect()),
        })
    }
}
