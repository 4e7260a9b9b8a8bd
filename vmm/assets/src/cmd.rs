//! Running external tools (apt-get, dpkg-deb, mkfs.ext4) with errors that
//! carry the command line and its stderr.

use std::process::{Command, Output};

use crate::AssetError;

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; a non-zero exit becomes `AssetError::Command`.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, AssetError> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let output = cmd.output().map_err(|source| AssetError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(AssetError::Command {
            command,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        tracing::debug!(%command, stderr = %stderr.trim(), "command stderr");
    }
    Ok(output)
}

/// debootstrap and apt report progress on stderr; the end of it is where
/// the failure is, and an error message should stay readable.
const STDERR_TAIL: usize = 4096;

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    match text.char_indices().rev().nth(STDERR_TAIL) {
        Some((cut, _)) => format!("…{}", &text[cut..]),
        None => text.to_string(),
    }
}

pub(crate) fn stdout_string(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_end_of_stderr() {
        assert_eq!(tail(b" short \n"), "short");
        let long = format!("{}THE END", "x".repeat(10_000));
        let kept = tail(long.as_bytes());
        assert!(kept.ends_with("THE END") && kept.starts_with('…'));
        assert!(kept.chars().count() <= STDERR_TAIL + 2);
    }
}
