//! The VM's lifecycle state and [`VmView`], the read-only view the VMM loop publishes for GETs.

use serde::Serialize;

use crate::action::VmmActionError;
use crate::engine::EngineError;
use crate::resources::VmResources;
use crate::resources::balloon::{
    BalloonConfigError, BalloonDeviceConfig, BalloonStats, HintingStatus,
};
use crate::resources::memory_hotplug::MemoryHotplugStatus;

/// The Firecracker API level squib implements (docs/api-contract.md §13: not upstream's `-dev` suffix).
pub const FIRECRACKER_API_VERSION: &str = "1.17.0";

/// Lifecycle state as `GET /` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

impl VmState {
    pub(crate) fn is_booted(self) -> bool {
        self != VmState::NotStarted
    }
}

/// Body of `GET /`, in upstream's key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: VmState,
    pub vmm_version: String,
    pub app_name: String,
}

/// Everything GET handlers may read, as of the last action the VMM loop finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmView {
    pub instance_id: String,
    pub state: VmState,
    pub resources: VmResources,
    /// The balloon's last statistics, refreshed by the VMM loop while stats are enabled.
    pub balloon_stats: Option<BalloonStats>,
    /// The hot-pluggable memory the guest has plugged, in bytes, as QEMU last reported it.
    pub memory_plugged_bytes: u64,
}

impl VmView {
    pub fn new(instance_id: String) -> Self {
        Self {
            instance_id,
            state: VmState::NotStarted,
            resources: VmResources::default(),
            balloon_stats: None,
            memory_plugged_bytes: 0,
        }
    }

    pub fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.instance_id.clone(),
            state: self.state,
            vmm_version: FIRECRACKER_API_VERSION.to_string(),
            app_name: "Firecracker".to_string(),
        }
    }
}

/// The GETs whose answer depends on the lifecycle state; the error texts are upstream's.
impl VmView {
    /// `GET /balloon`.
    pub fn balloon_config(&self) -> Result<BalloonDeviceConfig, VmmActionError> {
        match (self.resources.balloon, self.state.is_booted()) {
            (Some(cfg), _) => Ok(cfg),
            (None, false) => Err(BalloonConfigError::DeviceNotFound.into()),
            (None, true) => Err(VmmActionError::InternalVmm(EngineError::DeviceNotFound)),
        }
    }

    /// `GET /balloon/statistics` (post-boot).
    pub fn balloon_stats(&self) -> Result<BalloonStats, VmmActionError> {
        if !self.state.is_booted() {
            return Err(VmmActionError::OperationNotSupportedPreBoot);
        }
        let cfg = self
            .resources
            .balloon
            .ok_or(VmmActionError::InternalVmm(EngineError::DeviceNotFound))?;
        if cfg.stats_polling_interval_s == 0 {
            return Err(VmmActionError::InternalVmm(
                EngineError::BalloonStatsDisabled,
            ));
        }
        let mut stats = self.balloon_stats.clone().unwrap_or_default();
        stats.target_mib = cfg.amount_mib;
        stats.target_pages = cfg.amount_mib.saturating_mul(256);
        Ok(stats)
    }

    /// `GET /balloon/hinting/status` (post-boot).
    pub fn hinting_status(&self) -> Result<HintingStatus, VmmActionError> {
        if !self.state.is_booted() {
            return Err(VmmActionError::OperationNotSupportedPreBoot);
        }
        self.resources.check_balloon_hinting()?;
        // QEMU runs free page hinting only during migration: no host command drives it.
        Err(VmmActionError::NotSupportedBySquib(
            "Driving free page hinting",
        ))
    }

    /// `GET /hotplug/memory` (post-boot).
    pub fn memory_hotplug_status(&self) -> Result<MemoryHotplugStatus, VmmActionError> {
        if !self.state.is_booted() {
            return Err(VmmActionError::OperationNotSupportedPreBoot);
        }
        let Some(cfg) = self.resources.memory_hotplug else {
            return Err(VmmActionError::InternalVmm(EngineError::DeviceNotFound));
        };
        Ok(MemoryHotplugStatus {
            block_size_mib: cfg.block_size_mib,
            total_size_mib: cfg.total_size_mib,
            slot_size_mib: cfg.slot_size_mib,
            plugged_size_mib: (self.memory_plugged_bytes >> 20) as u32,
            requested_size_mib: self.resources.memory_requested_mib,
        })
    }

    /// `GET /mmds`: pre-boot always; post-boot only with an MMDS-enabled interface.
    pub fn mmds_json(&self) -> Result<String, VmmActionError> {
        self.resources
            .check_mmds_reachable(self.state.is_booted())?;
        Ok(self.resources.mmds.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_info_shape() {
        let info = VmView::new("anonymous-instance".into()).instance_info();
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"id":"anonymous-instance","state":"Not started","vmm_version":"1.17.0","app_name":"Firecracker"}"#
        );
    }
}
