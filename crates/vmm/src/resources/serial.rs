//! `/serial`: where the guest's serial output goes. Nothing is checked until boot.

use serde::{Deserialize, Serialize};

use super::rate_limiter::TokenBucketConfig;

/// Body of `PUT /serial`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default, deserialize_with = "super::path_string::optional")]
    pub serial_out_path: Option<String>,
    pub rate_limiter: Option<TokenBucketConfig>,
}
