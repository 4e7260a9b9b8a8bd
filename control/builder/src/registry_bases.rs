//! Stages `FROM` a registry image: pull it on the host (every blob
//! verified against its digest, layers kept in a cache shared by all
//! builds), then apply its layers inside a build VM booted on an empty
//! disk, freezing one cached disk layer per image layer.
//!
//! Layers are hostile input like artifacts, so the host never unpacks
//! them: the guest agent's `unpack-oci-layer` does, in a mount namespace
//! that holds only the VM's own disk. Images sharing their lower layers
//! share those disk layers too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ember_dockerfile::BaseRef;
use ember_registry::{BlobCache, Compression, ImageReference, PulledImage, RegistryClient};
use ember_vmm::agent::ExecRequest;

use crate::cache::CacheKey;
use crate::log::BuildLog;
use crate::{short, BuildError, BuildSpec, Builder};

/// Where the guest receives one layer blob before unpacking it (the
/// unpacker unlinks it at once, so it never ends up in the image).
const GUEST_LAYER: &str = "/.ember-oci-layer";
/// The agent binary itself (PID 1, in the initramfs): the image's disk
/// need not hold any program for its layers to be applied.
const GUEST_UNPACKER: &str = "/proc/1/exe";

/// Part of the disk layers' keys: change it when the way layers are
/// applied changes, so no disk made the old way is reused.
const UNPACK_FORMAT: &str = "oci layers v1: agent unpack-oci-layer, empty ext4 4g";

/// What builds need to start from registry images.
pub struct RegistryBases {
    pub client: RegistryClient,
    pub blobs: BlobCache,
    /// The empty filesystem the first layer is applied to.
    pub empty_root: PathBuf,
}

/// A registry image a stage starts from, pulled and ready to boot.
pub(crate) struct ReadyBase {
    /// The key of its filesystem: after its last layer.
    pub key: CacheKey,
    /// Its top disk layer.
    pub disk: PathBuf,
    pub config: ember_dockerfile::ImageConfig,
}

impl Builder {
    /// Pulls and unpacks every registry image in `bases`, keyed by the
    /// reference as the Dockerfile wrote it.
    pub(crate) async fn registry_bases(
        &self,
        spec: &BuildSpec,
        bases: &[&BaseRef],
        log: &BuildLog,
    ) -> Result<BTreeMap<String, ReadyBase>, BuildError> {
        let mut ready = BTreeMap::new();
        for base in bases {
            let Some(written) = &base.image else { continue };
            let stage = format!("pull base image (Dockerfile line {})", base.line);
            let Some(registry) = &self.registry else {
                return Err(BuildError::new(
                    stage,
                    format!("FROM {written}: this emberd cannot pull registry images"),
                ));
            };
            let reference: ImageReference =
                written
                    .parse()
                    .map_err(|e: ember_registry::RegistryError| {
                        BuildError::new(&stage, format!("FROM {written}: {e}"))
                    })?;
            log.line(&format!("pulling {reference}"));
            let started = Instant::now();
            let image = registry
                .client
                .pull(&reference, &registry.blobs)
                .await
                .map_err(|e| BuildError::new(&stage, format!("FROM {written}: {e}")))?;
            log_pull(&image, started, log);
            let (key, disk) = self
                .unpacked(spec, registry, &image, base.line, log)
                .await?;
            let config = image_config(&image.config);
            ready.insert(written.clone(), ReadyBase { key, disk, config });
        }
        Ok(ready)
    }

    /// The image's top disk layer: the longest run of its lower layers
    /// found in the cache is reused, the rest applied in one build VM.
    async fn unpacked(
        &self,
        spec: &BuildSpec,
        registry: &RegistryBases,
        image: &PulledImage,
        line: usize,
        log: &BuildLog,
    ) -> Result<(CacheKey, PathBuf), BuildError> {
        let stage = format!("unpack base image (Dockerfile line {line})");
        let fail = |m: String| BuildError::new(&stage, m);
        let mut key = CacheKey::new("oci", UNPACK_FORMAT, &self.config.guest_version);
        let mut keys = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            key.add(&layer.digest.to_string());
            keys.push(key.hex());
        }
        let (done, start) = (0..keys.len())
            .rev()
            .find_map(|i| self.cache.layer(&keys[i]).map(|p| (i + 1, p)))
            .unwrap_or((0, registry.empty_root.clone()));
        if done == keys.len() {
            log.line(&format!(
                "{}: all {} layers already unpacked",
                image.reference,
                keys.len()
            ));
            return Ok((key, start));
        }
        log.line(&format!(
            "applying layers {}..{} of {} in a build VM (no network)",
            done + 1,
            keys.len(),
            image.reference
        ));
        let vm = self
            .boot_build_vm(&format!("build-{}-base", short(&spec.id)), &start, false)
            .await?;
        let mut frozen = Vec::new();
        let mut top = start;
        let mut result = Ok(());
        for (i, layer) in image.layers.iter().enumerate().skip(done) {
            let t = Instant::now();
            let step = async {
                apply(vm.as_ref(), &layer.path, layer.compression).await?;
                let dest = self.cache.new_layer_path(&keys[i], &spec.id);
                vm.checkpoint_disk(&dest)
                    .await
                    .map_err(|e| format!("saving the disk layer: {e}"))?;
                Ok::<PathBuf, String>(dest)
            };
            match step.await {
                Ok(dest) => {
                    frozen.push((keys[i].clone(), dest.clone()));
                    top = dest;
                    log.line(&format!(
                        "  layer {}/{} {} applied in {:.1} s",
                        i + 1,
                        keys.len(),
                        layer.digest,
                        t.elapsed().as_secs_f64()
                    ));
                }
                Err(e) => {
                    result = Err(fail(format!(
                        "{}: layer {}/{} {}: {e}",
                        image.reference,
                        i + 1,
                        keys.len(),
                        layer.digest
                    )));
                    break;
                }
            }
        }
        self.stop_and_publish(vm.as_ref(), &frozen).await?;
        result.map(|()| (key, top))
    }
}

