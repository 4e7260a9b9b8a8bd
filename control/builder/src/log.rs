//! The live build log: every line timestamped, appended to a file, and
//! announced to followers as it is written.
//!
//! The file has a cap, so a step that prints forever (`RUN yes`) cannot
//! fill the host's disk during the hour a build may take. Past the cap
//! step output is discarded and the log says so once; a little room is
//! kept under the cap so Ember's own lines (why the build failed) still
//! reach the file. The step whose output hit the cap fails the build: a
//! user gets the reason at once instead of an hour of output nobody can
//! read.

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
/// The cap of a log made by [`BuildLog::create`].
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Kept under the cap for Ember's own lines once step output is cut off.
const NARRATION_ROOM: u64 = 64 * 1024;

/// Progress a follower can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogProgress {
    /// Bytes in the file so far.
    pub len: u64,
    /// The build has ended; no more lines will come.
    pub done: bool,
    /// Step output reached the cap and is being discarded.
    pub truncated: bool,
}

pub struct BuildLog {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    progress: watch::Sender<LogProgress>,
}

struct Inner {
    file: File,
    len: u64,
    max_bytes: u64,
    truncated: bool,
    /// Output bytes not yet ended by a newline, per stream.
    partial: [Vec<u8>; 2],
    /// The last lines, for failure reasons.
    tail: std::collections::VecDeque<String>,
}

impl BuildLog {
    /// A log capped at [`DEFAULT_MAX_BYTES`].
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::create_with_cap(path, DEFAULT_MAX_BYTES)
    }

    /// A log whose file never grows past `max_bytes`.
    pub fn create_with_cap(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let progress = LogProgress {
            len,
            done: false,
            truncated: false,
        };
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes,
            inner: Mutex::new(Inner {
                file,
                len,
                max_bytes,
                truncated: false,
                partial: [Vec::new(), Vec::new()],
                tail: Default::default(),
            }),
            progress: watch::channel(progress).0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// True once step output reached the cap.
    pub fn is_truncated(&self) -> bool {
        self.lock().truncated
    }

    /// Resolves once step output reaches the cap (at once if it has).
    pub async fn truncated(&self) {
        let mut rx = self.progress.subscribe();
        // The sender lives as long as `self`, so this cannot fail while
        // anyone awaits it; if it did, waiting forever is the safe answer.
        if rx.wait_for(|p| p.truncated).await.is_err() {
            std::future::pending::<()>().await;
        }
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
            inner.write_output(line.trim_end_matches('\r'));
            start += nl + 1;
        }
        buf.drain(..start);
        while buf.len() > MAX_LINE {
            let rest = buf.split_off(MAX_LINE);
            let line = String::from_utf8_lossy(&buf).into_owned();
            inner.write_output(&line);
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
                inner.write_output(&line);
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
            truncated: inner.truncated,
        });
    }
}

impl Inner {
    /// A line of step output: dropped past the cap (less the room kept for
    /// Ember's own lines), with one line saying so.
    fn write_output(&mut self, text: &str) {
        if self.truncated {
            return;
        }
        let limit = self.max_bytes.saturating_sub(NARRATION_ROOM);
        if self.len + stamped_len(text) > limit {
            self.truncated = true;
            self.write_line(&format!(
                "build log truncated at {}; further output discarded",
                describe_bytes(self.max_bytes)
            ));
            return;
        }
        self.write_line(text);
    }

    /// A line of Ember's own; past the cap itself it is dropped too.
    fn write_line(&mut self, text: &str) {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        let line = format!("{stamp} {text}\n");
        if self.len + line.len() as u64 > self.max_bytes {
            return;
        }
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

/// Bytes a line takes in the file: the stamp is always 24 characters
/// (RFC 3339, milliseconds, UTC), then a space, the text and a newline.
fn stamped_len(text: &str) -> u64 {
    24 + 1 + text.len() as u64 + 1
}

/// `64 MiB` for whole MiB, else bytes.
pub fn describe_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
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

    #[test]
    fn stamped_len_matches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::create(&dir.path().join("log")).unwrap();
        log.line("twelve chars");
        let len = std::fs::metadata(log.path()).unwrap().len();
        assert_eq!(len, stamped_len("twelve chars"));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_discarded_with_one_note_and_narration_still_fits() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 256 * 1024;
        let log = BuildLog::create_with_cap(&dir.path().join("log"), cap).unwrap();
        log.line("step 1/1 RUN yes");
        let chunk = "y\n".repeat(4096);
        for _ in 0..200 {
            log.output(OutputStream::Stdout, chunk.as_bytes());
        }
        // The cap was hit: waiters wake, whatever came first.
        tokio::time::timeout(std::time::Duration::from_secs(5), log.truncated())
            .await
            .expect("truncated() resolves once the cap is hit");
        assert!(log.is_truncated());
        assert!(log.subscribe().borrow().truncated);
        log.line("build FAILED: step 1/1: its output passed the cap");
        log.finish();

        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.len() as u64 <= cap, "{} > {cap}", text.len());
        assert!(
            text.len() as u64 > cap - 2 * NARRATION_ROOM,
            "stopped early: {}",
            text.len()
        );
        let notes = text
            .lines()
            .filter(|l| l.contains("build log truncated at"))
            .count();
        assert_eq!(notes, 1, "the truncation is said exactly once");
        let last: Vec<_> = text.lines().rev().take(2).collect();
        assert!(last[0].ends_with("build FAILED: step 1/1: its output passed the cap"));
        assert!(last[1].ends_with("build log truncated at 262144 bytes; further output discarded"));
        // The tail used in failure reasons is the end of the file.
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(
            tail.last().map(String::as_str),
            Some("build FAILED: step 1/1: its output passed the cap")
        );
        assert_eq!(tail[tail.len() - 3], "y");
        assert_eq!(log.subscribe().borrow().len, text.len() as u64);
    }

    #[test]
    fn a_log_under_its_cap_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::create_with_cap(&dir.path().join("log"), 1024 * 1024).unwrap();
        log.output(OutputStream::Stdout, "y\n".repeat(1000).as_bytes());
        log.finish();
        assert!(!log.is_truncated());
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(describe_bytes(64 * 1024 * 1024), "64 MiB");
    }
}
