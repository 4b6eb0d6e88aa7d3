//! Counters whose field names are the metric keys: a misspelled key is a missing field, so it
//! does not compile.

use std::sync::atomic::{AtomicU64, Ordering};

/// One value of a metrics section: a counter (`inc`, `add`) or a stored value (`set`); which
/// of the two a key is decides how the line reports it (see [`crate::Kind`]).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Device code on hot paths counts with the atomic itself (`fetch_add`, or a helper taking
/// `&AtomicU64`); a `Counter` is one.
impl std::ops::Deref for Counter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Declares a struct of [`Counter`]s whose field names are the metric keys, with `KEYS` (the
/// keys in declaration order, which is the order of the metrics line), `snapshot()` (every
/// key and value, in that order: what the registry takes as a
/// [`CounterSource`](crate::CounterSource)), `inc` and `add`.
///
/// ```
/// squib_metrics::counters! {
///     /// The example section.
///     pub struct ExampleMetrics { rx_bytes_count, tx_bytes_count }
/// }
/// let m = ExampleMetrics::default();
/// m.add(&m.rx_bytes_count, 5);
/// m.tx_bytes_count.inc();
/// assert_eq!(m.snapshot(), vec![("rx_bytes_count", 5), ("tx_bytes_count", 1)]);
/// assert_eq!(ExampleMetrics::KEYS, ["rx_bytes_count", "tx_bytes_count"]);
/// ```
#[macro_export]
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($key:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $(
                #[doc = concat!("`", stringify!($key), "`")]
                pub $key: $crate::Counter,
            )*
        }

        impl $name {
            /// The keys, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// Every key with its current value, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($key), self.$key.get())),*]
            }

            /// Adds one to `counter`.
            pub fn inc(&self, counter: &$crate::Counter) {
                counter.inc();
            }

            /// Adds `n` to `counter`.
            pub fn add(&self, counter: &$crate::Counter, n: u64) {
                counter.add(n);
            }
        }
    };
}
