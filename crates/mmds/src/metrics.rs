//! MMDS counters under the names of the contract's `mmds` metric keys (§10.2).
//!
//! Monotonic; the metrics writer reports deltas. One set per microVM, shared by the stacks of
//! every MMDS-bound interface, as upstream's are global.

use std::sync::atomic::{AtomicU64, Ordering};

/// MMDS counters; field names are the metric keys (one home: the metrics crate's `mmds`
/// section).
pub use squib_metrics::schema::Mmds as MmdsMetrics;

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
