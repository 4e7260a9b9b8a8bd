//! What the builder executes: the base image, the steps in order, and the
//! configuration of the finished image.

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;

/// The managed base images a Dockerfile may start `FROM`.
pub const MANAGED_BASE_IMAGES: &[&str] = &["busybox", "debian12-minimal"];

/// A Dockerfile turned into work for the builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    pub base: BaseRef,
    pub steps: Vec<Step>,
    pub config: ImageConfig,
    /// Things the build log should show that do not stop the build
    /// (a deprecated MAINTAINER, build args no ARG declared, ...).
    pub warnings: Vec<String>,
}

/// The managed base image of `FROM NAME[:VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// One of [`MANAGED_BASE_IMAGES`].
    pub name: String,
    pub version: Option<String>,
    pub line: usize,
}

/// One thing the builder does inside the build VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The Dockerfile line the instruction starts on.
    pub line: usize,
    /// The instruction on one line, after substitution: for the build log
    /// and as part of a cache key.
    pub instruction: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// Runs a process. `argv` is final: a shell-form RUN is the SHELL in
    /// force plus the command text (variables in it are left for the shell).
    Run {
        argv: Vec<String>,
        /// ENV so far, then the ARGs with a value (ENV wins on a clash).
        env: Vec<(String, String)>,
        workdir: String,
        user: Option<String>,
    },
    /// COPY or ADD from the build context.
    Copy {
        /// Context-relative paths or patterns, after substitution.
        sources: Vec<String>,
        /// Absolute; a trailing `/` means "into this directory".
        dest: String,
        /// `USER[:GROUP]` as written, after substitution.
        chown: Option<String>,
        /// ADD: a local tar archive is unpacked at `dest`.
        extract_archives: bool,
    },
    /// WORKDIR: creates the directory (owned by `user`) if it is missing.
    Workdir { path: String, user: Option<String> },
}
