//! The requests the VMM loop serves, their results and their client-visible errors.

use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::EngineError;
use crate::mmds_store::MmdsStoreError;
use crate::resources::balloon::{
    BalloonConfigError, BalloonDeviceConfig, BalloonUpdateConfig, BalloonUpdateError,
    BalloonUpdateStatsConfig, StartHintingCmd,
};
use crate::resources::boot_source::{BootSourceConfig, BootSourceError};
use crate::resources::cpu_config::CustomCpuTemplate;
use crate::resources::drive::{BlockDeviceConfig, BlockDeviceUpdateConfig, DriveError};
use crate::resources::entropy::EntropyDeviceConfig;
use crate::resources::logger::{LoggerConfig, LoggerConfigError};
use crate::resources::machine_config::{MachineConfig, MachineConfigError, MachineConfigUpdate};
use crate::resources::memory_hotplug::{
    MemoryHotplugConfig, MemoryHotplugConfigError, MemoryHotplugSizeUpdate,
};
use crate::resources::metrics::{MetricsConfig, MetricsConfigError};
use crate::resources::mmds::{MmdsConfigError, MmdsConfigRequest};
use crate::resources::net::{
    NetworkInterfaceConfig, NetworkInterfaceError, NetworkInterfaceUpdateConfig,
};
use crate::resources::pmem::{PmemConfig, PmemConfigError, PmemDeviceUpdateConfig};
use crate::resources::serial::SerialConfig;
use crate::resources::snapshot::{CreateSnapshotParams, LoadSnapshotParams};
use crate::resources::vsock::{VsockConfigError, VsockDeviceConfig};

/// Devices that `DELETE /{kind}/{id}` hot-unplugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Drive,
    NetworkInterface,
    Pmem,
}

/// One mutating request, already parsed and shape-checked by the API layer.
#[derive(Clone, Debug, PartialEq, strum::IntoStaticStr)]
pub enum VmmAction {
    ConfigureBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutCpuConfiguration(CustomCpuTemplate),
    InsertBlockDevice(BlockDeviceConfig),
    UpdateBlockDevice(BlockDeviceUpdateConfig),
    InsertNetworkDevice(NetworkInterfaceConfig),
    UpdateNetworkInterface(NetworkInterfaceUpdateConfig),
    InsertPmemDevice(PmemConfig),
    UpdatePmemDevice(PmemDeviceUpdateConfig),
    RemoveDevice(DeviceKind, String),
    SetVsockDevice(VsockDeviceConfig),
    SetBalloonDevice(BalloonDeviceConfig),
    UpdateBalloon(BalloonUpdateConfig),
    UpdateBalloonStatistics(BalloonUpdateStatsConfig),
    StartFreePageHinting(StartHintingCmd),
    StopFreePageHinting,
    SetEntropyDevice(EntropyDeviceConfig),
    SetSerial(SerialConfig),
    ConfigureLogger(LoggerConfig),
    ConfigureMetrics(MetricsConfig),
    #[strum(serialize = "PutMMDS")]
    PutMmds(Value),
    #[strum(serialize = "PatchMMDS")]
    PatchMmds(Value),
    SetMmdsConfiguration(MmdsConfigRequest),
    #[strum(serialize = "SetMemoryHotplugDevice")]
    SetMemoryHotplug(MemoryHotplugConfig),
    UpdateMemoryHotplugSize(MemoryHotplugSizeUpdate),
    CreateSnapshot(CreateSnapshotParams),
    LoadSnapshot(LoadSnapshotParams),
    #[strum(serialize = "InstanceStart")]
    StartMicroVm,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
}

impl VmmAction {
    /// A short name for logs and for the time-out message: the variant's name, or upstream's
    /// where it differs (`#[strum(serialize)]` above).
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// When the action may run. Exhaustive on purpose: a new action does not compile
    /// without this decision.
    pub(crate) fn phase(&self) -> Phase {
        use VmmAction::*;
        match self {
            ConfigureBootSource(_)
            | PutMachineConfig(_)
            | PatchMachineConfig(_)
            | PutCpuConfiguration(_)
            | ConfigureLogger(_)
            | ConfigureMetrics(_)
            | SetSerial(_)
            | SetBalloonDevice(_)
            | SetVsockDevice(_)
            | SetEntropyDevice(_)
            | SetMmdsConfiguration(_)
            | SetMemoryHotplug(_)
            | LoadSnapshot(_)
            | StartMicroVm => Phase::PreBoot,
            UpdateBlockDevice(_)
            | UpdateNetworkInterface(_)
            | UpdatePmemDevice(_)
            | RemoveDevice(..)
            | UpdateBalloon(_)
            | UpdateBalloonStatistics(_)
            | StartFreePageHinting(_)
            | StopFreePageHinting
            | UpdateMemoryHotplugSize(_)
            | CreateSnapshot(_)
            | SendCtrlAltDel
            | FlushMetrics
            | Pause
            | Resume => Phase::PostBoot,
            // Devices are hot-plugged after boot; the MMDS store is written either side.
            InsertBlockDevice(_)
            | InsertNetworkDevice(_)
            | InsertPmemDevice(_)
            | PutMmds(_)
            | PatchMmds(_) => Phase::Any,
        }
    }

