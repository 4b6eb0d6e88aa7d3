//! The `vsock` metrics section, with upstream's keys.

squib_vhost::counters! {
    /// Counters of the vsock device; field names are upstream's `vsock` metric keys. Keys for
    /// events squib's backend has no counterpart of (the event queue belongs to QEMU) stay 0.
    pub struct VsockMetrics {
        activate_fails,
        cfg_fails,
        rx_queue_event_fails,
        tx_queue_event_fails,
        ev_queue_event_fails,
        muxer_event_fails,
        conn_event_fails,
        rx_queue_event_count,
        tx_queue_event_count,
        rx_bytes_count,
        tx_bytes_count,
        rx_packets_count,
        tx_packets_count,
        conns_added,
        conns_killed,
        conns_removed,
        killq_resync,
        tx_flush_fails,
        tx_write_fails,
        rx_read_fails,
    }
}
