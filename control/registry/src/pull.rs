//! Pulling one image: manifest (through an index if need be), config,
//! layers into the cache, every byte checked against its digest.

use std::path::PathBuf;

use reqwest::StatusCode;

use crate::client::{content_type, read_bounded, RegistryOptions, Session, Transport};
use crate::manifest::{
    self, parse_manifest, select_linux_amd64, Compression, Descriptor, Manifest,
};
use crate::{BlobCache, Digest, ImageConfig, ImageReference, RegistryError};

/// Bounds on what one pull may bring in.
#[derive(Clone, Debug)]
pub struct PullLimits {
    pub max_manifest_bytes: u64,
    pub max_config_bytes: u64,
    pub max_layer_bytes: u64,
    pub max_total_bytes: u64,
    pub max_layers: usize,
}

impl Default for PullLimits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 4 << 20,
            max_layer_bytes: 4 << 30,
            max_total_bytes: 10 << 30,
            max_layers: 128,
        }
    }
}

/// Pulls images from OCI distribution registries.
pub struct RegistryClient {
    transport: Transport,
    limits: PullLimits,
}

/// A pulled image: its layer blobs are files in the cache.
#[derive(Clone, Debug)]
pub struct PulledImage {
    pub reference: ImageReference,
    /// The linux/amd64 image manifest's digest (not the index's).
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<PulledLayer>,
}

#[derive(Clone, Debug)]
pub struct PulledLayer {
    /// The compressed blob's digest, as the manifest names it.
    pub digest: Digest,
    pub compression: Compression,
    pub size: u64,
    /// The verified blob in the cache.
    pub path: PathBuf,
    /// False when the cache already had it.
    pub downloaded: bool,
}

impl RegistryClient {
    pub fn new(options: &RegistryOptions, limits: PullLimits) -> Result<Self, RegistryError> {
        Ok(Self {
            transport: Transport::new(options)?,
            limits,
        })
    }

    pub async fn pull(
        &self,
        reference: &ImageReference,
        cache: &BlobCache,
    ) -> Result<PulledImage, RegistryError> {
        let mut session = Session::new(&self.transport, reference)?;
        let (bytes, media_type) = self
            .manifest(
                &mut session,
                &reference.manifest_reference(),
                reference.digest.as_ref(),
            )
            .await?;
        let mut manifest_digest = Digest::of(&bytes);
        let mut manifest = parse_manifest(&bytes, media_type.as_deref(), self.limits.max_layers)?;
        if let Manifest::Index { manifests } = &manifest {
            let chosen =
                select_linux_amd64(manifests).ok_or_else(|| RegistryError::NoPlatform {
                    reference: reference.to_string(),
                })?;
            let digest = chosen.digest.clone();
            let (bytes, media_type) = self
                .manifest(&mut session, &digest.to_string(), Some(&digest))
                .await?;
            manifest = parse_manifest(&bytes, media_type.as_deref(), self.limits.max_layers)?;
            manifest_digest = digest;
        }
        let Manifest::Image { config, layers } = manifest else {
            return Err(RegistryError::BadManifest {
                reason: "an index inside an index".to_string(),
            });
        };
        if config.media_type != "application/vnd.oci.image.config.v1+json"
            && config.media_type != "application/vnd.docker.container.image.v1+json"
        {
            return Err(RegistryError::UnsupportedMediaType {
                what: "the image config".to_string(),
                media_type: config.media_type.chars().take(200).collect(),
            });
        }
        let config_bytes = self.config_blob(&mut session, &config).await?;
        let config = manifest::parse_config(&config_bytes, layers.len())?;
        self.check_sizes(&layers)?;
        let mut pulled = Vec::with_capacity(layers.len());
        for (layer, compression) in layers {
            let (path, downloaded) = match cache.lookup(&layer.digest, layer.size) {
                Some(path) => (path, false),
                None => (self.layer_blob(&mut session, &layer, cache).await?, true),
            };
            pulled.push(PulledLayer {
                digest: layer.digest,
                compression,
                size: layer.size,
                path,
                downloaded,
            });
        }
        tracing::info!(%reference, %manifest_digest, layers = pulled.len(), "pulled image");
        Ok(PulledImage {
            reference: reference.clone(),
            manifest_digest,
            config,
            layers: pulled,
        })
    }

