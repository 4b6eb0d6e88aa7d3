//! One module per configurable resource: its serde shape (the wire format), its error enum
//! (whose display texts are the client-visible messages) and its validated form.

pub mod balloon;
pub mod boot_source;
pub mod cpu_config;
pub mod drive;
pub mod entropy;
pub mod logger;
pub mod machine_config;
pub mod memory_hotplug;
pub mod metrics;
pub mod mmds;
pub mod net;
mod path_string;
pub mod pmem;
pub mod rate_limiter;
pub mod serial;
pub mod snapshot;
pub mod vsock;
