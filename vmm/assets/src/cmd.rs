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
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        tracing::debug!(%command, stderr = %stderr.trim(), "command stderr");
    }
    Ok(output)
}

pub(crate) fn stdout_string(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
