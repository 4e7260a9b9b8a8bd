//! Decoder for the LZ4 "legacy" stream format that Linux uses for
//! LZ4-compressed kernels (CONFIG_KERNEL_LZ4).

pub(crate) const MAGIC: [u8; 4] = [0x02, 0x21, 0x4C, 0x18];
const MAGIC_U32: u32 = u32::from_le_bytes(MAGIC);

/// Every legacy block except the last decompresses to exactly this much.
pub(crate) const BLOCK_SIZE: usize = 8 << 20;

/// Worst-case compressed size of one full block (LZ4_compressBound); a
/// "size" above this can only be trailing data, not a block header.
const MAX_COMPRESSED: usize = BLOCK_SIZE + BLOCK_SIZE / 255 + 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Lz4Error {
    #[error("input does not start with the LZ4 legacy magic")]
    NoMagic,
    #[error("first block is corrupt: {0}")]
    Corrupt(String),
    #[error("stream contains no blocks")]
    Empty,
}

/// Decodes a legacy stream starting at the magic in `input`. Bytes after the
/// stream are ignored, since in a bzImage the payload is followed by the
/// decompressed size and padding, and its exact length is not known here.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, Lz4Error> {
    let mut rest = input.strip_prefix(&MAGIC[..]).ok_or(Lz4Error::NoMagic)?;
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut blocks = 0usize;
    while rest.len() >= 4 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if size == MAGIC_U32 || size == 0 {
            break;
        }
        let size = size as usize;
        if size > MAX_COMPRESSED || size > rest.len() - 4 {
            break;
        }
        let n = match lz4_flex::block::decompress_into(&rest[4..4 + size], &mut block) {
            Ok(n) => n,
            Err(e) if blocks == 0 => return Err(Lz4Error::Corrupt(e.to_string())),
            // Trailing bytes after a stream that ended on a full block can
            // look like a plausible header; the caller validates the result.
            Err(e) => {
                tracing::debug!(error = %e, blocks, "treating undecodable data as end of stream");
                break;
            }
        };
        out.extend_from_slice(&block[..n]);
        blocks += 1;
        rest = &rest[4 + size..];
        if n < BLOCK_SIZE {
            // A short block is by definition the last one.
            break;
        }
    }
    if blocks == 0 {
        return Err(Lz4Error::Empty);
    }
    Ok(out)
}

/// Finds an LZ4 legacy payload inside `image` (a bzImage) that decodes to an
/// ELF file. Every occurrence of the magic is tried, because the setup code
/// before the payload could contain the same four bytes by chance.
pub fn find_elf_payload(image: &[u8]) -> Option<Vec<u8>> {
    let mut start = 0;
    while let Some(pos) = find(&image[start..], &MAGIC) {
        let at = start + pos;
        if let Ok(data) = decode(&image[at..]) {
            if data.starts_with(b"\x7fELF") {
                return Some(data);
            }
        }
        start = at + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `data` the way `lz4 -l` does.
    fn legacy_stream(data: &[u8]) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        for chunk in data.chunks(BLOCK_SIZE) {
            let c = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(c.len() as u32).to_le_bytes());
            s.extend_from_slice(&c);
        }
        s
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivially so.
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 7 == 0 {
                    (x >> 24) as u8
                } else {
                    (i % 251) as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_multi_block() {
        let data = sample(BLOCK_SIZE * 2 + 12345);
        assert_eq!(decode(&legacy_stream(&data)).unwrap(), data);
    }

    #[test]
    fn round_trips_exact_block_multiple_at_eof() {
        let data = sample(BLOCK_SIZE);
        assert_eq!(decode(&legacy_stream(&data)).unwrap(), data);
    }

    #[test]
    fn tolerates_trailing_bytes() {
        let data = sample(100_000);
        let mut s = legacy_stream(&data);
        // What a bzImage appends: the decompressed size, then padding.
        s.extend_from_slice(&(data.len() as u32).to_le_bytes());
        s.extend_from_slice(&[0xAB; 37]);
        assert_eq!(decode(&s).unwrap(), data);

        // Garbage after a stream that ended on a full block, whose first word
        // is a small plausible block size.
        let data = sample(BLOCK_SIZE);
        let mut s = legacy_stream(&data);
        s.extend_from_slice(&16u32.to_le_bytes());
        s.extend_from_slice(&[0xFF; 64]);
        assert_eq!(decode(&s).unwrap(), data);
    }

    #[test]
    fn stops_at_repeated_magic() {
        // A full last block, so only the magic can end the first stream.
        let data = sample(BLOCK_SIZE);
        let mut s = legacy_stream(&data);
        s.extend_from_slice(&legacy_stream(b"second stream"));
        assert_eq!(decode(&s).unwrap(), data);
    }

    #[test]
    fn rejects_non_lz4() {
        assert_eq!(decode(b"hello"), Err(Lz4Error::NoMagic));
        assert_eq!(decode(&MAGIC), Err(Lz4Error::Empty));
    }

    #[test]
    fn finds_elf_payload_after_decoy_magic() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(sample(3000));
        let mut image = vec![0u8; 600];
        image.extend_from_slice(&MAGIC); // decoy, not a valid stream
        image.extend_from_slice(&[9, 9, 9]);
        image.extend(legacy_stream(&elf));
        image.extend_from_slice(&[0u8; 16]);
        assert_eq!(find_elf_payload(&image).unwrap(), elf);
    }
}
