//! The `ember` CLI's reusable part: a SigV4-signing client for emberd's
//! API (the benchmarks drive emberd through it too).

pub mod api_client;
pub mod microvm_api;
