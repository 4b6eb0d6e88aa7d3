//! `/balloon`: the memory balloon, its statistics and free-page hinting.

use serde::{Deserialize, Serialize};

/// Body of `PUT /balloon`, and its read-back shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDeviceConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// Body of `PATCH /balloon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdateConfig {
    pub amount_mib: u32,
}

/// Body of `PATCH /balloon/statistics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdateStatsConfig {
    pub stats_polling_interval_s: u16,
}

/// Body of `PATCH /balloon/hinting/start`; unknown fields are accepted, as upstream does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct StartHintingCmd {
    #[serde(default = "default_acknowledge_on_stop")]
    pub acknowledge_on_stop: bool,
}

fn default_acknowledge_on_stop() -> bool {
    true
}

impl Default for StartHintingCmd {
    fn default() -> Self {
        Self {
            acknowledge_on_stop: true,
        }
    }
}

/// Body of `GET /balloon/statistics`: the four sizes, then only the stats the guest reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// Body of `GET /balloon/hinting/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
}

/// `PUT /balloon` and `GET /balloon` failures (prefix `Balloon config error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonConfigError {
    #[error("No balloon device found.")]
    DeviceNotFound,
    #[error("Amount of pages requested is too large.")]
    TooManyPagesRequested,
}

/// Runtime balloon failures (prefix `Balloon update error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonUpdateError {
    #[error("Failed perform action on device: Device not found")]
    DeviceNotFound,
    #[error("Balloon: Device not activated yet.")]
    NotActivated,
    #[error("Balloon: Requested memory should be less than {0}MiB")]
    TooMuchMemoryRequested(u32),
    #[error("Balloon: Statistics cannot be enabled/disabled after activation.")]
    StatisticsStateChange,
    #[error("Balloon: Attempting to use hinting when not enabled")]
    HintingNotEnabled,
}

impl BalloonDeviceConfig {
    /// The balloon may not ask for more than the guest has.
    pub fn validate(&self, mem_size_mib: usize) -> Result<(), BalloonConfigError> {
        if self.amount_mib as usize > mem_size_mib {
            return Err(BalloonConfigError::TooManyPagesRequested);
        }
        Ok(())
    }
}

impl super::VmResources {
    /// `PUT /balloon`: no more than the guest has.
    pub(crate) fn set_balloon(
        &mut self,
        cfg: BalloonDeviceConfig,
    ) -> Result<(), BalloonConfigError> {
        cfg.validate(self.machine_config.mem_size_mib)?;
        self.balloon = Some(cfg);
        Ok(())
    }

    /// `PATCH /balloon`: the device exists and the target fits in the guest's memory.
    pub(crate) fn check_balloon_target(&self, amount_mib: u32) -> Result<(), BalloonUpdateError> {
        if self.balloon.is_none() {
            return Err(BalloonUpdateError::DeviceNotFound);
        }
        if amount_mib as usize > self.machine_config.mem_size_mib {
            return Err(BalloonUpdateError::TooMuchMemoryRequested(amount_mib));
        }
        Ok(())
    }

    /// `PATCH /balloon/statistics`: the device exists, and statistics stay on or stay off.
    /// `Ok(true)` when the interval changes.
    pub(crate) fn check_balloon_stats_update(
        &self,
        update: BalloonUpdateStatsConfig,
    ) -> Result<bool, BalloonUpdateError> {
        let cfg = self.balloon.ok_or(BalloonUpdateError::DeviceNotFound)?;
        if (cfg.stats_polling_interval_s == 0) != (update.stats_polling_interval_s == 0) {
            return Err(BalloonUpdateError::StatisticsStateChange);
        }
        Ok(cfg.stats_polling_interval_s != update.stats_polling_interval_s)
    }

    /// Free page hinting commands: the device exists and hinting is enabled. Then the
    /// caller still refuses: QEMU runs hinting only during migration.
    pub(crate) fn check_balloon_hinting(&self) -> Result<(), BalloonUpdateError> {
        let cfg = self.balloon.ok_or(BalloonUpdateError::DeviceNotFound)?;
        if !cfg.free_page_hinting {
            return Err(BalloonUpdateError::HintingNotEnabled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_defaults() {
        let cfg: BalloonDeviceConfig =
            serde_json::from_str(r#"{"amount_mib":10,"deflate_on_oom":true}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"amount_mib":10,"deflate_on_oom":true,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false}"#
        );
        assert_eq!(
            cfg.validate(9),
            Err(BalloonConfigError::TooManyPagesRequested)
        );
        assert!(cfg.validate(10).is_ok());
        let cmd: StartHintingCmd = serde_json::from_str(r#"{"other":1}"#).unwrap();
        assert!(cmd.acknowledge_on_stop);
        let stats = BalloonStats::default();
        assert_eq!(
            serde_json::to_string(&stats).unwrap(),
            r#"{"target_pages":0,"actual_pages":0,"target_mib":0,"actual_mib":0}"#
        );
    }

    #[test]
    fn the_balloon_fits_in_the_guest_memory() {
        use crate::resources::machine_config::{MachineConfigError, MachineConfigUpdate};
        let mut resources = crate::VmResources::default();
        let too_big = BalloonDeviceConfig {
            amount_mib: 129,
            ..Default::default()
        };
        assert_eq!(
            resources.set_balloon(too_big),
            Err(BalloonConfigError::TooManyPagesRequested)
        );
        assert_eq!(
            resources.check_balloon_target(1),
            Err(BalloonUpdateError::DeviceNotFound)
        );
        resources
            .set_balloon(BalloonDeviceConfig {
                amount_mib: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            resources.check_balloon_target(129),
            Err(BalloonUpdateError::TooMuchMemoryRequested(129))
        );
        // Shrinking the memory below the balloon is refused, and changes nothing.
        let shrink: MachineConfigUpdate = serde_json::from_str(r#"{"mem_size_mib":64}"#).unwrap();
        assert!(matches!(
            resources.update_machine_config(&shrink),
            Err(MachineConfigError::IncompatibleBalloonSize)
        ));
        assert_eq!(resources.machine_config.mem_size_mib, 128);
        // Statistics stay on or stay off.
        assert_eq!(
            resources.check_balloon_stats_update(BalloonUpdateStatsConfig {
                stats_polling_interval_s: 1
            }),
            Err(BalloonUpdateError::StatisticsStateChange)
        );
        assert_eq!(
            resources.check_balloon_hinting(),
            Err(BalloonUpdateError::HintingNotEnabled)
        );
    }
}
