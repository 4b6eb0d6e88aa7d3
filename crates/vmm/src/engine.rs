//! The boundary between the VMM loop and whatever runs the guest (QEMU, or a fake in tests).

use std::future::Future;

use tokio::sync::oneshot;

use crate::action::DeviceKind;
use crate::resources::VmResources;
use crate::resources::balloon::BalloonStats;
use crate::resources::drive::Drive;
use crate::resources::net::NetworkInterface;
use crate::resources::pci::PciLayout;
use crate::resources::pmem::PmemConfig;
use crate::resources::rate_limiter::RateLimiterConfig;

/// An engine failure. The engine picks the variant and gives its own details; the texts
/// a client reads (upstream's, where upstream has one) are written here, in the VMM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The device an action names is not in the running guest.
    #[error("Failed perform action on device: Device not found")]
    DeviceNotFound,
    /// The VM has no boot source.
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernelConfig,
    /// The snapshot's memory file cannot back the restored guest.
    #[error("Failed to load guest memory: {0}")]
    LoadMemory(String),
    /// Writing the snapshot's memory file failed (upstream's `Cannot write memory file: …`,
    /// see [`RunningVm::save_snapshot`]).
    #[error("Cannot write memory file: {0}")]
    WriteMemory(String),
    /// The vsock device could not start.
    #[error("Cannot start the vsock device: {0}")]
    Vsock(String),
    /// A metrics line could not be written.
    #[error("Metrics error: {0}")]
    Metrics(String),
    /// Balloon statistics were asked for with statistics disabled.
    #[error("Balloon: Received stats query when stats are disabled.")]
    BalloonStatsDisabled,
    /// What this engine cannot do at all.
    #[error("this engine cannot {0}")]
    Unsupported(&'static str),
    /// Anything else, in the engine's own words (QEMU, QMP, the host).
    #[error("{0}")]
    Failed(String),
}

/// How a running guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off or rebooted: squib ends with exit code 0, like Firecracker.
    GuestShutdown,
    /// The engine died or misbehaved on its own.
    EngineFailed(String),
}

/// Resolves once the running guest has ended.
pub type ExitWatch = oneshot::Receiver<VmExit>;

/// Starts guests.
pub trait Engine: Send + 'static {
    type Vm: RunningVm;

    /// Boots a guest from validated resources; returns once its vCPUs run.
    fn start(
        &mut self,
        resources: &VmResources,
    ) -> impl Future<Output = Result<(Self::Vm, ExitWatch), EngineError>> + Send;

    /// Restores a guest saved by [`RunningVm::save_snapshot`]: `resources` rebuild the same
    /// device set, `source` gives the device state and the memory file (never modified).
    /// Returns with the guest paused.
    fn restore(
        &mut self,
        _resources: &VmResources,
        _source: RestoreSource<'_>,
    ) -> impl Future<Output = Result<(Self::Vm, ExitWatch), EngineError>> + Send {
        async { Err(EngineError::Unsupported("restore snapshots")) }
    }
}

/// What a snapshot restore starts from.
#[derive(Clone, Copy, Debug)]
pub struct RestoreSource<'a> {
    /// The engine's device state, as [`RunningVm::save_snapshot`] wrote it.
    pub device_state: &'a [u8],
    /// The guest memory file; the engine copies it and never writes to it.
    pub memory_file: &'a std::path::Path,
}

/// What the engine reports when a PCI machine has no free root port left; after `PCI manager
/// error: `, upstream's text for a full bus.
pub const NO_FREE_PCI_SLOT: &str =
    "PCI root error: Could not find an available device slot on the PCI bus.";

/// A device to plug into a running PCI guest, already validated (files and TAP open).
#[derive(Clone, Copy, Debug)]
pub enum HotplugDevice<'a> {
    Drive(&'a Drive),
    Net(&'a NetworkInterface),
    /// With its backing file's size, checked by the VMM.
    Pmem(&'a PmemConfig, u64),
}

/// Controls one running guest.
pub trait RunningVm: Send + 'static {
    fn pause(&mut self) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn resume(&mut self) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn send_ctrl_alt_del(&mut self) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// `PATCH /network-interfaces/{id}` on the running guest: applies the given limiters
    /// (`None` leaves that direction alone) to the interface `iface_id`.
    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<RateLimiterConfig>,
        tx: Option<RateLimiterConfig>,
    ) -> Result<(), EngineError>;
    /// `PATCH /drives/{id}` with `path_on_host`: serves the drive from `drive`'s (already
    /// opened and checked) file; the guest sees the new content and size.
    fn swap_drive(&mut self, drive: &Drive)
    -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Applies a drive's rate limiter (`None` lifts every limit).
    fn set_drive_rate_limiter(
        &mut self,
        drive_id: &str,
        limiter: Option<RateLimiterConfig>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// `PATCH /balloon`: the balloon's new target size.
    fn set_balloon_target(
        &mut self,
        amount_mib: u32,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// `PATCH /balloon/statistics`: how often the guest reports its statistics.
    fn set_balloon_stats_interval(
        &mut self,
        seconds: u16,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The balloon's actual size and the guest's last statistics (`target_*` left at 0).
    fn balloon_stats(&mut self) -> impl Future<Output = Result<BalloonStats, EngineError>> + Send;
    /// I/O statistics of every drive, by Firecracker drive id (for the metrics). Engines
    /// that count nothing report none.
    fn block_stats(
        &mut self,
    ) -> impl Future<Output = Result<Vec<(String, squib_metrics::BlockCounters)>, EngineError>> + Send
    {
        async { Ok(Vec::new()) }
    }
    /// Saves the paused guest: its device state into the new file `device_state`, its memory
    /// into the new file `memory` (both created by the caller, empty). An error writing the
    /// memory file is [`EngineError::WriteMemory`]. The guest stays
    /// paused and can be resumed afterwards.
    fn save_snapshot(
        &mut self,
        _device_state: &std::path::Path,
        _memory: &std::fs::File,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("save snapshots")) }
    }
    /// `PATCH /hotplug/memory`: asks the guest to plug `requested_mib` MiB of the
    /// hot-pluggable memory (the guest plugs or unplugs blocks to get there).
    fn set_memory_hotplug_size(
        &mut self,
        _requested_mib: u32,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::DeviceNotFound) }
    }
    /// The hot-pluggable memory the guest has plugged, in bytes, as it changes; `None`
    /// without a memory hot-plug device.
    fn plugged_memory_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Plugs a device into a free root port of the running PCI guest; the guest sees it
    /// without a rescan. Errors: [`NO_FREE_PCI_SLOT`], or the engine's own.
    fn hotplug(
        &mut self,
        _device: HotplugDevice<'_>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("hot-plug devices")) }
    }
    /// Asks the guest to release a device plugged into a root port (at boot or later) and
    /// returns at once: the engine frees its port and its host side once the guest has let
    /// it go, without holding up the caller.
    fn unplug(
        &mut self,
        _kind: DeviceKind,
        _id: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("unplug devices")) }
    }
    /// Which root port each device holds, on a PCI machine.
    fn pci_layout(&self) -> Option<PciLayout> {
        None
    }
    /// The devices (as [`crate::resources::pci::device_key`]s) the guest was asked to
    /// release ([`RunningVm::unplug`]) and still holds.
    fn unplugging(&self) -> Vec<String> {
        Vec::new()
    }
    /// Hands the registry the counters the engine keeps live (network relays, MMDS), read
    /// at every flush. Engines that keep none register nothing.
    fn register_metrics(&self, _metrics: &squib_metrics::MetricsRegistry) {}
}
