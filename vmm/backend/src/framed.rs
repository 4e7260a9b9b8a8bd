//! Small typed files behind a fixed header: magic, format version, payload
//! length, CRC-32. Snapshot manifests and VM runtime records use it, so a
//! truncated, foreign or damaged file is rejected before anything trusts it.

use std::io::{Read, Write};
use std::path::Path;

const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why a framed file or buffer was refused.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("bad header (not this kind of file)")]
    BadHeader,
    #[error("format version {0} is not supported")]
    Version(u32),
    #[error("truncated: {got} of {want} payload bytes")]
    Truncated { got: usize, want: u64 },
    #[error("checksum mismatch")]
    Checksum,
}

/// `payload` behind the header: magic, `version`, length, CRC-32.
pub fn encode(magic: [u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The checked payload of `bytes` (at most `max` of them, header included),
/// which [`encode`] made with this `magic` and `version`.
pub fn decode(
    bytes: &[u8],
    magic: [u8; 8],
    version: u32,
    max: u64,
) -> Result<Vec<u8>, FramedError> {
    if bytes.len() as u64 > max {
        return Err(FramedError::TooLarge(max));
    }
    if bytes.len() < HEADER_LEN || bytes[..8] != magic {
        return Err(FramedError::BadHeader);
    }
    let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if found != version {
        return Err(FramedError::Version(found));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let want = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != want {
        return Err(FramedError::Truncated {
            got: payload.len(),
            want,
        });
    }
    if crc32fast::hash(payload) != crc {
        return Err(FramedError::Checksum);
    }
    Ok(payload.to_vec())
}

/// Writes `payload` behind the header, atomically (temporary file, fsync,
/// rename): readers see the old file or the new one, never a mix.
pub(crate) fn write(
    path: &Path,
    magic: [u8; 8],
    version: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let out = encode(magic, version, payload);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads at most `max` bytes of `file` and returns the checked payload.
pub(crate) fn read(
    file: std::fs::File,
    magic: [u8; 8],
    version: u32,
    max: u64,
) -> Result<Vec<u8>, FramedError> {
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    decode(&bytes, magic, version, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = *b"EMBERTST";

    fn load(path: &Path) -> Result<Vec<u8>, FramedError> {
        read(std::fs::File::open(path).unwrap(), MAGIC, 1, 1024)
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, MAGIC, 1, b"payload").unwrap();
        assert_eq!(load(&path).unwrap(), b"payload");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(load(&path), Err(FramedError::Truncated { .. })));
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(load(&path), Err(FramedError::Checksum)));
        write(&path, *b"EMBEROTH", 1, b"payload").unwrap();
        assert!(matches!(load(&path), Err(FramedError::BadHeader)));
        write(&path, MAGIC, 2, b"payload").unwrap();
        assert!(matches!(load(&path), Err(FramedError::Version(2))));
        write(&path, MAGIC, 1, &[0u8; 2000]).unwrap();
        assert!(matches!(load(&path), Err(FramedError::TooLarge(1024))));
    }

    #[test]
    fn bytes_round_trip() {
        let framed = encode(MAGIC, 3, b"abc");
        assert_eq!(decode(&framed, MAGIC, 3, 1024).unwrap(), b"abc");
        assert!(matches!(
            decode(&framed, MAGIC, 3, 10),
            Err(FramedError::TooLarge(10))
        ));
        assert!(matches!(
            decode(&framed[..5], MAGIC, 3, 1024),
            Err(FramedError::BadHeader)
        ));
    }
}
