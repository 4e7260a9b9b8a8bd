//! The one error this crate returns: where in the Dockerfile, and what is wrong.

use std::fmt;

/// A Dockerfile Ember cannot build, with the line to look at when there is one.
///
/// The message is written for the person who wrote the Dockerfile: the build
/// log shows it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DockerfileError {
    /// 1-based line of the instruction (or physical line) at fault.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl DockerfileError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            message: message.into(),
        }
    }

    pub(crate) fn whole(message: impl Into<String>) -> Self {
        Self {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "Dockerfile line {line}: {}", self.message),
            None => write!(f, "Dockerfile: {}", self.message),
        }
    }
}
