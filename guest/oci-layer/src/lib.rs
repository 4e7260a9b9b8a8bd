//! Applies one OCI image layer to a directory tree, with the semantics of
//! the OCI image spec's `layer.md`: whiteouts remove what lower layers left,
//! then the layer's entries are extracted.
//!
//! Layers are hostile input. Every path is resolved within the root (a
//! symlink met on the way is resolved as if the root were `/`), the final
//! component is never followed, nothing is written through an existing
//! file, device nodes are refused, and every size and count is bounded.
//! Inside Ember's build VM the root is `/` of the build's own disk; the
//! confinement is what makes the same code safe in host-side tests.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

mod entry;
mod error;
mod metadata;
mod paths;
mod whiteout;

pub use error::LayerError;

/// How the layer blob is compressed (its media type's suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = LayerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(LayerError::UnknownCompression(other.to_string())),
        }
    }
}

/// Bounds on one layer. The defaults fit any real image with room to spare.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_entries: u64,
    pub max_uncompressed_bytes: u64,
    pub max_path_len: usize,
    pub max_link_target_len: usize,
    pub max_xattr_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_uncompressed_bytes: 16 << 30,
            max_path_len: 4096,
            max_link_target_len: 4096,
            max_xattr_value_bytes: 64 << 10,
        }
    }
}

/// What one layer held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries extracted (whiteouts not counted).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteout entries applied (plain and opaque).
    pub whiteouts: u64,
}

/// Applies the layer in `layer` to the tree at `root`: whiteouts first,
/// against what lower layers left, then every other entry.
pub fn apply_layer(
    root: &Path,
    layer: &mut File,
    compression: Compression,
    limits: &Limits,
) -> Result<LayerStats, LayerError> {
    let mut stats = LayerStats::default();
    read_entries(layer, compression, limits, |entry| {
        whiteout::apply(root, entry, limits, &mut stats)
    })?;
    let mut extractor = entry::Extractor::new(root, limits);
    read_entries(layer, compression, limits, |entry| {
        extractor.extract(entry, &mut stats)
    })?;
    extractor.finish()?;
    Ok(stats)
}

/// Reads the layer from its start, handing every entry to `visit`. The
/// entry count and the total decompressed size are checked here, so both
/// passes are bounded the same way.
fn read_entries<F>(
    layer: &mut File,
    compression: Compression,
    limits: &Limits,
    mut visit: F,
) -> Result<(), LayerError>
where
    F: FnMut(&mut tar::Entry<'_, Box<dyn Read + '_>>) -> Result<(), LayerError>,
{
    layer.seek(SeekFrom::Start(0)).map_err(LayerError::Read)?;
    let exceeded = Rc::new(Cell::new(false));
    let bounded = Bounded {
        inner: decoder(BufReader::new(&mut *layer), compression)?,
        left: limits.max_uncompressed_bytes,
        exceeded: Rc::clone(&exceeded),
    };
    let too_large = || LayerError::Limit {
        what: "uncompressed bytes per layer",
        limit: limits.max_uncompressed_bytes,
    };
    let mut archive = tar::Archive::new(Box::new(bounded) as Box<dyn Read>);
    let entries = archive.entries().map_err(LayerError::Read)?;
    let mut count: u64 = 0;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(_) if exceeded.get() => return Err(too_large()),
            Err(e) => return Err(LayerError::Read(e)),
        };
        count += 1;
        if count > limits.max_entries {
            return Err(LayerError::Limit {
                what: "entries per layer",
                limit: limits.max_entries,
            });
        }
        match visit(&mut entry) {
            Err(_) if exceeded.get() => return Err(too_large()),
            other => other?,
        }
    }
    Ok(())
}

fn decoder<'a, R: io::BufRead + 'a>(
    reader: R,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, LayerError> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        // Multi-member: some tools write a layer as several gzip members.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| LayerError::Read(io::Error::new(io::ErrorKind::InvalidData, e)))?,
        ),
    })
}

/// Fails the read once more than the limit has come out of the
/// decompressor, so a small blob cannot expand without bound.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit tells "exactly at" from "over".
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other(
                "layer exceeds the uncompressed size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
