//! The shape of a metrics line (docs/api-contract.md §10.2): top-level sections in upstream's order and
//! every sub-key of each, in upstream's order.

/// How a value is reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// A counter: the line carries the delta since the previous line.
    #[default]
    Inc,
    /// A stored value: the line carries it as is.
    Store,
    /// A latency aggregate `{min_us,max_us,sum_us}`: min and max stored, sum a counter.
    Agg,
}

/// A top-level section of the line.
#[derive(Clone, Copy, Debug)]
pub enum Section {
    /// One object under a fixed key.
    Fixed(&'static str, &'static [&'static str]),
    /// `⟨prefix⟩_⟨id⟩` per device (sorted by id), then the aggregate under `⟨prefix⟩` when
    /// `aggregate` is set.
    PerDevice {
        class: DeviceClass,
        fields: &'static [&'static str],
        aggregate: bool,
    },
}

/// Device classes reported per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceClass {
    Block,
    Net,
    Pmem,
    VhostUserBlock,
}

impl DeviceClass {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Net => "net",
            Self::Pmem => "pmem",
            Self::VhostUserBlock => "vhost_user_block",
        }
    }
}

/// How `field` of section `group` is reported.
pub fn kind(group: &str, field: &str) -> Kind {
    if field.ends_with("_agg") {
        return Kind::Agg;
    }
    match group {
        "api_server" | "latencies_us" | "seccomp" | "vmm" => Kind::Store,
        "signals" if field != "sigpipe" => Kind::Store,
        g if g.starts_with("vhost_user") && field.ends_with("_us") => Kind::Store,
        _ => Kind::Inc,
    }
}

pub const API_SERVER: &[&str] = &["process_startup_time_us", "process_startup_time_cpu_us"];

pub const BALLOON: &[&str] = &[
    "activate_fails",
    "inflate_count",
    "stats_updates_count",
    "stats_update_fails",
    "deflate_count",
    "event_fails",
    "free_page_report_count",
    "free_page_report_freed",
    "free_page_report_fails",
    "free_page_hint_count",
    "free_page_hint_freed",
    "free_page_hint_fails",
];

pub const BLOCK: &[&str] = &[
    "activate_fails",
    "cfg_fails",
    "no_avail_buffer",
    "event_fails",
    "execute_fails",
    "invalid_reqs_count",
    "flush_count",
    "queue_event_count",
    "rate_limiter_event_count",
    "update_count",
    "update_fails",
    "read_bytes",
    "write_bytes",
    "read_count",
    "write_count",
    "read_agg",
    "write_agg",
    "rate_limiter_throttled_events",
    "io_engine_throttled_events",
    "remaining_reqs_count",
];

pub const DEPRECATED_API: &[&str] = &["deprecated_http_api_calls"];

pub const GET_API_REQUESTS: &[&str] = &[
    "instance_info_count",
    "machine_cfg_count",
    "mmds_count",
    "vmm_version_count",
    "hotplug_memory_count",
];

pub const I8042: &[&str] = &[
    "error_count",
    "missed_read_count",
    "missed_write_count",
    "read_count",
    "reset_count",
    "write_count",
];

pub const UART: &[&str] = &[
    "error_count",
    "flush_count",
    "missed_read_count",
    "missed_write_count",
    "read_count",
    "write_count",
    "rate_limiter_dropped_bytes",
];

pub const LATENCIES_US: &[&str] = &[
    "full_create_snapshot",
    "diff_create_snapshot",
    "load_snapshot",
    "pause_vm",
    "resume_vm",
    "vmm_full_create_snapshot",
    "vmm_diff_create_snapshot",
    "vmm_load_snapshot",
    "vmm_pause_vm",
    "vmm_resume_vm",
];

pub const LOGGER: &[&str] = &[
    "missed_metrics_count",
    "metrics_fails",
    "missed_log_count",
    "rate_limited_log_count",
];

pub const MMDS: &[&str] = &[
    "rx_accepted",
    "rx_accepted_err",
    "rx_accepted_unusual",
    "rx_bad_eth",
    "rx_invalid_token",
    "rx_no_token",
    "rx_count",
    "tx_bytes",
    "tx_count",
    "tx_errors",
    "tx_frames",
    "connections_created",
    "connections_destroyed",
];

pub const NET: &[&str] = &[
    "activate_fails",
    "cfg_fails",
    "no_rx_avail_buffer",
    "no_tx_avail_buffer",
    "event_fails",
    "rx_queue_event_count",
    "rx_event_rate_limiter_count",
    "rx_rate_limiter_throttled",
    "rx_tap_event_count",
    "rx_bytes_count",
    "rx_packets_count",
    "rx_fails",
    "rx_count",
    "tap_read_fails",
    "tap_write_fails",
    "tap_write_agg",
    "tx_bytes_count",
    "tx_malformed_frames",
    "tx_fails",
    "tx_count",
    "tx_packets_count",
    "tx_queue_event_count",
    "tx_rate_limiter_event_count",
    "tx_rate_limiter_throttled",
    "tx_spoofed_mac_count",
    "tx_remaining_reqs_count",
];

pub const PATCH_API_REQUESTS: &[&str] = &[
    "drive_count",
    "drive_fails",
    "network_count",
    "network_fails",
    "machine_cfg_count",
    "machine_cfg_fails",
    "mmds_count",
    "mmds_fails",
    "hotplug_memory_count",
    "hotplug_memory_fails",
    "pmem_count",
    "pmem_fails",
];

