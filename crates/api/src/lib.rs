//! Firecracker's REST API for squib: an HTTP/1.1 server on a Unix socket that parses requests
//! exactly as upstream does, sends mutating ones to the VMM loop as actions, and answers GETs
//! from the loop's published snapshot. It also replays `--config-file` through the same path.
#![forbid(unsafe_code)]

pub mod config_file;
pub mod controller;
pub mod endpoints;
pub mod request_error;
pub mod request_metrics;
pub mod response;
pub mod routing;
pub mod server;

pub use controller::{Controller, DEFAULT_ACTION_TIMEOUT};
pub use server::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PAYLOAD, ServerLimits, bind, serve, serve_limited,
};
