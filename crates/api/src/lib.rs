//! Firecracker's REST API for squib: an HTTP/1.1 server on a Unix socket that parses requests
//! exactly as upstream does, sends mutating ones to the VMM loop as actions, and answers GETs
//! from the loop's published snapshot. It also replays `--config-file` through the same path.
//!
//! One request: `server` (HTTP-layer rules) → `routing` (the route table: parser and request
//! counter) → `endpoints::<resource>` (body and id → [`ParsedRequest`]) → `controller` (to the
//! VMM loop, or a snapshot read) → `response` (upstream's bytes).
#![forbid(unsafe_code)]

pub mod config_file;
mod controller;
mod endpoints;
mod request;
mod response;
mod routing;
mod server;

pub use controller::{Controller, DEFAULT_ACTION_TIMEOUT, DispatchError};
pub use endpoints::reads::GetRequest;
pub use request::{ParsedRequest, RequestError};
pub use routing::parse_request;
pub use server::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PAYLOAD, ServerLimits, bind, serve, serve_limited,
};
