//! Tags on any taggable resource, addressed by ARN (Lambda's 2017 paths).

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::common::Tags;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTagsRequest {
    #[serde(rename = "Resource")]
    pub resource: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTagsResponse {
    #[serde(rename = "Tags")]
    pub tags: Option<Tags>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagResourceRequest {
    #[serde(rename = "Resource")]
    pub resource: String,
    #[serde(rename = "Tags")]
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntagResourceRequest {
    #[serde(rename = "Resource")]
    pub resource: String,
    #[serde(rename = "TagKeys")]
    pub tag_keys: Vec<String>,
}
