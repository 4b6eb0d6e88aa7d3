//! squib-mmds: the guest-facing MMDS (docs/api-contract.md §8): session tokens, V1/V2 access,
//! IMDS/JSON answers, served over a real TCP/IP stack (smoltcp) at 169.254.169.254:80.
//! The VMM owns the data and publishes it into an [`MmdsData`]; the net device feeds frames in.

pub mod http;
pub mod metrics;
pub mod responder;
pub mod stack;
pub mod token;

pub use metrics::MmdsMetrics;
pub use responder::{DEFAULT_IPV4, Mmds, MmdsConfig, MmdsData, MmdsVersion, new_data_handle};

pub use stack::{MMDS_MAC, MmdsStack, ServiceEnds, StackError, claims_frame, spawn_stack};