/// Sends one layer blob into the VM and has the agent apply it to `/`.
async fn apply(
    vm: &dyn ember_vmm::Vm,
    blob: &Path,
    compression: Compression,
) -> Result<(), String> {
    let agent = vm.agent();
    let file = tokio::fs::File::open(blob)
        .await
        .map_err(|e| format!("{}: {e}", blob.display()))?;
    agent
        .write_file_from(GUEST_LAYER, file, 0o600)
        .await
        .map_err(|e| format!("sending the layer into the build VM failed: {e}"))?;
    let compression = match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    let out = agent
        .exec(ExecRequest {
            argv: vec![
                GUEST_UNPACKER.into(),
                "unpack-oci-layer".into(),
                compression.into(),
                GUEST_LAYER.into(),
            ],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the build VM's agent failed: {e}"))?;
    if out.success() {
        Ok(())
    } else {
        Err(out
            .stderr_str()
            .trim()
            .chars()
            .take(1000)
            .collect::<String>())
    }
}

fn log_pull(image: &PulledImage, started: Instant, log: &BuildLog) {
    let fetched: Vec<_> = image.layers.iter().filter(|l| l.downloaded).collect();
    let bytes: u64 = fetched.iter().map(|l| l.size).sum();
    log.line(&format!(
        "pulled {} ({}) in {:.1} s: {} layers, {} downloaded ({bytes} bytes), {} from the layer cache",
        image.reference,
        image.manifest_digest,
        started.elapsed().as_secs_f64(),
        image.layers.len(),
        fetched.len(),
        image.layers.len() - fetched.len()
    ));
}

/// The registry image's configuration as the planner takes it. An entry
/// of `Env` without `=` is a name with an empty value, as Docker reads it;
/// a port that is not a number is dropped (the model's ports are numbers).
fn image_config(config: &ember_registry::ImageConfig) -> ember_dockerfile::ImageConfig {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in &config.env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    let mut exposed_ports = Vec::new();
    for port in &config.exposed_ports {
        let number = port.split('/').next().unwrap_or(port);
        if let Ok(n) = number.parse::<u16>() {
            if n != 0 && !exposed_ports.contains(&n) {
                exposed_ports.push(n);
            }
        }
    }
    ember_dockerfile::ImageConfig {
        env,
        workdir: config
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_string()),
        user: config.user.clone().filter(|u| !u.is_empty()),
        exposed_ports,
        entrypoint: config.entrypoint.clone().filter(|e| !e.is_empty()),
        cmd: config.cmd.clone().filter(|c| !c.is_empty()),
        ..ember_dockerfile::ImageConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_config_becomes_the_stages_starting_point() {
        let config = ember_registry::ImageConfig {
            env: vec!["PATH=/usr/bin".into(), "EMPTY".into(), "PATH=/bin".into()],
            working_dir: Some("relative".into()),
            user: Some(String::new()),
            entrypoint: Some(vec![]),
            cmd: Some(vec!["python3".into()]),
            exposed_ports: vec!["8080/tcp".into(), "53/udp".into(), "x/tcp".into()],
            diff_ids: vec![],
        };
        let got = image_config(&config);
        assert_eq!(
            got.env,
            [
                ("PATH".to_string(), "/bin".to_string()),
                ("EMPTY".to_string(), String::new())
            ]
        );
        assert_eq!(got.workdir, "/");
        assert_eq!(got.user, None);
        assert_eq!(got.entrypoint, None);
        assert_eq!(got.command(), Some(vec!["python3".to_string()]));
        assert_eq!(got.exposed_ports, [8080, 53]);
    }
}
