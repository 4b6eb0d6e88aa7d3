//! The shape of a metrics line (contract §10.2): top-level sections in upstream's order and
//! every sub-key of each, in upstream's order. Each section is a struct of counters whose
//! field names are its keys.

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
    Fixed(Fixed),
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

crate::counters! {
    /// `api_server`.
    pub struct ApiServer {
        process_startup_time_us,
        process_startup_time_cpu_us,
    }
}

crate::counters! {
    /// `balloon`.
    pub struct Balloon {
        activate_fails,
        inflate_count,
        stats_updates_count,
        stats_update_fails,
        deflate_count,
        event_fails,
        free_page_report_count,
        free_page_report_freed,
        free_page_report_fails,
        free_page_hint_count,
        free_page_hint_freed,
        free_page_hint_fails,
    }
}

crate::counters! {
    /// `block`.
    pub struct Block {
        activate_fails,
        cfg_fails,
        no_avail_buffer,
        event_fails,
        execute_fails,
        invalid_reqs_count,
        flush_count,
        queue_event_count,
        rate_limiter_event_count,
        update_count,
        update_fails,
        read_bytes,
        write_bytes,
        read_count,
        write_count,
        read_agg,
        write_agg,
        rate_limiter_throttled_events,
        io_engine_throttled_events,
        remaining_reqs_count,
    }
}

crate::counters! {
    /// `deprecated_api`.
    pub struct DeprecatedApi {
        deprecated_http_api_calls,
    }
}

crate::counters! {
    /// `get_api_requests`.
    pub struct GetApiRequests {
        instance_info_count,
        machine_cfg_count,
        mmds_count,
        vmm_version_count,
        hotplug_memory_count,
    }
}

crate::counters! {
    /// `i8042`.
    pub struct I8042 {
        error_count,
        missed_read_count,
        missed_write_count,
        read_count,
        reset_count,
        write_count,
    }
}

crate::counters! {
    /// `uart`.
    pub struct Uart {
        error_count,
        flush_count,
        missed_read_count,
        missed_write_count,
        read_count,
        write_count,
        rate_limiter_dropped_bytes,
    }
}

crate::counters! {
    /// `latencies_us`.
    pub struct LatenciesUs {
        full_create_snapshot,
        diff_create_snapshot,
        load_snapshot,
        pause_vm,
        resume_vm,
        vmm_full_create_snapshot,
        vmm_diff_create_snapshot,
        vmm_load_snapshot,
        vmm_pause_vm,
        vmm_resume_vm,
    }
}

crate::counters! {
    /// `logger`.
    pub struct Logger {
        missed_metrics_count,
        metrics_fails,
        missed_log_count,
        rate_limited_log_count,
    }
}

crate::counters! {
    /// `mmds`.
    pub struct Mmds {
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
    }
}

crate::counters! {
    /// `net`.
    pub struct Net {
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
        tx_remaining_reqs_count,
    }
}

crate::counters! {
    /// `patch_api_requests`.
    pub struct PatchApiRequests {
        drive_count,
        drive_fails,
        network_count,
        network_fails,
        machine_cfg_count,
        machine_cfg_fails,
        mmds_count,
        mmds_fails,
        hotplug_memory_count,
        hotplug_memory_fails,
        pmem_count,
        pmem_fails,
    }
}

crate::counters! {
    /// `put_api_requests`.
    pub struct PutApiRequests {
        actions_count,
        actions_fails,
        boot_source_count,
        boot_source_fails,
        drive_count,
        drive_fails,
        logger_count,
        logger_fails,
        machine_cfg_count,
        machine_cfg_fails,
        cpu_cfg_count,
        cpu_cfg_fails,
        metrics_count,
        metrics_fails,
        network_count,
        network_fails,
        mmds_count,
        mmds_fails,
        vsock_count,
        vsock_fails,
        pmem_count,
        pmem_fails,
        serial_count,
        serial_fails,
        hotplug_memory_count,
        hotplug_memory_fails,
    }
}

crate::counters! {
    /// `seccomp`.
    pub struct Seccomp {
        num_faults,
    }
}

crate::counters! {
    /// `vcpu`.
    pub struct Vcpu {
        exit_io_in,
        exit_io_out,
        exit_mmio_read,
        exit_mmio_write,
        failures,
        kvmclock_ctrl_fails,
        exit_io_in_agg,
        exit_io_out_agg,
        exit_mmio_read_agg,
        exit_mmio_write_agg,
    }
}

crate::counters! {
    /// `vmm`.
    pub struct Vmm {
        panic_count,
    }
}

crate::counters! {
    /// `signals`.
    pub struct Signals {
        sigbus,
        sigsegv,
        sigxfsz,
        sigxcpu,
        sigpipe,
        sighup,
        sigill,
    }
}

