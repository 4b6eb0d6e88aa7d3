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
}
