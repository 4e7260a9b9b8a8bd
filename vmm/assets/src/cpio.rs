//! A minimal writer for the `newc` cpio format the kernel unpacks as an
//! initramfs. Timestamps and owners are fixed and inode numbers sequential,
//! so the same entries always give the same bytes.

use std::io::{self, Write};

pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFCHR: u32 = 0o020000;

const TRAILER: &str = "TRAILER!!!";

pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

struct Header<'a> {
    name: &'a str,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    pub(crate) fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    pub(crate) fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.header(&Header {
            name: TRAILER,
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        })?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(&Header {
            name,
            ino,
            mode,
            nlink,
            size,
            rdev,
        })?;
        self.put(data)?;
        self.pad()
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let namesize = h.name.len() as u32 + 1;
        let fields = [
            h.ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        let mut hdr = String::with_capacity(110);
        hdr.push_str("070701");
        for f in fields {
            hdr.push_str(&format!("{f:08x}"));
        }
        self.put(hdr.as_bytes())?;
        self.put(h.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// newc aligns both the name and the data that follow a header to 4.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn hex(b: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap()
    }

    fn align(x: usize) -> usize {
        (x + 3) & !3
    }

    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "header not 4-aligned");
            assert_eq!(&buf[..6], b"070701");
            let f = |i: usize| hex(&buf[6 + 8 * i..14 + 8 * i]);
            let (ino, mode, uid, gid, nlink, mtime, size) =
                (f(0), f(1), f(2), f(3), f(4), f(5), f(6));
            assert_eq!((uid, gid, mtime), (0, 0, 0));
            let rdev = (f(9), f(10));
            let namesize = f(11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_start = align(110 + namesize);
            let data = buf[data_start..data_start + size as usize].to_vec();
            buf = &buf[align(data_start + size as usize)..];
            let done = name == TRAILER;
            out.push(Entry {
                name,
                ino,
                mode,
                nlink,
                rdev,
                data,
            });
            if done {
                assert!(buf.is_empty(), "bytes after trailer");
                return out;
            }
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("/empty", 0o644, b"").unwrap();
        w.file("/a", 0o644, b"xyz").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn writes_parseable_newc() {
        let buf = sample();
        assert_eq!(buf.len() % 4, 0);
        let e = parse(&buf);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "empty", "a", TRAILER]);
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!((e[1].mode, e[1].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(e[2].mode, S_IFREG | 0o755);
        assert_eq!(e[2].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[4].data, b"xyz");
        let inos: Vec<u32> = e.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 0]);
    }

    #[test]
    fn is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn system_cpio_extracts_it() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-id", "--no-absolute-filenames", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Device nodes need root; extract everything else.
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.file("/init", 0o755, b"hello").unwrap();
        let buf = w.finish().unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.path().join("init")).unwrap(), b"hello");
        assert!(dir.path().join("dev").is_dir());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file(TRAILER, 0o644, b"").is_err());
    }
}
