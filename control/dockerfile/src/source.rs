//! The Dockerfile as text: its size bounds, byte offsets to line numbers, and
//! Docker's folding of continued shell-form lines.

use crate::DockerfileError;

/// The largest Dockerfile accepted.
pub const MAX_DOCKERFILE_BYTES: usize = 1024 * 1024;
/// The longest physical line accepted.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The most instructions one Dockerfile may hold.
pub const MAX_INSTRUCTIONS: usize = 1000;
/// The most build stages (FROM instructions): each one may boot a build VM.
pub const MAX_STAGES: usize = 16;

const UTF8_BOM: &str = "\u{feff}";

/// Drops a leading byte-order mark (Docker ignores it too) and checks the
/// size bounds before any parsing work is spent on the text.
pub fn checked_text(text: &str) -> Result<&str, DockerfileError> {
    if text.len() > MAX_DOCKERFILE_BYTES {
        return Err(DockerfileError::whole(format!(
            "the Dockerfile is {} bytes; the limit is {MAX_DOCKERFILE_BYTES}",
            text.len()
        )));
    }
    let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
    for (index, line) in text.split('\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            return Err(DockerfileError::at(
                index + 1,
                format!(
                    "the line is {} bytes; the limit is {MAX_LINE_BYTES}",
                    line.len()
                ),
            ));
        }
    }
    Ok(text)
}

/// Maps byte offsets in the text to 1-based line numbers.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self { starts }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        // The number of line starts at or before `offset` is its line number.
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

/// Folds a shell-form command that spans continued lines into one line, as
/// Docker does: the escape character ending a line (and any blanks after
/// it) is removed, the next line is appended as is, and continuation lines
/// that are blank or comments are skipped.
pub fn fold_continuations(raw: &str, escape: char) -> String {
    let mut folded = String::with_capacity(raw.len());
    for (index, line) in raw.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if index > 0 {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
        }
        let without_blanks = line.trim_end_matches([' ', '\t']);
        match without_blanks.strip_suffix(escape) {
            Some(continued) => folded.push_str(continued),
            None => folded.push_str(line),
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines() {
        let index = LineIndex::new("a\nbb\n\nc");
        assert_eq!(index.line_of(0), 1);
        assert_eq!(index.line_of(1), 1);
        assert_eq!(index.line_of(2), 2);
        assert_eq!(index.line_of(5), 3);
        assert_eq!(index.line_of(6), 4);
    }

    #[test]
    fn continuations_fold_like_docker() {
        assert_eq!(
            fold_continuations("echo a \\\n  # note\n\n   \n  b \\  \r\n c", '\\'),
            "echo a   b  c"
        );
        assert_eq!(fold_continuations("dir `\n x", '`'), "dir  x");
        assert_eq!(fold_continuations("a \\", '\\'), "a ");
    }
}
