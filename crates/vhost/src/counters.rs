//! Device counters: atomics the backend threads bump and the metrics flush reads.

/// Declares a struct of `AtomicU64` counters whose field names are the metric keys, with
/// `snapshot()` (every key and value, in declaration order: what squib's metrics registry
/// takes as a `CounterSource`), `inc` and `add`.
///
/// ```
/// squib_vhost::counters! {
///     /// The example section.
///     pub struct ExampleMetrics { rx_bytes_count, tx_bytes_count }
/// }
/// let m = ExampleMetrics::default();
/// m.add(&m.rx_bytes_count, 5);
/// m.inc(&m.tx_bytes_count);
/// assert_eq!(m.snapshot(), vec![("rx_bytes_count", 5), ("tx_bytes_count", 1)]);
/// ```
#[macro_export]
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($key:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $(
                #[doc = concat!("`", stringify!($key), "`")]
                pub $key: $crate::__private::AtomicU64,
            )*
        }

        impl $name {
            /// Every key with its current value, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($key), self.$key.load($crate::__private::Ordering::Relaxed))),*]
            }

            /// Adds one to `counter`.
            pub fn inc(&self, counter: &$crate::__private::AtomicU64) {
                counter.fetch_add(1, $crate::__private::Ordering::Relaxed);
            }

            /// Adds `n` to `counter`.
            pub fn add(&self, counter: &$crate::__private::AtomicU64, n: u64) {
                counter.fetch_add(n, $crate::__private::Ordering::Relaxed);
            }
        }
    };
}
