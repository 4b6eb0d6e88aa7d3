//! MMDS counters under the names of the contract's `mmds` metric keys (§10.2).
//!
//! Monotonic; the metrics writer reports deltas. One set per microVM, shared by the stacks of
//! every MMDS-bound interface, as upstream's are global.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! mmds_metrics {
    ($($key:ident),* $(,)?) => {
        /// MMDS counters; field names are the metric keys.
        #[derive(Debug, Default)]
        pub struct MmdsMetrics {
            $(
                #[doc = concat!("`", stringify!($key), "`")]
                pub $key: AtomicU64,
            )*
        }

        impl MmdsMetrics {
            /// Every key with its current value, in the contract's order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($key), self.$key.load(Ordering::Relaxed))),*]
            }
        }
    };
}

mmds_metrics!(
    rx_accepted,
    rx_accepted_err,
    rx_accepted_unusual,
    rx_bad_eth,
    rx_invalid_token,
    rx_no_token,
    rx_count,
    tx_bytes,
    tx_count,
    tx_errors,
    tx_frames,
    connections_created,
    connections_destroyed,
);

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
