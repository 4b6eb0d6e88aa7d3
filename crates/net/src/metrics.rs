//! Per-interface counters under the names of the contract's `net` metric keys (§10.2).
//!
//! They only ever grow; the metrics writer keeps the previous values and reports deltas, as
//! Firecracker's "Inc" counters do. Keys with no counterpart in squib's device exist so the
//! writer can emit every key, and stay at zero: `cfg_fails` (QEMU owns the config space),
//! `tap_write_agg` and `tx_remaining_reqs_count` (squib writes one frame per `write`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one network interface; field names are the metric keys, in the contract's
/// order (one home: the metrics crate's `net` section).
pub use squib_metrics::schema::Net as NetMetrics;

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