    /// Pre-boot calls that commit the process to booting rather than loading a snapshot
    /// (docs/api-contract.md §4.2), even when the VMM then refuses them. Exhaustive, like
    /// [`Self::phase`].
    pub(crate) fn commits_to_boot(&self) -> bool {
        use VmmAction::*;
        match self {
            ConfigureBootSource(_)
            | PutMachineConfig(_)
            | PatchMachineConfig(_)
            | InsertBlockDevice(_)
            | InsertNetworkDevice(_)
            | InsertPmemDevice(_)
            | SetBalloonDevice(_)
            | SetVsockDevice(_)
            | SetEntropyDevice(_)
            | SetMmdsConfiguration(_)
            | SetMemoryHotplug(_) => true,
            PutCpuConfiguration(_)
            | UpdateBlockDevice(_)
            | UpdateNetworkInterface(_)
            | UpdatePmemDevice(_)
            | RemoveDevice(..)
            | UpdateBalloon(_)
            | UpdateBalloonStatistics(_)
            | StartFreePageHinting(_)
            | StopFreePageHinting
            | SetSerial(_)
            | ConfigureLogger(_)
            | ConfigureMetrics(_)
            | PutMmds(_)
            | PatchMmds(_)
            | UpdateMemoryHotplugSize(_)
            | CreateSnapshot(_)
            | LoadSnapshot(_)
            | StartMicroVm
            | SendCtrlAltDel
            | FlushMetrics
            | Pause
            | Resume => false,
        }
    }

    /// Whether the action may run in this lifecycle state; the error is upstream's text.
    pub(crate) fn check_phase(&self, booted: bool) -> Result<(), VmmActionError> {
        match (self.phase(), booted) {
            (Phase::PreBoot, true) => Err(VmmActionError::OperationNotSupportedPostBoot),
            (Phase::PostBoot, false) => Err(VmmActionError::OperationNotSupportedPreBoot),
            _ => Ok(()),
        }
    }
}

/// When an action may run, relative to `InstanceStart` (or a snapshot load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before boot only; refused afterwards with the post-boot message.
    PreBoot,
    /// On a booted VM only; refused before with the pre-boot message.
    PostBoot,
    /// Either side of boot.
    Any,
}

/// What a successful action hands back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmData {
    Empty,
}

/// Why `InstanceStart` failed.
#[derive(Debug, thiserror::Error)]
pub enum StartMicroVmError {
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernelConfig,
    #[error("{0}")]
    BootFiles(#[from] crate::resources::boot_source::BootFilesError),
    /// The serial output file cannot be opened: upstream opens it first, when it creates its
    /// device manager, and words it so.
    #[error("Failed to create device manager: Error with EventFd: {0}")]
    SerialOutput(squib_net::OsError),
    /// A drive QEMU cannot open as a disk (a directory, accepted read-only at `PUT` as
    /// upstream does).
    #[error("{0}")]
    Drive(#[from] crate::resources::drive::DriveError),
    #[error("{0}")]
    Engine(EngineError),
}

/// Why `PUT /snapshot/create` failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateSnapshotError {
    #[error(
        "Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
    )]
    VmRunning,
    /// The listed devices are `vhost-user-block(id: ⟨drive id⟩)`, comma-separated.
    #[error(
        "Cannot save the microVM state: Operation not allowed: Devices without snapshot support are present: {0}"
    )]
    DevicesWithoutSnapshotSupport(String),
    /// A `DELETE` was answered but the guest still holds the device: QEMU's state would
    /// carry a device the state file no longer lists. The guest is paused, so it cannot
    /// finish releasing it until it runs again.
    #[error(
        "Cannot save the microVM state: Operation not allowed: the guest has not released the devices being unplugged yet: {0}. Resume the microVM until it has, then pause it and create the snapshot."
    )]
    UnplugPending(String),
    #[error("Diff snapshots are not supported by squib: only Full snapshots can be created.")]
    DiffUnsupported,
    #[error("Cannot perform {0} on the snapshot backing file: {1}")]
    SnapshotBackingFile(&'static str, squib_net::OsError),
    #[error("Cannot perform {0} on the memory backing file: {1}")]
    MemoryBackingFile(&'static str, squib_net::OsError),
    #[error("Cannot save the microVM state: {0}")]
    MicrovmState(EngineError),
    #[error("Cannot write memory file: {0}")]
    Memory(String),
}

/// Why `PUT /snapshot/load` failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    #[error(
        "Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: {0}"
    )]
    OpenStateFile(squib_net::OsError),
    #[error(
        "Failed to restore from snapshot: Failed to get snapshot state from file: Failed to load snapshot state from file: {0}"
    )]
    LoadStateFile(squib_snapshot::SnapshotFormatError),
    #[error("Failed to restore from snapshot: Failed to get snapshot state from file: {0}")]
    SnapshotState(String),
    #[error(
        "Failed to restore from snapshot: Failed to load guest memory: Error creating guest memory from file: {0}"
    )]
    GuestMemory(String),
    #[error("Failed to restore from snapshot: {0}")]
    Restore(String),
    #[error("The Uffd memory backend is not supported by squib: use backend_type File.")]
    UffdUnsupported,
    #[error("Failed to resume microVM: {0}")]
    Resume(EngineError),
}

