//! One module per configurable resource: its serde shape (the wire format), its error enum
//! (whose display texts are the client-visible messages) and its validated form.

pub mod boot_source;
pub mod drive;
pub mod machine_config;
pub mod rate_limiter;
