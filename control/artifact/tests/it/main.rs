//! Artifact fetching against real HTTP servers, in one test binary. `env_proxy`
//! stays a binary of its own: it sets proxy variables for its whole process.

mod common;

mod address_guard;
mod context;
mod dir_http_fetch;
mod zip_fetch;
