//! The snapshot index: a typed JSON document behind ember-vmm's framed
//! header, named by the sha256 of its bytes, checked in full before a
//! fetch writes anything.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{BlobError, FetchLimits, CHUNK_SIZE, MAX_FILES, MAX_INDEX_BYTES};

const MAGIC: [u8; 8] = *b"EMBERIDX";
const VERSION: u32 = 1;
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotIndex {
    pub chunk_size: u64,
    pub files: Vec<IndexFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexFile {
    pub name: String,
    pub size: u64,
    pub backing: Option<String>,
    /// One per [`CHUNK_SIZE`] of `size`: the chunk's sha256, or `None` for
    /// a chunk of zeros (not stored).
    pub chunks: Vec<Option<String>>,
}

impl SnapshotIndex {
    /// The index object's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BlobError> {
        let json = serde_json::to_vec(self)
            .map_err(|e| BlobError::Invalid(format!("encoding the snapshot index: {e}")))?;
        Ok(ember_vmm::framed::encode(MAGIC, VERSION, &json))
    }

    /// The index in `bytes`, which must be the object named `digest`, and
    /// within `limits`.
    pub fn decode(bytes: &[u8], digest: &str, limits: &FetchLimits) -> Result<Self, BlobError> {
        let corrupt = |reason: String| BlobError::Corrupt {
            what: format!("snapshot index {digest}"),
            reason,
        };
        let found = sha256_hex(bytes);
        if found != digest {
            return Err(corrupt(format!("its sha256 is {found}")));
        }
        let json = ember_vmm::framed::decode(bytes, MAGIC, VERSION, MAX_INDEX_BYTES)
            .map_err(|e| corrupt(e.to_string()))?;
        let index: SnapshotIndex =
            serde_json::from_slice(&json).map_err(|e| corrupt(format!("bad JSON: {e}")))?;
        index.validate(digest, limits)?;
        Ok(index)
    }

    /// Every rule a fetch relies on.
    pub fn validate(&self, digest: &str, limits: &FetchLimits) -> Result<(), BlobError> {
        let what = || format!("snapshot index {digest}");
        let corrupt = |reason: String| BlobError::Corrupt {
            what: what(),
            reason,
        };
        if self.chunk_size != CHUNK_SIZE {
            return Err(corrupt(format!(
                "chunk size {} is not {CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        check_files(
            self.files
                .iter()
                .map(|f| (f.name.as_str(), f.backing.as_deref())),
        )
        .map_err(corrupt)?;
        let mut total = 0u64;
        let mut written = 0u64;
        for file in &self.files {
            let want = file.size.div_ceil(self.chunk_size);
            if file.chunks.len() as u64 != want {
                return Err(corrupt(format!(
                    "{} has {} chunks, {want} for {} bytes",
                    file.name,
                    file.chunks.len(),
                    file.size
                )));
            }
            if let Some(bad) = file.chunks.iter().flatten().find(|d| !is_digest(d)) {
                return Err(corrupt(format!(
                    "{} has a chunk digest that is not 64 lowercase hex: {bad:.80?}",
                    file.name
                )));
            }
            total = total.saturating_add(file.size);
            for (i, chunk) in file.chunks.iter().enumerate() {
                if chunk.is_some() {
                    let start = (i as u64).saturating_mul(self.chunk_size);
                    let len = file.size.saturating_sub(start).min(self.chunk_size);
                    written = written.saturating_add(len);
                }
            }
        }
        if total > limits.max_total_bytes {
            return Err(BlobError::TooLarge {
                what: format!("snapshot {digest}"),
                bytes: total,
                limit: limits.max_total_bytes,
            });
        }
        if written > limits.max_written_bytes {
            return Err(BlobError::TooLarge {
                what: format!("the stored data of snapshot {digest}"),
                bytes: written,
                limit: limits.max_written_bytes,
            });
        }
        Ok(())
    }
}

/// The file names and backing files of a snapshot: each name valid and
/// unique, at most [`MAX_FILES`], every backing another file of the
/// snapshot, without a cycle.
pub(crate) fn check_files<'a>(
    files: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<(), String> {
    let files: Vec<_> = files.collect();
    if files.is_empty() {
        return Err("a snapshot has at least one file".to_string());
    }
    if files.len() > MAX_FILES {
        return Err(format!("{} files, more than {MAX_FILES}", files.len()));
    }
    let mut names = HashSet::new();
    for &(name, _) in &files {
        check_name(name)?;
        if !names.insert(name) {
            return Err(format!("{name} is listed twice"));
        }
    }
    let backing: HashMap<&str, &str> = files
        .iter()
        .filter_map(|&(name, backing)| backing.map(|b| (name, b)))
        .collect();
    for (&name, &base) in &backing {
        if base == name || !names.contains(base) {
            return Err(format!(
                "{name}'s backing file {base:.200?} is not another file of the snapshot"
            ));
        }
    }
    for &(name, _) in &files {
        let mut at = name;
        for _ in 0..files.len() {
            match backing.get(at) {
                Some(&next) => at = next,
                None => break,
            }
        }
        if backing.contains_key(at) {
            return Err(format!("{name}'s chain of backing files is a cycle"));
        }
    }
    Ok(())
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, without `..`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("file name {name:.200?} {why}"));
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return bad("must be 1 to 128 characters long");
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return bad("must begin with a letter or a digit");
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may hold only letters, digits, '.', '_' and '-'");
    }
    if name.contains("..") {
        return bad("must not hold '..'");
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub(crate) fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn file(name: &str, size: u64, backing: Option<&str>) -> IndexFile {
        let n = size.div_ceil(CHUNK_SIZE) as usize;
        IndexFile {
            name: name.to_string(),
            size,
            backing: backing.map(str::to_string),
            chunks: (0..n)
                .map(|i| (i % 2 == 0).then(|| D.to_string()))
                .collect(),
        }
    }

    fn sample() -> SnapshotIndex {
        SnapshotIndex {
            chunk_size: CHUNK_SIZE,
            files: vec![
                file("memory.raw", 256 << 20, None),
                file("base.ext4", 3 * CHUNK_SIZE + 1, None),
                file("disk.qcow2", 17, Some("base.ext4")),
                file("empty", 0, None),
            ],
        }
    }

    /// Encodes `index` and decodes it under its own digest.
    fn round(index: &SnapshotIndex, limits: &FetchLimits) -> Result<SnapshotIndex, BlobError> {
        let bytes = index.encode().unwrap();
        SnapshotIndex::decode(&bytes, &sha256_hex(&bytes), limits)
    }

    fn refused(index: SnapshotIndex) -> String {
        match round(&index, &FetchLimits::default()) {
            Err(BlobError::Corrupt { reason, .. }) => reason,
            other => panic!("{index:?} gave {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let index = sample();
        assert_eq!(round(&index, &FetchLimits::default()).unwrap(), index);
        let bytes = index.encode().unwrap();
        assert_eq!(&bytes[..8], b"EMBERIDX");
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(129);
        for bad in [
            "",
            ".hidden",
            "..",
            "a..b",
            "a/b",
            "/abs",
            "-x",
            "_x",
            "a b",
            "caf\u{e9}",
            "a\0",
            &long,
        ] {
            let mut index = sample();
            index.files[0].name = bad.to_string();
            let reason = refused(index);
            assert!(reason.contains("file name"), "{bad:?}: {reason}");
        }
        for good in ["a", "A.b-c_d", "0", &"a".repeat(128)] {
            let mut index = sample();
            index.files[0].name = good.to_string();
            assert!(round(&index, &FetchLimits::default()).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn refuses_duplicates_and_bad_backing() {
        let mut index = sample();
        index.files[1].name = "memory.raw".to_string();
        assert!(refused(index).contains("twice"));

        let mut index = sample();
        index.files[2].backing = Some("nowhere".to_string());
        assert!(refused(index).contains("backing"));
        let mut index = sample();
        index.files[2].backing = Some("disk.qcow2".to_string());
        assert!(refused(index).contains("backing"));
        let mut index = sample();
        index.files[2].backing = Some("../base.ext4".to_string());
        assert!(refused(index).contains("backing"));
        let mut index = sample();
        index.files[1].backing = Some("disk.qcow2".to_string());
        assert!(refused(index).contains("cycle"));
    }

    #[test]
    fn refuses_file_counts() {
        let mut index = sample();
        index.files.clear();
        assert!(refused(index).contains("at least one"));
        let mut index = sample();
        index.files = (0..=MAX_FILES)
            .map(|i| file(&format!("f{i}"), 1, None))
            .collect();
        assert!(refused(index).contains("more than"));
        let mut index = sample();
        index.files = (0..MAX_FILES)
            .map(|i| file(&format!("f{i}"), 1, None))
            .collect();
        assert!(round(&index, &FetchLimits::default()).is_ok());
    }

    #[test]
    fn refuses_wrong_chunks() {
        let mut index = sample();
        index.files[1].chunks.pop();
        assert!(refused(index).contains("chunks"));
        let mut index = sample();
        index.files[2].chunks.push(None);
        assert!(refused(index).contains("chunks"));
        let mut index = sample();
        index.files[3].chunks.push(None);
        assert!(refused(index).contains("chunks"));
        let mut index = sample();
        index.chunk_size = 1 << 20;
        assert!(refused(index).contains("chunk size"));
        let mut index = sample();
        index.chunk_size = 0;
        assert!(refused(index).contains("chunk size"));
        for bad in [
            &D.to_uppercase(),
            &D[1..],
            &format!("{D}0"),
            &D.replace('0', "g"),
            "../x",
        ] {
            let mut index = sample();
            index.files[0].chunks[0] = Some(bad.to_string());
            assert!(refused(index).contains("hex"), "{bad:?}");
        }
    }

    #[test]
    fn refuses_too_large() {
        let index = sample();
        let total: u64 = index.files.iter().map(|f| f.size).sum();
        let exact = FetchLimits {
            max_total_bytes: total,
            max_written_bytes: u64::MAX,
        };
        assert!(round(&index, &exact).is_ok());
        let under = FetchLimits {
            max_total_bytes: total - 1,
            ..exact
        };
        assert!(matches!(
            round(&index, &under),
            Err(BlobError::TooLarge { bytes, .. }) if bytes == total
        ));
        // What is written counts stored chunks only (a zero chunk is a
        // hole), the last one of a file by its length.
        let written: u64 = index
            .files
            .iter()
            .map(|f| {
                let stored = f.chunks.iter().enumerate().filter(|(_, c)| c.is_some());
                stored
                    .map(|(i, _)| (f.size - i as u64 * CHUNK_SIZE).min(CHUNK_SIZE))
                    .sum::<u64>()
            })
            .sum();
        assert!(written < total, "the sample has no zero chunk");
        let room = FetchLimits {
            max_written_bytes: written,
            ..exact
        };
        assert!(round(&index, &room).is_ok());
        let no_room = FetchLimits {
            max_written_bytes: written - 1,
            ..exact
        };
        assert!(matches!(
            round(&index, &no_room),
            Err(BlobError::TooLarge { bytes, .. }) if bytes == written
        ));
    }

    #[test]
    fn refuses_wrong_digest_and_damage() {
        let index = sample();
        let bytes = index.encode().unwrap();
        let digest = sha256_hex(&bytes);
        let limits = FetchLimits::default();
        let other = sha256_hex(b"other");
        assert!(matches!(
            SnapshotIndex::decode(&bytes, &other, &limits),
            Err(BlobError::Corrupt { reason, .. }) if reason.contains("sha256")
        ));
        // Damage that still matches its own digest: bad header, bad JSON,
        // unknown fields.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let bad_json = ember_vmm::framed::encode(MAGIC, VERSION, b"{\"chunk_size\":");
        let extra = ember_vmm::framed::encode(
            MAGIC,
            VERSION,
            br#"{"chunk_size":4194304,"files":[],"more":1}"#,
        );
        let wrong_version = ember_vmm::framed::encode(MAGIC, 2, &bytes[24..]);
        for damaged in [
            flipped,
            bad_json,
            extra,
            wrong_version,
            b"EMBERIDX".to_vec(),
        ] {
            assert!(matches!(
                SnapshotIndex::decode(&damaged, &sha256_hex(&damaged), &limits),
                Err(BlobError::Corrupt { .. })
            ));
        }
        assert!(SnapshotIndex::decode(&bytes, &digest, &limits).is_ok());
    }

    #[test]
    fn digests() {
        assert!(is_digest(D));
        assert!(!is_digest(&D.to_uppercase()));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
