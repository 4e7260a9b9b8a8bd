//! Just enough ELF64 parsing to check that a `vmlinux` can be PVH-booted.

/// `XEN_ELFNOTE_PHYS32_ENTRY`: QEMU's PVH loader needs this note.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_NOTE: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

/// One ELF note; `name` keeps its NUL terminator as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub name: Vec<u8>,
    pub kind: u32,
    pub desc: Vec<u8>,
}

/// Every note in every PT_NOTE segment of a little-endian ELF64 file;
/// `None` when the headers are malformed.
pub fn notes(elf: &[u8]) -> Option<Vec<Note>> {
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return None;
    }
    let phoff = usize::try_from(u64_at(elf, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    let mut out = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_NOTE {
            continue;
        }
        let off = usize::try_from(u64_at(elf, ph + 0x08)?).ok()?;
        let size = usize::try_from(u64_at(elf, ph + 0x20)?).ok()?;
        let seg = elf.get(off..off.checked_add(size)?)?;
        let mut p = 0;
        while p + 12 <= seg.len() {
            let namesz = u32_at(seg, p)? as usize;
            let descsz = u32_at(seg, p + 4)? as usize;
            let ty = u32_at(seg, p + 8)?;
            let name_start = p + 12;
            let desc_start = name_start + align4(namesz);
            let name = seg.get(name_start..name_start + namesz)?;
            let desc = seg.get(desc_start..desc_start + descsz)?;
            out.push(Note {
                name: name.to_vec(),
                kind: ty,
                desc: desc.to_vec(),
            });
            p = desc_start + align4(descsz);
        }
    }
    Some(out)
}

/// The 32-bit PVH entry point from the `Xen` PHYS32_ENTRY note, if present.
pub fn pvh_entry(elf: &[u8]) -> Option<u32> {
    notes(elf)?.into_iter().find_map(|n| {
        let is_xen = n.name.strip_suffix(b"\0").unwrap_or(&n.name) == b"Xen";
        if is_xen && n.kind == XEN_ELFNOTE_PHYS32_ENTRY {
            u32_at(&n.desc, 0)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header, one PT_NOTE program header and two notes.
    fn tiny_elf(note_type: u32) -> Vec<u8> {
        let mut notes = Vec::new();
        for (name, ty, desc) in [
            (&b"GNU\0"[..], 3u32, &[1u8, 2, 3, 4, 5, 6][..]),
            (&b"Xen\0"[..], note_type, &0x0100_0000u32.to_le_bytes()[..]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&ty.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(align4(notes.len()), 0);
            notes.extend_from_slice(desc);
            notes.resize(align4(notes.len()), 0);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        elf[ph + 0x20..ph + 0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf.extend(notes);
        elf
    }

    #[test]
    fn finds_pvh_note() {
        assert_eq!(pvh_entry(&tiny_elf(18)), Some(0x0100_0000));
        assert_eq!(pvh_entry(&tiny_elf(17)), None);
        assert_eq!(pvh_entry(b"not an elf"), None);
    }
}
