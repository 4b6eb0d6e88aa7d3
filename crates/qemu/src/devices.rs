//! Runtime control of drives and the balloon over QMP: start-up settings, backing-file
//! swaps, rate limits, balloon target and statistics.

use std::collections::HashMap;

use serde_json::{Value, json};
use squib_vmm::resources::balloon::BalloonStats;
use squib_vmm::resources::drive::{CacheType, Drive, DriveBackend};
use squib_vmm::resources::rate_limiter::RateLimiterConfig;
use squib_vmm::{EngineError, VmResources};

use crate::plan::{self, Aio, BALLOON_ID, DriveNames};
use crate::throttle::throttle_args;
use squib_qmp::{QmpClient, QmpError};

const MIB: u64 = 1 << 20;
/// Firecracker counts balloon pages of 4 KiB.
const PAGE_SIZE: u64 = 4096;

fn qmp_error(err: QmpError) -> EngineError {
    EngineError::Failed(err.to_string())
}

/// QOM path of the balloon device.
fn balloon_path() -> String {
    format!("/machine/peripheral/{BALLOON_ID}")
}

/// What the engine remembers about the devices of one running guest.
#[derive(Debug, Default)]
pub(crate) struct DeviceState {
    /// Guest RAM in bytes: the balloon's target is expressed against it.
    mem_bytes: u64,
    /// Per drive id: the file node squib added by a swap (the next swap deletes it).
    swapped: HashMap<String, String>,
    /// Makes swap node names unique.
    generation: u32,
}

impl DeviceState {
    pub(crate) fn new(resources: &VmResources) -> Self {
        Self {
            mem_bytes: resources.machine_config.mem_bytes().unwrap_or(u64::MAX),
            ..Self::default()
        }
    }

    /// True when [`DeviceState::apply_initial`] has something to send: the guest must then
    /// wait for it, paused.
    pub(crate) fn has_initial(resources: &VmResources) -> bool {
        resources
            .balloon
            .as_ref()
            .is_some_and(|b| b.amount_mib > 0 || b.stats_polling_interval_s > 0)
            || resources.drives.iter().any(|d| {
                matches!(
                    d.backend,
                    DriveBackend::File {
                        rate_limiter: Some(_),
                        ..
                    }
                )
            })
    }