    /// Fetches a manifest; when `pinned`, its bytes must hash to it.
    async fn manifest(
        &self,
        session: &mut Session<'_>,
        reference: &str,
        pinned: Option<&Digest>,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let url = session.url(&format!("manifests/{reference}"))?;
        let response = session.get(&url, manifest::ACCEPT).await?;
        match response.status() {
            status if status.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    reference: format!("{}:{reference}", session_name(session)),
                })
            }
            status => {
                return Err(RegistryError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                })
            }
        }
        let media_type = content_type(&response);
        // By tag, the registry's own digest header is the only check there is.
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = read_bounded(response, self.limits.max_manifest_bytes, "the manifest").await?;
        if let Some(expected) = pinned.or(announced.as_ref()) {
            let actual = Digest::of(&bytes);
            if &actual != expected {
                return Err(RegistryError::DigestMismatch {
                    what: "the manifest".to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok((bytes, media_type))
    }

    async fn config_blob(
        &self,
        session: &mut Session<'_>,
        descriptor: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = "the image config";
        if descriptor.size > self.limits.max_config_bytes {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: self.limits.max_config_bytes,
            });
        }
        let response = self.blob_response(session, &descriptor.digest).await?;
        let bytes = read_bounded(response, descriptor.size, what).await?;
        check_size(what, descriptor.size, bytes.len() as u64)?;
        let actual = Digest::of(&bytes);
        if actual != descriptor.digest {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn check_sizes(&self, layers: &[(Descriptor, Compression)]) -> Result<(), RegistryError> {
        let mut total: u64 = 0;
        for (layer, _) in layers {
            if layer.size > self.limits.max_layer_bytes {
                return Err(RegistryError::TooLarge {
                    what: format!("layer {}", layer.digest),
                    limit: self.limits.max_layer_bytes,
                });
            }
            total = total.saturating_add(layer.size);
        }
        if total > self.limits.max_total_bytes {
            return Err(RegistryError::TooLarge {
                what: "the image's layers together".to_string(),
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    async fn layer_blob(
        &self,
        session: &mut Session<'_>,
        layer: &Descriptor,
        cache: &BlobCache,
    ) -> Result<PathBuf, RegistryError> {
        let what = format!("layer {}", layer.digest);
        let mut response = self.blob_response(session, &layer.digest).await?;
        let url = response.url().to_string();
        let mut writer = cache.writer(&layer.digest)?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RegistryError::Http {
                url: url.clone(),
                source,
            })?
        {
            if writer.written() + chunk.len() as u64 > layer.size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: layer.size,
                    actual: writer.written() + chunk.len() as u64,
                });
            }
            writer.write(&chunk)?;
        }
        check_size(&what, layer.size, writer.written())?;
        let path = writer.publish(&what)?;
        tracing::debug!(digest = %layer.digest, size = layer.size, "downloaded layer");
        Ok(path)
    }

    async fn blob_response(
        &self,
        session: &mut Session<'_>,
        digest: &Digest,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = session.url(&format!("blobs/{digest}"))?;
        let response = session.get(&url, "*/*").await?;
        match response.status() {
            status if status.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                reference: format!("{}@{digest} (blob)", session_name(session)),
            }),
            status => Err(RegistryError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            }),
        }
    }
}

fn session_name(session: &Session<'_>) -> String {
    session.name()
}

fn check_size(what: &str, expected: u64, actual: u64) -> Result<(), RegistryError> {
    if expected != actual {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}
