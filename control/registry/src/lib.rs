//! A client for OCI distribution registries: parses image references the
//! way Docker does, pulls an image's manifest, config and layers (anonymous
//! bearer tokens or docker `config.json` credentials), verifies every blob
//! against its sha256 while it streams, and keeps layers in a cache by
//! digest so that images sharing a layer fetch it once.
//!
//! ```no_run
//! # async fn example() -> Result<(), ember_registry::RegistryError> {
//! use ember_registry::{BlobCache, ImageReference, PullLimits, RegistryClient, RegistryOptions};
//! let client = RegistryClient::new(&RegistryOptions::default(), PullLimits::default())?;
//! let cache = BlobCache::new("/var/lib/ember/blobs")?;
//! let image = client.pull(&"python:3.12-slim".parse::<ImageReference>()?, &cache).await?;
//! for layer in &image.layers {
//!     println!("{} {:?} {}", layer.digest, layer.compression, layer.path.display());
//! }
//! # Ok(()) }
//! ```

mod auth;
mod cache;
mod client;
mod digest;
mod error;
mod guard;
mod manifest;
mod pull;
mod reference;

pub use cache::BlobCache;
pub use client::RegistryOptions;
pub use digest::Digest;
pub use error::RegistryError;
pub use manifest::{Compression, ImageConfig};
pub use pull::{PullLimits, PulledImage, PulledLayer, RegistryClient};
pub use reference::ImageReference;