pub const PUT_API_REQUESTS: &[&str] = &[
    "actions_count",
    "actions_fails",
    "boot_source_count",
    "boot_source_fails",
    "drive_count",
    "drive_fails",
    "logger_count",
    "logger_fails",
    "machine_cfg_count",
    "machine_cfg_fails",
    "cpu_cfg_count",
    "cpu_cfg_fails",
    "metrics_count",
    "metrics_fails",
    "network_count",
    "network_fails",
    "mmds_count",
    "mmds_fails",
    "vsock_count",
    "vsock_fails",
    "pmem_count",
    "pmem_fails",
    "serial_count",
    "serial_fails",
    "hotplug_memory_count",
    "hotplug_memory_fails",
];

pub const SECCOMP: &[&str] = &["num_faults"];

pub const VCPU: &[&str] = &[
    "exit_io_in",
    "exit_io_out",
    "exit_mmio_read",
    "exit_mmio_write",
    "failures",
    "kvmclock_ctrl_fails",
    "exit_io_in_agg",
    "exit_io_out_agg",
    "exit_mmio_read_agg",
    "exit_mmio_write_agg",
];

pub const VMM: &[&str] = &["panic_count"];

pub const SIGNALS: &[&str] = &[
    "sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill",
];

pub const VSOCK: &[&str] = &[
    "activate_fails",
    "cfg_fails",
    "rx_queue_event_fails",
    "tx_queue_event_fails",
    "ev_queue_event_fails",
    "muxer_event_fails",
    "conn_event_fails",
    "rx_queue_event_count",
    "tx_queue_event_count",
    "rx_bytes_count",
    "tx_bytes_count",
    "rx_packets_count",
    "tx_packets_count",
    "conns_added",
    "conns_killed",
    "conns_removed",
    "killq_resync",
    "tx_flush_fails",
    "tx_write_fails",
    "rx_read_fails",
];

pub const ENTROPY: &[&str] = &[
    "activate_fails",
    "entropy_event_fails",
    "entropy_event_count",
    "entropy_bytes",
    "host_rng_fails",
    "entropy_rate_limiter_throttled",
    "rate_limiter_event_count",
];

pub const PMEM: &[&str] = &[
    "activate_fails",
    "cfg_fails",
    "event_fails",
    "queue_event_count",
    "rate_limiter_throttled_events",
    "rate_limiter_event_count",
];

pub const VHOST_USER: &[&str] = &[
    "activate_fails",
    "cfg_fails",
    "init_time_us",
    "activate_time_us",
    "config_change_time_us",
];

pub const INTERRUPTS: &[&str] = &["triggers", "config_updates"];

pub const MEMORY_HOTPLUG: &[&str] = &[
    "activate_fails",
    "queue_event_fails",
    "queue_event_count",
    "plug_agg",
    "plug_count",
    "plug_bytes",
    "plug_fails",
    "unplug_agg",
    "unplug_count",
    "unplug_bytes",
    "unplug_fails",
    "unplug_discard_fails",
    "unplug_all_agg",
    "unplug_all_count",
    "unplug_all_fails",
    "state_agg",
    "state_count",
    "state_fails",
];

/// Everything after `utc_timestamp_ms`, `id` and `properties`, in upstream's order (x86_64:
/// no `rtc`).
pub const SECTIONS: &[Section] = &[
    Section::Fixed("api_server", API_SERVER),
    Section::Fixed("balloon", BALLOON),
    Section::PerDevice {
        class: DeviceClass::Block,
        fields: BLOCK,
        aggregate: true,
    },
    Section::Fixed("deprecated_api", DEPRECATED_API),
    Section::Fixed("get_api_requests", GET_API_REQUESTS),
    Section::Fixed("i8042", I8042),
    Section::Fixed("uart", UART),
    Section::Fixed("latencies_us", LATENCIES_US),
    Section::Fixed("logger", LOGGER),
    Section::Fixed("mmds", MMDS),
    Section::PerDevice {
        class: DeviceClass::Net,
        fields: NET,
        aggregate: true,
    },
    Section::Fixed("patch_api_requests", PATCH_API_REQUESTS),
    Section::Fixed("put_api_requests", PUT_API_REQUESTS),
    Section::Fixed("seccomp", SECCOMP),
    Section::Fixed("vcpu", VCPU),
    Section::Fixed("vmm", VMM),
    Section::Fixed("signals", SIGNALS),
    Section::Fixed("vsock", VSOCK),
    Section::Fixed("entropy", ENTROPY),
    Section::PerDevice {
        class: DeviceClass::Pmem,
        fields: PMEM,
        aggregate: true,
    },
    Section::PerDevice {
        class: DeviceClass::VhostUserBlock,
        fields: VHOST_USER,
        aggregate: false,
    },
    Section::Fixed("interrupts", INTERRUPTS),
    Section::Fixed("memory_hotplug", MEMORY_HOTPLUG),
];

/// The top-level keys of a line with these devices, in order (for tests and docs).
pub fn top_level_keys(
    emit_id: bool,
    properties: bool,
    devices: &[(DeviceClass, &str)],
) -> Vec<String> {
    let mut keys = vec!["utc_timestamp_ms".to_string()];
    if emit_id {
        keys.push("id".into());
    }
    if properties {
        keys.push("properties".into());
    }
    for section in SECTIONS {
        match section {
            Section::Fixed(name, _) => keys.push((*name).to_string()),
            Section::PerDevice {
                class, aggregate, ..
            } => {
                let mut ids: Vec<&str> = devices
                    .iter()
                    .filter(|(c, _)| c == class)
                    .map(|(_, id)| *id)
                    .collect();
                ids.sort_unstable();
                keys.extend(ids.iter().map(|id| format!("{}_{id}", class.prefix())));
                if *aggregate {
                    keys.push(class.prefix().to_string());
                }
            }
        }
    }
    keys
}