    /// Start-up settings that only QMP can make, sent while the guest is still paused:
    /// drive rate limits, the balloon's first target and its statistics interval.
    pub(crate) async fn apply_initial(
        &self,
        qmp: &QmpClient,
        resources: &VmResources,
    ) -> Result<(), QmpError> {
        for (index, drive) in resources.drives.iter().enumerate() {
            if let DriveBackend::File {
                rate_limiter: Some(limiter),
                ..
            } = &drive.backend
            {
                let names = plan::drive_names(index, &drive.id);
                qmp.block_set_io_throttle(throttle_args(&names.device, Some(limiter)))
                    .await?;
            }
        }
        if let Some(balloon) = &resources.balloon {
            if balloon.amount_mib > 0 {
                qmp.balloon(self.balloon_target(balloon.amount_mib)).await?;
            }
            if balloon.stats_polling_interval_s > 0 {
                qmp.qom_set(
                    &balloon_path(),
                    "guest-stats-polling-interval",
                    json!(balloon.stats_polling_interval_s),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// QMP `balloon` takes the guest's memory size once inflated, in bytes (at least 1 MiB:
    /// QEMU refuses 0).
    fn balloon_target(&self, amount_mib: u32) -> u64 {
        self.mem_bytes
            .saturating_sub(u64::from(amount_mib) * MIB)
            .max(MIB)
    }

    pub(crate) async fn set_balloon_target(
        &self,
        qmp: &QmpClient,
        amount_mib: u32,
    ) -> Result<(), EngineError> {
        qmp.balloon(self.balloon_target(amount_mib))
            .await
            .map_err(qmp_error)
    }

    pub(crate) async fn set_balloon_stats_interval(
        &self,
        qmp: &QmpClient,
        seconds: u16,
    ) -> Result<(), EngineError> {
        qmp.qom_set(
            &balloon_path(),
            "guest-stats-polling-interval",
            json!(seconds),
        )
        .await
        .map_err(qmp_error)
    }

    /// `query-balloon` for the actual size, `guest-stats` for the guest's numbers.
    pub(crate) async fn balloon_stats(&self, qmp: &QmpClient) -> Result<BalloonStats, EngineError> {
        let actual = qmp.query_balloon().await.map_err(qmp_error)?;
        let inflated = self.mem_bytes.saturating_sub(actual);
        let guest = qmp
            .qom_get(&balloon_path(), "guest-stats")
            .await
            .map_err(qmp_error)?;
        Ok(stats_from_qemu(inflated, &guest))
    }

    /// Serves `drive` from its new backing file: a new file node, opened read-only when the
    /// client gave the drive read-only, and the drive's format node re-opened on it. The
    /// guest reads the new content at once.
    ///
    /// The file is never written, resized or re-opened writable for the swap: QEMU can only
    /// announce a new capacity to the guest through `block_resize`, which truncates the file
    /// (changing at least its mtime), so a new size is not announced (docs/deviations.md).
    pub(crate) async fn swap_drive(
        &mut self,
        qmp: &QmpClient,
        names: &DriveNames,
        drive: &Drive,
    ) -> Result<(), EngineError> {
        let DriveBackend::File {
            path, read_only, ..
        } = &drive.backend
        else {
            return Err(EngineError::Failed(
                "Block: Running method expected different backend.".to_string(),
            ));
        };
        self.generation += 1;
        let file_node = format!("swap{}", self.generation);
        let cache = json!({
            "direct": false,
            "no-flush": matches!(drive.cache_type, CacheType::Unsafe),
        });
        qmp.blockdev_add(json!({
            "driver": "file", "node-name": file_node, "filename": path,
            "aio": Aio::of(drive).qemu_name(), "read-only": read_only, "cache": cache,
            // Firecracker takes no image locks (see cmdline's drives).
            "locking": "off",
        }))
        .await
        .map_err(qmp_error)?;
        if let Err(err) = qmp
            .blockdev_reopen(json!({
                "driver": "raw", "node-name": names.node, "read-only": read_only,
                "cache": cache, "file": file_node,
            }))
            .await
        {
            let _ = qmp.blockdev_del(&file_node).await;
            return Err(qmp_error(err));
        }
        if let Some(old) = self.swapped.insert(drive.id.clone(), file_node)
            && let Err(err) = qmp.blockdev_del(&old).await
        {
            tracing::warn!(node = %old, %err, "cannot release the previous backing file");
        }
        Ok(())
    }

    pub(crate) async fn set_drive_rate_limiter(
        &self,
        qmp: &QmpClient,
        names: &DriveNames,
        limiter: Option<&RateLimiterConfig>,
    ) -> Result<(), EngineError> {
        qmp.block_set_io_throttle(throttle_args(&names.device, limiter))
            .await
            .map_err(qmp_error)
    }
}

/// QEMU's `guest-stats` (`{"stats": {"stat-…": n}, "last-update": t}`) as Firecracker's
/// statistics; stats the guest never reported (QEMU shows them as -1) are left out.
/// The `target_*` fields are the VMM's to fill.
pub(crate) fn stats_from_qemu(inflated_bytes: u64, guest: &Value) -> BalloonStats {
    let stat = |key: &str| -> Option<u64> {
        let value = guest.get("stats")?.get(key)?;
        value.as_u64().filter(|&v| v != u64::MAX)
    };
    BalloonStats {
        actual_pages: u32::try_from(inflated_bytes / PAGE_SIZE).unwrap_or(u32::MAX),
        actual_mib: u32::try_from(inflated_bytes / MIB).unwrap_or(u32::MAX),
        swap_in: stat("stat-swap-in"),
        swap_out: stat("stat-swap-out"),
        major_faults: stat("stat-major-faults"),
        minor_faults: stat("stat-minor-faults"),
        free_memory: stat("stat-free-memory"),
        total_memory: stat("stat-total-memory"),
        available_memory: stat("stat-available-memory"),
        disk_caches: stat("stat-disk-caches"),
        hugetlb_allocations: stat("stat-htlb-pgalloc"),
        hugetlb_failures: stat("stat-htlb-pgfail"),
        ..BalloonStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_guest_stats_map_to_firecracker_keys_in_order() {
        let guest = json!({"stats": {
            "stat-htlb-pgalloc": 0, "stat-swap-out": 0, "stat-available-memory": 51015680,
            "stat-htlb-pgfail": 0, "stat-free-memory": 46870528, "stat-minor-faults": 3051,
            "stat-major-faults": 0, "stat-total-memory": 215961600, "stat-swap-in": 0,
            "stat-disk-caches": -1}, "last-update": 1});
        let stats = stats_from_qemu(128 * MIB, &guest);
        assert_eq!(
            serde_json::to_string(&stats).unwrap(),
            concat!(
                r#"{"target_pages":0,"actual_pages":32768,"target_mib":0,"actual_mib":128,"#,
                r#""swap_in":0,"swap_out":0,"major_faults":0,"minor_faults":3051,"#,
                r#""free_memory":46870528,"total_memory":215961600,"available_memory":51015680,"#,
                r#""hugetlb_allocations":0,"hugetlb_failures":0}"#
            )
        );
        let none = stats_from_qemu(0, &json!({"stats": {}, "last-update": 0}));
        assert_eq!(none, BalloonStats::default());
    }

    #[test]
    fn balloon_target_is_memory_left_to_the_guest() {
        let state = DeviceState {
            mem_bytes: 256 * MIB,
            ..DeviceState::default()
        };
        assert_eq!(state.balloon_target(0), 256 * MIB);
        assert_eq!(state.balloon_target(100), 156 * MIB);
        assert_eq!(state.balloon_target(256), MIB);
    }
}
