//! The API crate's integration tests (HTTP and boto3 against a real server), in one test binary.

mod common;

mod boto3;
mod http;
