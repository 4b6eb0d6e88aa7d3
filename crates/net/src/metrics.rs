//! Per-interface counters under the names of the contract's `net` metric keys (§10.2).
//!
//! They only ever grow; the metrics writer keeps the previous values and reports deltas, as
//! Firecracker's "Inc" counters do. Keys with no counterpart in squib's device exist so the
//! writer can emit every key, and stay at zero: `cfg_fails` (QEMU owns the config space),
//! `tap_write_agg` and `tx_remaining_reqs_count` (squib writes one frame per `write`).

use std::sync::atomic::{AtomicU64, Ordering};

squib_vhost::counters! {
    /// Counters of one network interface; field names are the metric keys, in the contract's
    /// order.
    pub struct NetMetrics {
    activate_fails,
    cfg_fails,
    no_rx_avail_buffer,
    no_tx_avail_buffer,
    event_fails,
    rx_queue_event_count,
    rx_event_rate_limiter_count,
    rx_rate_limiter_throttled,
    rx_tap_event_count,
    rx_bytes_count,
    rx_packets_count,
    rx_fails,
    rx_count,
    tap_read_fails,
    tap_write_fails,
    tap_write_agg,
    tx_bytes_count,
    tx_malformed_frames,
    tx_fails,
    tx_count,
    tx_packets_count,
    tx_queue_event_count,
    tx_rate_limiter_event_count,
    tx_rate_limiter_throttled,
    tx_spoofed_mac_count,
    tx_remaining_reqs_count
    }
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lists_every_key_in_order() {
        let m = NetMetrics::default();
        inc(&m.rx_count);
        add(&m.tx_bytes_count, 42);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 26);
        assert_eq!(snap[0], ("activate_fails", 0));
        assert_eq!(snap[12], ("rx_count", 1));
        assert_eq!(snap[16], ("tx_bytes_count", 42));
        assert_eq!(snap[25].0, "tx_remaining_reqs_count");
    }
}