/// A failed action; the display text is the client-visible fault message.
#[derive(Debug, thiserror::Error)]
pub enum VmmActionError {
    #[error("Balloon config error: {0}")]
    BalloonConfig(#[from] BalloonConfigError),
    #[error("Balloon update error: {0}")]
    BalloonUpdate(#[from] BalloonUpdateError),
    #[error("Boot source error: {0}")]
    BootSource(#[from] BootSourceError),
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(#[from] CreateSnapshotError),
    #[error("Drive config error: {0}")]
    DriveConfig(#[from] DriveError),
    #[error("Internal VMM error: {0}")]
    InternalVmm(EngineError),
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(#[from] LoadSnapshotError),
    #[error("Logger error: {0}")]
    Logger(#[from] LoggerConfigError),
    #[error("Machine config error: {0}")]
    MachineConfig(#[from] MachineConfigError),
    #[error("Memory hotplug config error: {0}")]
    MemoryHotplugConfig(#[from] MemoryHotplugConfigError),
    #[error("Memory hotplug update error: {0}")]
    MemoryHotplugUpdate(String),
    #[error("Metrics error: {0}")]
    Metrics(#[from] MetricsConfigError),
    /// The one error upstream answers with 413 instead of 400.
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimitExceeded(MmdsStoreError),
    #[error("MMDS error: {0}")]
    Mmds(MmdsStoreError),
    // Upstream really spells it with three Ms.
    #[error("MMMDS config error: {0}")]
    MmdsConfig(#[from] MmdsConfigError),
    #[error("Network config error: {0}")]
    NetworkConfig(#[from] NetworkInterfaceError),
    #[error("Pmem config error: {0}")]
    PmemConfig(#[from] PmemConfigError),
    #[error("Start microvm error: {0}")]
    StartMicroVm(#[from] StartMicroVmError),
    #[error("Vsock config error: {0}")]
    VsockConfig(#[from] VsockConfigError),
    #[error("PCI is not enabled")]
    PciNotEnabled,
    #[error("Device ID in use")]
    DeviceIdInUse,
    #[error("Device not found")]
    DeviceNotFound,
    #[error("Cannot unplug root device")]
    CannotUnplugRootDevice,
    #[error("PCI manager error: {0}")]
    PciManager(EngineError),
    #[error("{0} is not supported by squib yet.")]
    NotSupportedBySquib(&'static str),
    #[error("The requested operation is not supported before starting the microVM.")]
    OperationNotSupportedPreBoot,
    #[error("The requested operation is not supported after starting the microVM.")]
    OperationNotSupportedPostBoot,
}

impl From<MmdsStoreError> for VmmActionError {
    fn from(e: MmdsStoreError) -> Self {
        match e {
            MmdsStoreError::DataStoreLimitExceeded => Self::MmdsLimitExceeded(e),
            MmdsStoreError::NotInitialized => Self::Mmds(e),
        }
    }
}

impl VmmActionError {
    /// Upstream answers 413 for this one error and 400 for every other.
    pub fn is_payload_too_large(&self) -> bool {
        matches!(self, Self::MmdsLimitExceeded(_))
    }
}

pub type ActionResult = Result<VmmData, VmmActionError>;

/// An action on its way to the VMM loop, with the channel its answer goes back on.
#[derive(Debug)]
pub struct ActionRequest {
    pub action: VmmAction,
    pub reply: oneshot::Sender<ActionResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_are_upstreams() {
        assert_eq!(VmmAction::StartMicroVm.name(), "InstanceStart");
        assert_eq!(VmmAction::PutMmds(Value::Null).name(), "PutMMDS");
        assert_eq!(VmmAction::PatchMmds(Value::Null).name(), "PatchMMDS");
        assert_eq!(VmmAction::FlushMetrics.name(), "FlushMetrics");
        assert_eq!(
            VmmAction::RemoveDevice(DeviceKind::Pmem, "p".into()).name(),
            "RemoveDevice"
        );
    }
}
