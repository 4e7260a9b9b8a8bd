//! Dockerfiles for Ember's microVM images: parsing, variable substitution,
//! and the build plan the builder executes inside a build VM.
//!
//! A Dockerfile here has one or more stages (at most [`MAX_STAGES`]), each
//! `FROM` one of Ember's managed base images ([`MANAGED_BASE_IMAGES`]), an
//! image in a registry (its configuration given to
//! [`plan_with_bases`] once the builder has pulled it) or an earlier
//! stage; `COPY --from` copies out of an earlier stage and the last stage
//! is the image. Instructions that need a container runtime (`ONBUILD`,
//! `HEALTHCHECK`, `VOLUME`, `--mount`, ADD from a URL) are refused with
//! the line they are on.
//!
//! The lexing (parser directives, `\`/backtick continuations, comments,
//! flags, JSON exec form with Docker's fallback to shell form) is done by
//! the maintained `parse-dockerfile` crate, which follows BuildKit's parser.
//! What BuildKit does after lexing is here: the word rules of its shell
//! lexer (quotes, escapes, `$VAR`, `${VAR:-default}`, `${VAR:+alt}`) in
//! `words`, ARG/ENV scoping, WORKDIR and COPY destination resolution, and
//! the ENTRYPOINT/CMD rules in [`ImageConfig::command`].
//!
//! Every input is bounded: the text ([`MAX_DOCKERFILE_BYTES`]), a line
//! ([`MAX_LINE_BYTES`]), the instructions ([`MAX_INSTRUCTIONS`]), a value
//! after substitution ([`MAX_EXPANDED_WORD`]), the environment
//! ([`MAX_ENVIRONMENT_BYTES`]), labels and build args.

mod build_plan;
mod config;
mod error;
mod parse;
mod paths;
mod plan;
mod scope;
mod source;
mod stages;
mod syntax;
mod values;
mod words;

use std::collections::BTreeMap;

pub use build_plan::{BaseRef, BuildPlan, Stage, Step, StepKind, MANAGED_BASE_IMAGES};
pub use config::{default_shell, ImageConfig};
pub use error::DockerfileError;
pub use parse::parse;
pub use plan::{MAX_BUILD_ARGS, MAX_ENVIRONMENT_BYTES, MAX_LABEL_BYTES};
pub use source::{MAX_DOCKERFILE_BYTES, MAX_INSTRUCTIONS, MAX_LINE_BYTES, MAX_STAGES};
pub use syntax::{
    ArgDeclaration, CommandForm, CopyInstruction, Dockerfile, FromInstruction, Instruction,
    InstructionKind, KeyValue,
};
pub use words::MAX_EXPANDED_WORD;

/// Parses `text` and plans its build with `build_args` (the `--build-arg`
/// values; they override the defaults of the ARGs that declare them).
pub fn plan(
    text: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<BuildPlan, DockerfileError> {
    parse(text)?.plan(build_args)
}

/// [`plan`], with the configurations of the registry images the stages
/// start from (see [`Dockerfile::plan_with_bases`]).
pub fn plan_with_bases(
    text: &str,
    build_args: &BTreeMap<String, String>,
    bases: &BTreeMap<String, ImageConfig>,
) -> Result<BuildPlan, DockerfileError> {
    parse(text)?.plan_with_bases(build_args, bases)
}
