//! The Dockerfile parser and planner's integration tests, in one test binary.

mod plan;
mod realistic;
mod registry;
mod stages;
mod substitution;
mod syntax;
