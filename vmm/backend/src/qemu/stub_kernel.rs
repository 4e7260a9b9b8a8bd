//! A placeholder kernel for restores.
//!
//! QEMU loads `-kernel` into its own memory (fw_cfg) at start-up, which
//! for Debian's 53 MB vmlinux costs every restored VM tens of milliseconds
//! and as many megabytes of RSS, only for a firmware path that a restore
//! never runs: the guest kernel is already in the snapshot's RAM. A restore
//! still needs *a* PVH kernel so QEMU builds the same option-ROM layout as
//! the boot did (the ROMs are migrated state), so it gets this one: a
//! minimal ELF with a single `hlt` and the Xen PVH entry note.

use std::path::{Path, PathBuf};

use crate::VmmError;

const LOAD_ADDR: u64 = 0x10_0000;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

pub fn image() -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // name size ("Xen\0")
    note.extend_from_slice(&4u32.to_le_bytes()); // desc size
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    let note_off = EHDR + 2 * PHDR;
    let code_off = (note_off + note.len()).next_multiple_of(16);
    let code = [0xf4u8]; // hlt

    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, v1, SysV
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [EHDR, PHDR, 2, 64, 0, 0] {
        out.extend_from_slice(&(v as u16).to_le_bytes());
    }
    let phdr = |out: &mut Vec<u8>,
                kind: u32,
                flags: u32,
                off: usize,
                addr: u64,
                len: usize,
                align: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        for v in [off as u64, addr, addr, len as u64, len as u64, align] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut out, 1, 5, code_off, LOAD_ADDR, code.len(), 0x1000); // PT_LOAD r-x
    phdr(&mut out, 4, 4, note_off, 0, note.len(), 4); // PT_NOTE
    out.extend_from_slice(&note);
    out.resize(code_off, 0);
    out.extend_from_slice(&code);
    out
}

/// Writes the placeholder kernel and a one-byte initrd under `dir` (once)
/// and returns their paths.
pub fn install(dir: &Path) -> Result<(PathBuf, PathBuf), VmmError> {
    let kernel = dir.join("restore-kernel.elf");
    let initrd = dir.join("restore-initrd.img");
    for (path, bytes) in [(&kernel, image()), (&initrd, vec![0u8])] {
        if std::fs::read(path).ok().as_deref() != Some(&bytes[..]) {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(VmmError::io(format!("write {}", path.display())))?;
        }
    }
    Ok((kernel, initrd))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stub_is_an_elf_with_the_pvh_note() {
        let img = super::image();
        assert_eq!(&img[..4], b"\x7fELF");
        let note = img.windows(4).position(|w| w == b"Xen\0").unwrap();
        assert_eq!(&img[note - 4..note], &18u32.to_le_bytes());
        assert_eq!(img.last(), Some(&0xf4));
    }
}
