//! `WriteFile` and `ReadFile`.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ember_agent_protocol::{ErrorKind, FrameKind, GuestMessage, MAX_PAYLOAD};

use crate::channel::{Failure, Sender};
use crate::spawn_thread;

/// Only permission bits (incl. setuid/setgid/sticky) are honoured.
const MODE_MASK: u32 = 0o7777;

fn absolute(path: &str) -> Result<&Path, Failure> {
    let p = Path::new(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(Failure::invalid(format!("path {path:?} is not absolute")))
    }
}

/// A file being written from the host's `Data` frames.
pub struct Upload {
    file: File,
    path: String,
    mode: u32,
    bytes: u64,
}

impl Upload {
    pub fn create(path: &str, mode: u32) -> Result<Self, Failure> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & MODE_MASK)
            .open(absolute(path)?)
            .map_err(|e| Failure::io(&format!("creating {path:?}"), &e))?;
        Ok(Self {
            file,
            path: path.to_string(),
            mode,
            bytes: 0,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(data)
            .map_err(|e| Failure::io(&format!("writing {:?}", self.path), &e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Applies the mode exactly (creation is subject to the umask, and an
    /// existing file keeps its old mode) and reports the size.
    pub fn finish(self) -> Result<u64, Failure> {
        self.file
            .set_permissions(Permissions::from_mode(self.mode & MODE_MASK))
            .map_err(|e| Failure::io(&format!("setting the mode of {:?}", self.path), &e))?;
        Ok(self.bytes)
    }
}

/// Validates and opens the file here (so errors are immediate), then
/// streams `FileStart`, the contents and `Eof` from a helper thread so the
/// reader thread stays free for other channels.
pub fn read(path: &str, max_bytes: u64, channel: u32, sender: &Sender) -> Result<(), Failure> {
    let what = |e: &io::Error| Failure::io(&format!("reading {path:?}"), e);
    let meta = std::fs::metadata(absolute(path)?).map_err(|e| what(&e))?;
    if !meta.is_file() {
        return Err(Failure::invalid(format!("{path:?} is not a regular file")));
    }
    // O_NONBLOCK guards against the path being swapped for a FIFO after the
    // check; it changes nothing for regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| what(&e))?;
    let meta = file.metadata().map_err(|e| what(&e))?;
    if !meta.is_file() {
        return Err(Failure::invalid(format!("{path:?} is not a regular file")));
    }
    let size = meta.len();
    if size > max_bytes {
        return Err(Failure::new(
            ErrorKind::TooLarge,
            format!("{path:?} is {size} bytes, more than the {max_bytes} allowed"),
        ));
    }
    let sender = sender.clone();
    let path = path.to_string();
    spawn_thread(format!("read-{channel}"), move || {
        if sender.control(channel, &GuestMessage::FileStart { size }) {
            send_contents(file, size, channel, &sender, &path);
        }
    })
    .map_err(|e| Failure::io("cannot start a reader thread", &e))?;
    Ok(())
}

/// Sends at most the `size` announced in `FileStart`, so a file growing
/// meanwhile cannot break the host's expectations; a shrinking one just
/// ends early.
fn send_contents(file: File, size: u64, channel: u32, sender: &Sender, path: &str) {
    let mut file = file.take(size);
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !sender.bulk(channel, FrameKind::Data, &buf[..n]) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // FileStart has gone out already; a Reset tells the host the
                // contents are incomplete.
                log!("reading {path:?}: {e}");
                sender.reset(channel);
                return;
            }
        }
    }
    sender.eof(channel);
}