crate::counters! {
    /// `vsock`.
    pub struct Vsock {
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

crate::counters! {
    /// `entropy`.
    pub struct Entropy {
        activate_fails,
        entropy_event_fails,
        entropy_event_count,
        entropy_bytes,
        host_rng_fails,
        entropy_rate_limiter_throttled,
        rate_limiter_event_count,
    }
}

crate::counters! {
    /// `pmem`.
    pub struct Pmem {
        activate_fails,
        cfg_fails,
        event_fails,
        queue_event_count,
        rate_limiter_throttled_events,
        rate_limiter_event_count,
    }
}

crate::counters! {
    /// `vhost_user`.
    pub struct VhostUser {
        activate_fails,
        cfg_fails,
        init_time_us,
        activate_time_us,
        config_change_time_us,
    }
}

crate::counters! {
    /// `interrupts`.
    pub struct Interrupts {
        triggers,
        config_updates,
    }
}

crate::counters! {
    /// `memory_hotplug`.
    pub struct MemoryHotplug {
        activate_fails,
        queue_event_fails,
        queue_event_count,
        plug_agg,
        plug_count,
        plug_bytes,
        plug_fails,
        unplug_agg,
        unplug_count,
        unplug_bytes,
        unplug_fails,
        unplug_discard_fails,
        unplug_all_agg,
        unplug_all_count,
        unplug_all_fails,
        state_agg,
        state_count,
        state_fails,
    }
}

/// Declares the fixed sections once: the [`Fixed`] names, and [`Values`], the registry's own
/// counters of each (a section may instead be reported by a source, see
/// [`MetricsRegistry::set_section_source`](crate::MetricsRegistry::set_section_source)).
macro_rules! fixed_sections {
    ($($section:ident $field:ident),* $(,)?) => {
        /// A top-level section under a fixed key.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Fixed {
            $($section),*
        }

        impl Fixed {
            /// The section's key in the line.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$section => stringify!($field)),*
                }
            }

            /// The section's sub-keys, in the line's order.
            pub fn keys(self) -> &'static [&'static str] {
                match self {
                    $(Self::$section => $section::KEYS),*
                }
            }
        }

        /// The registry's counters, one field per fixed section.
        #[derive(Debug, Default)]
        pub struct Values {
            $(pub $field: $section),*
        }

        impl Values {
            /// A section's keys and values, in the line's order.
            pub fn snapshot(&self, section: Fixed) -> Vec<(&'static str, u64)> {
                match section {
                    $(Fixed::$section => self.$field.snapshot()),*
                }
            }
        }
    };
}

fixed_sections! {
    ApiServer api_server,
    Balloon balloon,
    DeprecatedApi deprecated_api,
    GetApiRequests get_api_requests,
    I8042 i8042,
    Uart uart,
    LatenciesUs latencies_us,
    Logger logger,
    Mmds mmds,
    PatchApiRequests patch_api_requests,
    PutApiRequests put_api_requests,
    Seccomp seccomp,
    Vcpu vcpu,
    Vmm vmm,
    Signals signals,
    Vsock vsock,
    Entropy entropy,
    Interrupts interrupts,
    MemoryHotplug memory_hotplug,
}

/// Everything after `utc_timestamp_ms`, `id` and `properties`, in upstream's order (x86_64:
/// no `rtc`).
pub const SECTIONS: &[Section] = &[
    Section::Fixed(Fixed::ApiServer),
    Section::Fixed(Fixed::Balloon),
    Section::PerDevice {
        class: DeviceClass::Block,
        fields: Block::KEYS,
        aggregate: true,
    },
    Section::Fixed(Fixed::DeprecatedApi),
    Section::Fixed(Fixed::GetApiRequests),
    Section::Fixed(Fixed::I8042),
    Section::Fixed(Fixed::Uart),
    Section::Fixed(Fixed::LatenciesUs),
    Section::Fixed(Fixed::Logger),
    Section::Fixed(Fixed::Mmds),
    Section::PerDevice {
        class: DeviceClass::Net,
        fields: Net::KEYS,
        aggregate: true,
    },
    Section::Fixed(Fixed::PatchApiRequests),
    Section::Fixed(Fixed::PutApiRequests),
    Section::Fixed(Fixed::Seccomp),
    Section::Fixed(Fixed::Vcpu),
    Section::Fixed(Fixed::Vmm),
    Section::Fixed(Fixed::Signals),
    Section::Fixed(Fixed::Vsock),
    Section::Fixed(Fixed::Entropy),
    Section::PerDevice {
        class: DeviceClass::Pmem,
        fields: Pmem::KEYS,
        aggregate: true,
    },
    Section::PerDevice {
        class: DeviceClass::VhostUserBlock,
        fields: VhostUser::KEYS,
        aggregate: false,
    },
    Section::Fixed(Fixed::Interrupts),
    Section::Fixed(Fixed::MemoryHotplug),
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
            Section::Fixed(section) => keys.push(section.name().to_string()),
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
