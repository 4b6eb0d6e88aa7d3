//! Firecracker's drive rate limiter as QEMU block throttling (`block_set_io_throttle`).
//!
//! A Firecracker token bucket `{size, refill_time, one_time_burst}` holds at most `size`
//! tokens (bytes or operations), refilled at `size` per `refill_time` ms, plus a one-time
//! credit of `one_time_burst` tokens. QEMU's throttling is a leaky bucket per limit:
//! - the sustained rate is `size * 1000 / refill_time` per second (`bps`/`iops`, total of
//!   reads and writes, as Firecracker counts both), rounded down, at least 1;
//! - the burst is `bps_max`/`iops_max` for `*_max_length` = 1 s, i.e. a bucket of
//!   `size + one_time_burst` tokens, set when that exceeds one second of the sustained rate
//!   (QEMU requires `max ≥ rate`); otherwise QEMU's own burst of a tenth of the rate applies,
//!   which is Firecracker's `size` exactly when `refill_time` is 100 ms.
//!
//! Differences: QEMU's burst allowance refills (at the sustained rate) where Firecracker's
//! `one_time_burst` is spent once; QEMU's burst length is whole seconds.

use serde_json::{Value, json};
use squib_vmm::resources::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// QEMU refuses limits above 10^15.
const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// (sustained rate per second, burst bucket) of an enabled bucket.
fn rates(bucket: &TokenBucketConfig) -> Option<(u64, Option<u64>)> {
    if !bucket.is_enabled() {
        return None;
    }
    let rate = (u128::from(bucket.size) * 1000 / u128::from(bucket.refill_time))
        .clamp(1, u128::from(THROTTLE_VALUE_MAX)) as u64;
    let burst = bucket
        .size
        .saturating_add(bucket.one_time_burst.unwrap_or(0))
        .min(THROTTLE_VALUE_MAX);
    Some((rate, (burst > rate).then_some(burst)))
}

/// The arguments of `block_set_io_throttle` for the virtio-blk device `device`; no limiter
/// (or only disabled buckets) lifts every limit.
pub(crate) fn throttle_args(device: &str, limiter: Option<&RateLimiterConfig>) -> Value {
    let mut args = json!({
        "id": device,
        "bps": 0, "bps_rd": 0, "bps_wr": 0,
        "iops": 0, "iops_rd": 0, "iops_wr": 0,
    });
    let Some(limiter) = limiter else {
        return args;
    };
    for (bucket, name) in [(&limiter.bandwidth, "bps"), (&limiter.ops, "iops")] {
        if let Some((rate, burst)) = bucket.as_ref().and_then(rates) {
            args[name] = json!(rate);
            if let Some(burst) = burst {
                args[format!("{name}_max")] = json!(burst);
                args[format!("{name}_max_length")] = json!(1);
            }
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(json: &str) -> RateLimiterConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn no_limiter_lifts_every_limit() {
        assert_eq!(
            throttle_args("blk_data", None),
            json!({"id":"blk_data","bps":0,"bps_rd":0,"bps_wr":0,"iops":0,"iops_rd":0,"iops_wr":0})
        );
        let disabled = limiter(r#"{"bandwidth":{"size":0,"refill_time":100}}"#);
        assert_eq!(throttle_args("b", Some(&disabled))["bps"], 0);
    }

    #[test]
    fn rate_is_size_per_refill_time_and_burst_is_size_plus_one_time_burst() {
        let l = limiter(
            r#"{"bandwidth":{"size":1048576,"refill_time":1000,"one_time_burst":4194304},
                "ops":{"size":100,"refill_time":100}}"#,
        );
        assert_eq!(
            throttle_args("blk_data", Some(&l)),
            json!({"id":"blk_data","bps":1048576,"bps_rd":0,"bps_wr":0,
                   "bps_max":5242880,"bps_max_length":1,
                   "iops":1000,"iops_rd":0,"iops_wr":0})
        );
        // A two-second refill: half the size per second, the size as the burst.
        let slow = limiter(r#"{"bandwidth":{"size":2000,"refill_time":2000}}"#);
        let a = throttle_args("b", Some(&slow));
        assert_eq!(
            (a["bps"].as_u64(), a["bps_max"].as_u64()),
            (Some(1000), Some(2000))
        );
    }

    #[test]
    fn extreme_values_stay_in_qemu_range() {
        let l = limiter(r#"{"bandwidth":{"size":18446744073709551615,"refill_time":1}}"#);
        assert_eq!(throttle_args("b", Some(&l))["bps"], THROTTLE_VALUE_MAX);
        let tiny = limiter(r#"{"ops":{"size":1,"refill_time":18446744073709551615}}"#);
        let a = throttle_args("b", Some(&tiny));
        assert_eq!(a["iops"], 1);
        assert!(a.get("iops_max").is_none());
    }
}
