//! OCI image layouts written by the bench, for `skopeo copy oci:…` to a
//! local registry: gzip tar layers, an image config and a manifest per
//! image, and `index.json` naming each by tag.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use sha2::{Digest as _, Sha256};

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One layer: its uncompressed tar (hashed into `diff_ids`) and the gzip
/// blob the manifest names.
pub struct Layer {
    diff_id: String,
    blob: Vec<u8>,
}

impl Layer {
    pub fn compressed_bytes(&self) -> u64 {
        self.blob.len() as u64
    }
}

/// Builds one layer's tar. Every entry is root-owned with mtime 0, so the
/// same content always makes the same blob: two images share a layer by
/// digest only if it is byte-identical.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    }

    pub fn dir(mut self, path: &str) -> anyhow::Result<Self> {
        let mut header = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar
            .append_data(&mut header, path, std::io::empty())
            .with_context(|| format!("layer entry {path}"))?;
        Ok(self)
    }

    pub fn file(mut self, path: &str, content: &[u8], mode: u32) -> anyhow::Result<Self> {
        let mut header = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        self.tar
            .append_data(&mut header, path, content)
            .with_context(|| format!("layer entry {path}"))?;
        Ok(self)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> anyhow::Result<Self> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, path, target)
            .with_context(|| format!("layer entry {path}"))?;
        Ok(self)
    }

    pub fn finish(self) -> anyhow::Result<Layer> {
        let tar = self.tar.into_inner().context("finishing a layer tar")?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar)?;
        Ok(Layer {
            diff_id: digest_of(&tar),
            blob: gz.finish()?,
        })
    }
}

/// An OCI image layout in a folder of its own.
pub struct Layout {
    dir: PathBuf,
    refs: Vec<serde_json::Value>,
}

impl Layout {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob(&self, media_type: &str, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
        let digest = digest_of(bytes);
        let hex = digest.trim_start_matches("sha256:");
        let path = self.dir.join("blobs/sha256").join(hex);
        // A layer shared by two images is written once.
        if !path.exists() {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
    }

    /// Writes an amd64 image with the config `run` (`Env`, `Cmd`, …) and
    /// `layers`, bottom first, and names it `tag` in `index.json`.
    pub fn image(
        &mut self,
        tag: &str,
        run: serde_json::Value,
        layers: &[&Layer],
    ) -> anyhow::Result<()> {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": run,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
        });
        let config = self.blob(CONFIG_MEDIA_TYPE, config.to_string().as_bytes())?;
        let layers = layers
            .iter()
            .map(|l| self.blob(LAYER_MEDIA_TYPE, &l.blob))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config,
            "layers": layers,
        });
        let mut descriptor = self.blob(MANIFEST_MEDIA_TYPE, manifest.to_string().as_bytes())?;
        descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(descriptor);
        let index = json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(self.dir.join("index.json"), index.to_string())?;
        Ok(())
    }
}

/// `len` bytes that gzip cannot shrink, the same on every run (xorshift64*),
/// so a data layer costs its full size to fetch and unpack.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_the_same_blob_every_time_and_its_diff_id_names_the_tar() {
        let make = || {
            LayerBuilder::new()
                .dir("bin")
                .and_then(|l| l.file("bin/busybox", b"program", 0o755))
                .and_then(|l| l.symlink("bin/sh", "busybox"))
                .and_then(|l| l.finish())
                .unwrap()
        };
        let (a, b) = (make(), make());
        assert_eq!(a.blob, b.blob);
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a.blob[..]), &mut tar)
            .unwrap();
        assert_eq!(a.diff_id, digest_of(&tar));
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (e.path().unwrap().display().to_string(), link)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("bin".to_string(), None),
                ("bin/busybox".to_string(), None),
                ("bin/sh".to_string(), Some("busybox".to_string())),
            ]
        );
    }

    #[test]
    fn incompressible_data_does_not_shrink_under_gzip() {
        let data = incompressible(1 << 20, 7);
        let layer = LayerBuilder::new()
            .file("data", &data, 0o644)
            .and_then(|l| l.finish())
            .unwrap();
        assert!(layer.compressed_bytes() > data.len() as u64);
    }
}
