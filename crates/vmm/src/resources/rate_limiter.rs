//! Firecracker's rate-limiter objects: two optional token buckets (bandwidth, ops).

use serde::{Deserialize, Serialize};

/// One token bucket. Unlike most bodies, upstream accepts unknown fields here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    pub size: u64,
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// A bucket with a zero size or refill time limits nothing.
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    /// The read-back form: `one_time_burst` 0 is shown as absent.
    fn normalized(self) -> Option<Self> {
        self.is_enabled().then_some(Self {
            one_time_burst: self.one_time_burst.filter(|&b| b != 0),
            ..self
        })
    }
}

/// A rate limiter as clients send it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    pub bandwidth: Option<TokenBucketConfig>,
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// The read-back form: disabled buckets vanish, and a limiter with no bucket is `None`
    /// (serialized as `null`), as upstream shows it.
    pub(crate) fn normalized(self) -> Option<Self> {
        let out = Self {
            bandwidth: self.bandwidth.and_then(TokenBucketConfig::normalized),
            ops: self.ops.and_then(TokenBucketConfig::normalized),
        };
        (out.bandwidth.is_some() || out.ops.is_some()).then_some(out)
    }
}

impl RateLimiterConfig {
    /// A PATCHed limiter over the current one: absent parts keep their current value.
    pub(crate) fn merged(current: Option<Self>, update: Option<Self>) -> Option<Self> {
        match (current, update) {
            (current, None) => current,
            (None, Some(update)) => Some(update),
            (Some(current), Some(update)) => Some(Self {
                bandwidth: update.bandwidth.or(current.bandwidth),
                ops: update.ops.or(current.ops),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_accepts_unknown_fields_limiter_does_not() {
        let bucket: TokenBucketConfig =
            serde_json::from_str(r#"{"size":1,"refill_time":2,"extra":3}"#).unwrap();
        assert_eq!(bucket.size, 1);
        let err = serde_json::from_str::<RateLimiterConfig>(r#"{"x":1}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown field `x`, expected `bandwidth` or `ops`")
        );
    }

    #[test]
    fn read_back_drops_disabled_parts() {
        let empty: RateLimiterConfig =
            serde_json::from_str(r#"{"bandwidth":{"size":0,"refill_time":100}}"#).unwrap();
        assert_eq!(empty.normalized(), None);
        let some: RateLimiterConfig =
            serde_json::from_str(r#"{"ops":{"size":10,"refill_time":100,"one_time_burst":0}}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&some.normalized()).unwrap(),
            r#"{"bandwidth":null,"ops":{"size":10,"one_time_burst":null,"refill_time":100}}"#
        );
    }
}
