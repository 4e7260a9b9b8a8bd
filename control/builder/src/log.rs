//! The live build log: every line timestamped, appended to a file, and
//! announced to followers as it is written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

use ember_vmm::agent::OutputStream;

/// Longest line kept; longer output is split, so one runaway line cannot
/// hold the log hostage.
const MAX_LINE: usize = 16 * 1024;
/// Lines quoted in a failure reason.
pub const TAIL_LINES: usize = 10;

/// Progress a follower can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogProgress {
    /// Bytes in the file so far.
    pub len: u64,
    /// The build has ended; no more lines will come.
    pub done: bool,
}

pub struct BuildLog {
    path: PathBuf,
    inner: Mutex<Inner>,
    progress: watch::Sender<LogProgress>,
}

struct Inner {
    file: File,
    len: u64,
    /// Output bytes not yet ended by a newline, per stream.
    partial: [Vec<u8>; 2],
    /// The last lines, for failure reasons.
    tail: std::collections::VecDeque<String>,
}

impl BuildLog {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                len,
                partial: [Vec::new(), Vec::new()],
                tail: Default::default(),
            }),
            progress: watch::channel(LogProgress { len, done: false }).0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one line of Ember's own narration.
    pub fn line(&self, text: &str) {
        let mut inner = self.lock();
        for l in text.lines() {
            inner.write_line(l);
        }
        self.announce(&inner, false);
    }

    /// Logs a step's output; only whole lines are written, the rest waits
    /// for its newline (or [`flush_output`](Self::flush_output)).
    pub fn output(&self, stream: OutputStream, bytes: &[u8]) {
        let mut inner = self.lock();
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut inner.partial[idx]);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[start..start + nl]).into_owned();
            inner.write_line(line.trim_end_matches('\r'));
            start += nl + 1;
        }
        buf.drain(..start);
        while buf.len() > MAX_LINE {
            let rest = buf.split_off(MAX_LINE);
            let line = String::from_utf8_lossy(&buf).into_owned();
            inner.write_line(&line);
            buf = rest;
        }
        inner.partial[idx] = buf;
        self.announce(&inner, false);
    }

    /// Writes out output that never got its final newline.
    pub fn flush_output(&self) {
        let mut inner = self.lock();
        for idx in 0..2 {
            let buf = std::mem::take(&mut inner.partial[idx]);
            if !buf.is_empty() {
                let line = String::from_utf8_lossy(&buf).into_owned();
                inner.write_line(&line);
            }
        }
        self.announce(&inner, false);
    }

    /// The last lines written, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    /// Marks the log complete: followers stop waiting.
    pub fn finish(&self) {
        self.flush_output();
        let inner = self.lock();
        let _ = inner.file.sync_data();
        self.announce(&inner, true);
    }

    pub fn subscribe(&self) -> watch::Receiver<LogProgress> {
        self.progress.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn announce(&self, inner: &Inner, done: bool) {
        self.progress.send_replace(LogProgress {
            len: inner.len,
            done,
        });
    }
}

impl Inner {
    fn write_line(&mut self, text: &str) {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        let line = format!("{stamp} {text}\n");
        // A full disk must not fail the build over its log; the line still
        // reaches the tail used in failure reasons.
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::warn!("build log write failed: {e}");
        } else {
            self.len += line.len() as u64;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.chars().take(512).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_timestamped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::create(&dir.path().join("log")).unwrap();
        let rx = log.subscribe();
        log.line("step 1/2 RUN echo hi");
        log.output(OutputStream::Stdout, b"hel");
        log.output(OutputStream::Stdout, b"lo\nwor");
        log.output(OutputStream::Stderr, b"oops\n");
        log.finish();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<_> = text.lines().map(|l| l.split_once(' ').unwrap()).collect();
        let bodies: Vec<_> = lines.iter().map(|(_, b)| *b).collect();
        assert_eq!(bodies, ["step 1/2 RUN echo hi", "hello", "oops", "wor"]);
        for (stamp, _) in &lines {
            assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
        }
        assert!(rx.borrow().done);
        assert_eq!(rx.borrow().len, text.len() as u64);
        assert_eq!(log.tail().last().map(String::as_str), Some("wor"));
    }
}
