//! What the builder executes: the base image, the steps in order, and the
//! configuration of the finished image.

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;

/// The managed base images a Dockerfile may start `FROM`.
pub const MANAGED_BASE_IMAGES: &[&str] = &["busybox", "debian12-minimal"];

/// A Dockerfile turned into work for the builder. `base`, `parent` and
/// `steps` are the last stage's: the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// The base image at the root of the image's stage.
    pub base: BaseRef,
    /// The earlier stage (an index into `stages`) the image's stage is
    /// `FROM`, if it builds on one rather than on `base` directly.
    pub parent: Option<usize>,
    pub steps: Vec<Step>,
    /// The stages before the last, in order; empty for one stage.
    pub stages: Vec<Stage>,
    pub config: ImageConfig,
    /// Things the build log should show that do not stop the build
    /// (a deprecated MAINTAINER, build args no ARG declared, ...).
    pub warnings: Vec<String>,
}

/// The base image of a `FROM` that names no stage: one of Ember's managed
/// bases (`NAME[:VERSION]`), or an image in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// One of [`MANAGED_BASE_IMAGES`], or the registry reference as written.
    pub name: String,
    pub version: Option<String>,
    pub line: usize,
    /// A registry image: its reference after ARG substitution, to be
    /// parsed and pulled by the builder. Left out of the serialised form
    /// when absent, so the cache keys of managed-base builds stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl BuildPlan {
    /// The registry images the plan's stages start from, each once, in
    /// order of first use.
    pub fn registry_images(&self) -> Vec<&BaseRef> {
        let mut seen: Vec<&BaseRef> = Vec::new();
        for base in self.stages.iter().map(|s| &s.base).chain([&self.base]) {
            if base.image.is_some() && !seen.iter().any(|b| b.image == base.image) {
                seen.push(base);
            }
        }
        seen
    }
}

/// A build stage before the last: built like the image, only to be copied
/// from (`COPY --from`) or built on (`FROM name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The base image at the root of the stage.
    pub base: BaseRef,
    /// The earlier stage this one is `FROM`, if any.
    pub parent: Option<usize>,
    pub steps: Vec<Step>,
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
    /// COPY or ADD from the build context, or `COPY --from` a stage.
    Copy {
        /// Context-relative paths or patterns, after substitution; with
        /// `from`, absolute paths in that stage.
        sources: Vec<String>,
        /// Absolute; a trailing `/` means "into this directory".
        dest: String,
        /// `USER[:GROUP]` as written, after substitution.
        chown: Option<String>,
        /// ADD: a local tar archive is unpacked at `dest`.
        extract_archives: bool,
        /// `COPY --from`: the index of the earlier stage copied from.
        /// Left out of the serialised form when absent, so the cache keys
        /// of single-stage builds stay what they were.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<usize>,
    },
    /// WORKDIR: creates the directory (owned by `user`) if it is missing.
    Workdir { path: String, user: Option<String> },
}
