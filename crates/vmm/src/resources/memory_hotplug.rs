//! `/hotplug/memory`: the virtio-mem region a guest can grow into.

use serde::{Deserialize, Serialize};

/// Body of `PUT /hotplug/memory`, and its read-back shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    pub total_size_mib: u32,
    #[serde(default = "default_block_size_mib")]
    pub block_size_mib: u32,
    #[serde(default = "default_slot_size_mib")]
    pub slot_size_mib: u32,
}

fn default_block_size_mib() -> u32 {
    MIN_BLOCK_SIZE_MIB
}

fn default_slot_size_mib() -> u32 {
    MIN_SLOT_SIZE_MIB
}

pub(crate) const MIN_BLOCK_SIZE_MIB: u32 = 2;
pub(crate) const MIN_SLOT_SIZE_MIB: u32 = 128;

/// Body of `PATCH /hotplug/memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    pub requested_size_mib: u32,
}

/// Body of `GET /hotplug/memory`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryHotplugStatus {
    pub block_size_mib: u32,
    pub total_size_mib: u32,
    pub slot_size_mib: u32,
    pub plugged_size_mib: u32,
    pub requested_size_mib: u32,
}

/// Why `PUT /hotplug/memory` failed (prefix `Memory hotplug config error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryHotplugConfigError {
    #[error("Block size must not be lower than {MIN_BLOCK_SIZE_MIB} MiB")]
    BlockSizeTooSmall,
    #[error("Block size must be a power of 2")]
    BlockSizeNotPowerOfTwo,
    #[error("Slot size must not be lower than {MIN_SLOT_SIZE_MIB} MiB")]
    SlotSizeTooSmall,
    #[error("Slot size must be a multiple of block size ({0} MiB)")]
    SlotSizeNotMultipleOfBlockSize(u32),
    #[error("Total size must not be lower than slot size ({0} MiB)")]
    TotalSizeTooSmall(u32),
    #[error("Total size must be a multiple of slot size ({0} MiB)")]
    TotalSizeNotMultipleOfSlotSize(u32),
}

impl MemoryHotplugConfig {
    /// Upstream's checks, in upstream's order.
    pub fn validate(&self) -> Result<(), MemoryHotplugConfigError> {
        use MemoryHotplugConfigError::*;
        if self.block_size_mib < MIN_BLOCK_SIZE_MIB {
            return Err(BlockSizeTooSmall);
        }
        if !self.block_size_mib.is_power_of_two() {
            return Err(BlockSizeNotPowerOfTwo);
        }
        if self.slot_size_mib < MIN_SLOT_SIZE_MIB {
            return Err(SlotSizeTooSmall);
        }
        if !self.slot_size_mib.is_multiple_of(self.block_size_mib) {
            return Err(SlotSizeNotMultipleOfBlockSize(self.block_size_mib));
        }
        if self.total_size_mib < self.slot_size_mib {
            return Err(TotalSizeTooSmall(self.slot_size_mib));
        }
        if !self.total_size_mib.is_multiple_of(self.slot_size_mib) {
            return Err(TotalSizeNotMultipleOfSlotSize(self.slot_size_mib));
        }
        Ok(())
    }
}

impl super::VmResources {
    /// `PUT /hotplug/memory`: a valid device replaces the configured one.
    pub(crate) fn set_memory_hotplug(
        &mut self,
        cfg: MemoryHotplugConfig,
    ) -> Result<(), MemoryHotplugConfigError> {
        cfg.validate()?;
        self.memory_hotplug = Some(cfg);
        Ok(())
    }

    /// `PATCH /hotplug/memory`: the device exists and the size is a multiple of its block
    /// size, within its total size. The texts are upstream's.
    pub(crate) fn check_memory_hotplug_request(&self, requested_mib: u32) -> Result<(), String> {
        let Some(cfg) = self.memory_hotplug else {
            return Err(crate::engine::EngineError::DeviceNotFound.to_string());
        };
        if requested_mib > cfg.total_size_mib || !requested_mib.is_multiple_of(cfg.block_size_mib) {
            return Err(format!(
                "Size {} is invalid: it must be a multiple of block size and less than the total size",
                u64::from(requested_mib) << 20
            ));
        }
        Ok(())
    }
}

/// Counts a change of the plugged size QEMU reports (`old` → `new` bytes) in upstream's
/// `memory_hotplug` section: a growth is a plug, a shrink an unplug. QEMU reports the size, not
/// the guest's requests (and at most one change a second), so a count covers one or more
/// guest requests; the bytes are exact.
pub(crate) fn count_plugged_change(m: &squib_metrics::schema::MemoryHotplug, old: u64, new: u64) {
    if new > old {
        m.plug_count.inc();
        m.plug_bytes.add(new - old);
    } else if new < old {
        m.unplug_count.inc();
        m.unplug_bytes.add(old - new);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plugged_size_changes_count_as_plugs_and_unplugs() {
        let m = squib_metrics::schema::MemoryHotplug::default();
        super::count_plugged_change(&m, 0, 128 << 20);
        super::count_plugged_change(&m, 128 << 20, 256 << 20);
        super::count_plugged_change(&m, 256 << 20, 256 << 20);
        super::count_plugged_change(&m, 256 << 20, 64 << 20);
        assert_eq!(m.plug_count.get(), 2);
        assert_eq!(m.plug_bytes.get(), 256 << 20);
        assert_eq!(m.unplug_count.get(), 1);
        assert_eq!(m.unplug_bytes.get(), 192 << 20);
        assert_eq!(m.plug_fails.get(), 0);
    }

    use super::*;

    fn check(json: &str) -> Result<(), MemoryHotplugConfigError> {
        serde_json::from_str::<MemoryHotplugConfig>(json)
            .unwrap()
            .validate()
    }

    #[test]
    fn checks_in_order() {
        use MemoryHotplugConfigError::*;
        assert_eq!(
            check(r#"{"total_size_mib":0,"block_size_mib":1}"#),
            Err(BlockSizeTooSmall)
        );
        assert_eq!(
            check(r#"{"total_size_mib":0,"block_size_mib":6}"#),
            Err(BlockSizeNotPowerOfTwo)
        );
        assert_eq!(
            check(r#"{"total_size_mib":0,"slot_size_mib":64}"#),
            Err(SlotSizeTooSmall)
        );
        assert_eq!(
            check(r#"{"total_size_mib":0,"block_size_mib":256,"slot_size_mib":384}"#)
                .unwrap_err()
                .to_string(),
            "Slot size must be a multiple of block size (256 MiB)"
        );
        assert_eq!(
            check(r#"{"total_size_mib":64}"#),
            Err(TotalSizeTooSmall(128))
        );
        assert_eq!(
            check(r#"{"total_size_mib":200}"#),
            Err(TotalSizeNotMultipleOfSlotSize(128))
        );
        assert_eq!(check(r#"{"total_size_mib":256}"#), Ok(()));
    }
}
