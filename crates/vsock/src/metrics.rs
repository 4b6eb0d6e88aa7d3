//! The `vsock` metrics section, with upstream's keys. Keys for events squib's backend has no
//! counterpart of (the event queue belongs to QEMU) stay 0.

/// Counters of the vsock device; field names are upstream's `vsock` metric keys (one home: the
/// metrics crate's `vsock` section).
pub use squib_metrics::schema::Vsock as VsockMetrics;
