//! The requests the VMM loop serves, their results and their client-visible errors.

use tokio::sync::oneshot;

use crate::config::boot_source::{BootSourceConfig, BootSourceError};
use crate::config::drive::{BlockDeviceConfig, DriveError};
use crate::config::machine_config::{MachineConfig, MachineConfigError, MachineConfigUpdate};
use crate::engine::EngineError;

/// One mutating request, already parsed and shape-checked by the API layer.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmAction {
    ConfigureBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    InsertBlockDevice(BlockDeviceConfig),
    StartMicroVm,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
}

impl VmmAction {
    /// A short name for logs and for the time-out message.
    pub fn name(&self) -> &'static str {
        match self {
            VmmAction::ConfigureBootSource(_) => "ConfigureBootSource",
            VmmAction::PutMachineConfig(_) => "PutMachineConfig",
            VmmAction::PatchMachineConfig(_) => "PatchMachineConfig",
            VmmAction::InsertBlockDevice(_) => "InsertBlockDevice",
            VmmAction::StartMicroVm => "InstanceStart",
            VmmAction::SendCtrlAltDel => "SendCtrlAltDel",
            VmmAction::FlushMetrics => "FlushMetrics",
            VmmAction::Pause => "Pause",
            VmmAction::Resume => "Resume",
        }
    }
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
    Engine(EngineError),
}

/// A failed action; the display text is the client-visible fault message.
#[derive(Debug, thiserror::Error)]
pub enum VmmActionError {
    #[error("Boot source error: {0}")]
    BootSource(#[from] BootSourceError),
    #[error("Drive config error: {0}")]
    DriveConfig(#[from] DriveError),
    #[error("Machine config error: {0}")]
    MachineConfig(#[from] MachineConfigError),
    #[error("Start microvm error: {0}")]
    StartMicroVm(#[from] StartMicroVmError),
    #[error("Internal VMM error: {0}")]
    InternalVmm(EngineError),
    #[error("PCI is not enabled")]
    PciNotEnabled,
    #[error("The requested operation is not supported before starting the microVM.")]
    OperationNotSupportedPreBoot,
    #[error("The requested operation is not supported after starting the microVM.")]
    OperationNotSupportedPostBoot,
}

pub type ActionResult = Result<VmmData, VmmActionError>;

/// An action on its way to the VMM loop, with the channel its answer goes back on.
#[derive(Debug)]
pub struct ActionRequest {
    pub action: VmmAction,
    pub reply: oneshot::Sender<ActionResult>,
}
