//! `/serial`: where the guest's serial output goes. Nothing is checked until boot.

use serde::{Deserialize, Serialize};

use super::rate_limiter::TokenBucketConfig;

/// Body of `PUT /serial`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "wire::SerialConfig")]
pub struct SerialConfig {
    pub serial_out_path: Option<String>,
    pub rate_limiter: Option<TokenBucketConfig>,
}

mod wire {
    use serde::Deserialize;

    use super::super::path_string::PathString;
    use super::TokenBucketConfig;

    /// Upstream's shape and name, which serde spells in its errors (`invalid length 0,
    /// expected struct SerialConfig with 2 elements` for `[]`).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct SerialConfig {
        serial_out_path: Option<PathString>,
        rate_limiter: Option<TokenBucketConfig>,
    }

    impl From<SerialConfig> for super::SerialConfig {
        fn from(w: SerialConfig) -> Self {
            Self {
                serial_out_path: w.serial_out_path.map(|p| p.0),
                rate_limiter: w.rate_limiter,
            }
        }
    }
}

/// Opens the serial output as upstream does before anything else at `InstanceStart`
/// (created if absent, read-write, non-blocking, so even a FIFO without a reader opens),
/// then closes it: squib's relay opens it again to write.
pub(crate) fn open_as_upstream(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .create(true)
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
}
