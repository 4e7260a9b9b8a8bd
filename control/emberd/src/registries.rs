//! How emberd reaches the registries a Dockerfile's `FROM` names.

use std::path::PathBuf;

use anyhow::Context as _;
use ember_assets::AssetStore;
use ember_builder::RegistryBases;
use ember_registry::{BlobCache, PullLimits, RegistryClient, RegistryOptions};

use crate::layout::DataDir;

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// A registry (`HOST:PORT`, as the image reference names it) spoken
    /// to over plain HTTP, and allowed on a loopback or private address;
    /// repeatable. Every other registry is HTTPS.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// An HTTPS registry allowed on a loopback, private or link-local
    /// address (an internal mirror); repeatable. Without this or
    /// --insecure-registry such addresses are refused, because FROM is
    /// user input.
    #[arg(long = "private-registry", value_name = "HOST:PORT")]
    pub private_registries: Vec<String>,
    /// A PEM file of CA certificates trusted for registries besides the
    /// system's.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// A docker-style `config.json` whose `auths` credentials emberd uses
    /// for registries that ask for them. Every build may then pull what
    /// those credentials can: give emberd an account of its own.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry client, the layer cache in the data dir (shared by
    /// every build) and the empty disk layers are applied to.
    pub fn bases(&self, layout: &DataDir, assets: &AssetStore) -> anyhow::Result<RegistryBases> {
        for host in self
            .insecure_registries
            .iter()
            .chain(&self.private_registries)
        {
            if host.is_empty() || host.contains(['/', ' ']) || host.contains("://") {
                anyhow::bail!(
                    "--insecure-registry/--private-registry {host:?}: give HOST or HOST:PORT"
                );
            }
        }
        let options = RegistryOptions {
            insecure_registries: self.insecure_registries.clone(),
            private_registries: self.private_registries.clone(),
            registry_ca: self.registry_ca.clone(),
            docker_config: self.docker_config.clone(),
        };
        let client = RegistryClient::new(&options, PullLimits::default())
            .context("--registry-ca / --docker-config")?;
        let blobs = BlobCache::new(layout.build_cache().join("blobs"))
            .context("the registry layer cache")?;
        let empty_root = assets
            .ensure_empty_rootfs()
            .context("the empty disk registry images are unpacked on")?
            .image;
        Ok(RegistryBases {
            client,
            blobs,
            empty_root,
        })
    }
}
