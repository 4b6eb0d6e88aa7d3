//! `/entropy`: the virtio-rng device.

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterConfig;

/// Body of `PUT /entropy`, and its read-back shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDeviceConfig {
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyDeviceConfig {
    pub fn to_config(self) -> Self {
        Self {
            rate_limiter: self.rate_limiter.and_then(RateLimiterConfig::normalized),
        }
    }
}
