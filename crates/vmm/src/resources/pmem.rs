//! `/pmem/{id}`: virtio-pmem devices. The backing file is opened only at boot, as upstream does.

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterConfig;
use crate::action::VmmActionError;

/// Body of `PUT /pmem/{id}`, and its read-back shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    pub id: String,
    pub path_on_host: String,
    #[serde(default)]
    pub root_device: bool,
    #[serde(default)]
    pub read_only: bool,
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Body of `PATCH /pmem/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
// Upstream's type name: serde spells the Rust name (not a `rename`) in its error texts.
#[serde(deny_unknown_fields)]
pub struct PmemDeviceUpdateConfig {
    pub id: String,
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Why a pmem device was refused (prefix `Pmem config error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmemConfigError {
    #[error("A root pmem device already exist")]
    RootPmemDeviceAlreadyExist,
    #[error("Attempt to add pmem as a root device while the root device defined as a block device")]
    AddingSecondRootDevice,
    #[error(
        "Unable to patch the pmem device: Failed perform action on device: Device not found Please verify the request arguments."
    )]
    DeviceNotFound,
    /// A hot-plugged device's file cannot be opened (upstream opens it at the PUT).
    #[error("Unable to create the virtio-pmem device: Error accessing backing file: {0}")]
    BackingFile(String),
    #[error("Unable to create the virtio-pmem device: Error backing file size is 0")]
    BackingFileEmpty,
    /// QEMU maps pmem in 2 MiB units and would grow the file otherwise (docs/deviations.md).
    #[error(
        "Unable to create the virtio-pmem device: the backing file {path} is {size} bytes long: squib needs a size that is a multiple of 2 MiB"
    )]
    BackingFileSize { path: String, size: u64 },
}

/// virtio-pmem regions are mapped in 2 MiB units.
pub const PMEM_ALIGN: u64 = 2 << 20;

/// Opens a device's backing file the way the engine maps it (read-only when asked) and
/// returns its size, refusing sizes the engine cannot map as they are.
pub(crate) fn backing_file_size(cfg: &PmemConfig) -> Result<u64, PmemConfigError> {
    let size = std::fs::OpenOptions::new()
        .read(true)
        .write(!cfg.read_only)
        .open(&cfg.path_on_host)
        .and_then(|file| file.metadata())
        .map(|meta| meta.len())
        .map_err(|e| PmemConfigError::BackingFile(squib_net::OsError(e).to_string()))?;
    if size == 0 {
        return Err(PmemConfigError::BackingFileEmpty);
    }
    if !size.is_multiple_of(PMEM_ALIGN) {
        return Err(PmemConfigError::BackingFileSize {
            path: cfg.path_on_host.clone(),
            size,
        });
    }
    Ok(size)
}

/// The configured pmem devices, in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PmemDevices {
    list: Vec<PmemConfig>,
}

impl PmemDevices {
    /// Adds or replaces a device; `block_root` says whether a block device is the root.
    pub fn insert(&mut self, cfg: PmemConfig, block_root: bool) -> Result<(), PmemConfigError> {
        // Upstream's order: the block-device root is checked first.
        if cfg.root_device {
            if block_root {
                return Err(PmemConfigError::AddingSecondRootDevice);
            }
            if self.list.iter().any(|p| p.root_device && p.id != cfg.id) {
                return Err(PmemConfigError::RootPmemDeviceAlreadyExist);
            }
        }
        match self.list.iter().position(|p| p.id == cfg.id) {
            Some(i) => self.list[i] = cfg,
            None => self.list.push(cfg),
        }
        Ok(())
    }

    /// `PATCH /pmem/{id}`: a new rate limiter for an existing device.
    pub(crate) fn update_rate_limiter(
        &mut self,
        id: &str,
        limiter: Option<RateLimiterConfig>,
    ) -> Result<(), PmemConfigError> {
        let device = self
            .list
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(PmemConfigError::DeviceNotFound)?;
        if limiter.is_some() {
            device.rate_limiter = limiter;
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&PmemConfig> {
        self.list.iter().find(|p| p.id == id)
    }

    /// Takes the device with this id out (hot-unplug).
    pub fn remove(&mut self, id: &str) -> Option<PmemConfig> {
        let at = self.list.iter().position(|p| p.id == id)?;
        Some(self.list.remove(at))
    }

    pub(crate) fn has_root(&self) -> bool {
        self.list.iter().any(|p| p.root_device)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PmemConfig> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The read-back shapes: as given, so `"rate_limiter":{}` reads back as
    /// `{"bandwidth":null,"ops":null}` (upstream keeps a pmem device's configuration as it
    /// came, where drives and interfaces show a disabled limiter as `null`).
    pub(crate) fn to_configs(&self) -> Vec<PmemConfig> {
        self.list.clone()
    }
}

impl super::VmResources {
    /// `PUT /pmem/{id}`: one root device across drives and pmem.
    pub(crate) fn insert_pmem(&mut self, cfg: PmemConfig) -> Result<(), PmemConfigError> {
        let block_root = self.drives.root().is_some();
        self.pmem.insert(cfg, block_root)
    }

    /// `PUT /pmem/{id}` after boot (hot-plug): a new id, never the root device, and the file
    /// opened here, as upstream does for a hot-plug; its size, for the engine.
    pub(crate) fn pmem_size_for_hotplug(&self, cfg: &PmemConfig) -> Result<u64, VmmActionError> {
        if self.pmem.get(&cfg.id).is_some() {
            return Err(VmmActionError::DeviceIdInUse);
        }
        if cfg.root_device {
            return Err(PmemConfigError::AddingSecondRootDevice.into());
        }
        Ok(backing_file_size(cfg)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pmem(id: &str, root: bool) -> PmemConfig {
        PmemConfig {
            id: id.into(),
            path_on_host: "/p".into(),
            root_device: root,
            ..Default::default()
        }
    }

    #[test]
    fn root_rules() {
        let mut devices = PmemDevices::default();
        devices.insert(pmem("a", true), false).unwrap();
        assert_eq!(
            devices.insert(pmem("b", true), false),
            Err(PmemConfigError::RootPmemDeviceAlreadyExist)
        );
        let mut devices = PmemDevices::default();
        assert_eq!(
            devices.insert(pmem("a", true), true),
            Err(PmemConfigError::AddingSecondRootDevice)
        );
        assert!(devices.is_empty());
        assert_eq!(
            serde_json::to_string(&pmem("a", false)).unwrap(),
            r#"{"id":"a","path_on_host":"/p","root_device":false,"read_only":false,"rate_limiter":null}"#
        );
    }

    #[test]
    fn one_root_device_across_drives_and_pmem() {
        let image = tempfile::NamedTempFile::new().unwrap();
        let mut resources = crate::VmResources::default();
        resources
            .insert_drive(crate::resources::drive::BlockDeviceConfig {
                drive_id: "rootfs".into(),
                is_root_device: true,
                path_on_host: Some(image.path().to_string_lossy().into_owned()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            resources.insert_pmem(pmem("p0", true)),
            Err(PmemConfigError::AddingSecondRootDevice)
        );
        assert!(resources.insert_pmem(pmem("p0", false)).is_ok());

        let mut resources = crate::VmResources::default();
        resources.insert_pmem(pmem("p0", true)).unwrap();
        // Refused before the image is opened.
        let err = resources
            .insert_drive(crate::resources::drive::BlockDeviceConfig {
                drive_id: "rootfs".into(),
                is_root_device: true,
                path_on_host: Some("/r".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(
            err,
            crate::resources::drive::DriveError::AddingSecondRootDevice
        ));
        assert!(resources.drives.is_empty());
    }
}
