//! Manifests (OCI and Docker schema 2, single-image and index) and the
//! image config, reduced to what a build needs.

use serde::Deserialize;

use crate::{Digest, RegistryError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What the manifest request accepts, in order of preference.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// How a layer blob is compressed; unpacking it is the caller's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn of_layer(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A manifest document of either family, as far as we read it.
#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

pub(crate) enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<(Descriptor, Compression)>,
    },
    /// Several images; the one for linux/amd64 is pulled.
    Index { manifests: Vec<Descriptor> },
}

/// Parses a manifest. `content_type` is the response's; the document's own
/// `mediaType` wins when present (registries are sloppy with headers).
pub(crate) fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    max_layers: usize,
) -> Result<Manifest, RegistryError> {
    let bad = |reason: String| RegistryError::BadManifest { reason };
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    if raw.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} (only 2 is supported)",
            raw.schema_version
        )));
    }
    let header = content_type.map(|t| t.split(';').next().unwrap_or(t).trim());
    let media_type = raw.media_type.as_deref().or(header);
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // OCI allows an unlabelled document: its shape says what it is.
        _ => raw.manifests.is_some(),
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| bad("an index without manifests".to_string()))?;
        return Ok(Manifest::Index { manifests });
    }
    let config = raw
        .config
        .ok_or_else(|| bad("an image manifest without a config".to_string()))?;
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > max_layers {
        return Err(RegistryError::TooManyLayers {
            count: layers.len(),
            limit: max_layers,
        });
    }
    let layers = layers
        .into_iter()
        .map(|layer| match Compression::of_layer(&layer.media_type) {
            Some(compression) => Ok((layer, compression)),
            None => Err(RegistryError::UnsupportedMediaType {
                what: format!("layer {}", layer.digest),
                media_type: layer.media_type.chars().take(200).collect(),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(Manifest::Image { config, layers })
}

/// The linux/amd64 entry of an index, if it has one.
pub(crate) fn select_linux_amd64(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            && matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
    })
}

/// What the image says about how to run it (the config's `config` object),
/// plus its layers' uncompressed digests in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` entries, in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `port/proto` keys, e.g. `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// The uncompressed (tar) digest of each layer, bottom first.
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct RawConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    exposed_ports: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Vec<Digest>,
}

/// Parses a config blob and checks it belongs to `layer_count` layers of a
/// linux/amd64 image.
pub(crate) fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ImageConfig, RegistryError> {
    let bad = |reason: String| RegistryError::BadConfig { reason };
    let raw: RawConfigFile =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not an image config: {e}")))?;
    for (field, value, want) in [
        ("os", &raw.os, "linux"),
        ("architecture", &raw.architecture, "amd64"),
    ] {
        if let Some(value) = value {
            if value != want {
                return Err(bad(format!("{field} is {value:?}, not {want:?}")));
            }
        }
    }
    if raw.rootfs.diff_ids.len() != layer_count {
        return Err(bad(format!(
            "{} diff_ids for {layer_count} layers",
            raw.rootfs.diff_ids.len()
        )));
    }
    let run = raw.config.unwrap_or_default();
    let mut exposed_ports: Vec<String> = run
        .exposed_ports
        .unwrap_or_default()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    exposed_ports.sort();
    Ok(ImageConfig {
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        exposed_ports,
        diff_ids: raw.rootfs.diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": Digest::of(media_type.as_bytes()).to_string(), "size": 1})
    }

    fn manifest(layers: Vec<serde_json::Value>) -> Vec<u8> {
        let config = layer("application/vnd.oci.image.config.v1+json");
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn layer_media_types() {
        let ok = manifest(vec![
            layer("application/vnd.oci.image.layer.v1.tar+zstd"),
            layer("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ]);
        let Ok(Manifest::Image { layers, .. }) = parse_manifest(&ok, None, 10) else {
            panic!("not parsed");
        };
        let kinds: Vec<_> = layers.iter().map(|(_, c)| *c).collect();
        assert_eq!(kinds, [Compression::Zstd, Compression::Gzip]);
        let foreign = manifest(vec![layer(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        )]);
        let err = parse_manifest(&foreign, None, 10).err().unwrap();
        assert!(err.to_string().contains("unsupported media type"), "{err}");
        let err = parse_manifest(&ok, None, 1).err().unwrap();
        assert!(matches!(
            err,
            RegistryError::TooManyLayers { count: 2, limit: 1 }
        ));
    }

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let entry = |os: &str, arch: &str| {
            let mut d = layer(&format!("{os}/{arch}"));
            d["mediaType"] = OCI_MANIFEST.into();
            d["platform"] = serde_json::json!({"os": os, "architecture": arch});
            d
        };
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry("linux", "arm64"), entry("windows", "amd64"), entry("linux", "amd64")]});
        let Ok(Manifest::Index { manifests }) =
            parse_manifest(index.to_string().as_bytes(), Some(OCI_INDEX), 10)
        else {
            panic!("not an index");
        };
        let chosen = select_linux_amd64(&manifests).map(|d| d.digest.clone());
        assert_eq!(chosen, Some(Digest::of(b"linux/amd64")));
        assert!(select_linux_amd64(&manifests[..2]).is_none());
    }

    #[test]
    fn config_must_match_the_layers() {
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"a").to_string()]}});
        let bytes = config.to_string().into_bytes();
        assert!(parse_config(&bytes, 1).is_ok());
        assert!(parse_config(&bytes, 2).is_err());
        let arm = config.to_string().replace("amd64", "arm64").into_bytes();
        assert!(parse_config(&arm, 1)
            .err()
            .unwrap()
            .to_string()
            .contains("arm64"));
    }
}
