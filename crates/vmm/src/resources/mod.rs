//! Everything the client has configured for the microVM, and the rules that span resources.
//!
//! One module per configurable resource: its serde shape (the wire format), its error enum
//! (whose display texts are the client-visible messages) and its validated form.

pub mod balloon;
pub mod boot_source;
pub mod cpu_config;
pub mod drive;
pub mod entropy;
pub mod logger;
pub mod machine_config;
pub mod memory_hotplug;
pub mod metrics;
pub mod mmds;
pub mod net;
mod path_string;
pub mod pci;
pub mod pmem;
pub mod rate_limiter;
pub mod serial;
pub mod snapshot;
mod vm_config;
pub mod vsock;

pub use vm_config::{CpuConfigSource, VmConfig};

use crate::action::{DeviceKind, VmmActionError};
use crate::mmds_store::MmdsStore;
use crate::resources::balloon::BalloonDeviceConfig;
use crate::resources::boot_source::BootSource;
use crate::resources::cpu_config::CustomCpuTemplate;
use crate::resources::drive::Drives;
use crate::resources::entropy::EntropyDeviceConfig;
use crate::resources::machine_config::MachineConfig;
use crate::resources::memory_hotplug::MemoryHotplugConfig;
use crate::resources::metrics::Metrics;
use crate::resources::mmds::MmdsConfig;
use crate::resources::net::NetworkInterfaces;
use crate::resources::pmem::PmemDevices;
use crate::resources::serial::SerialConfig;
use crate::resources::vsock::Vsock;

/// Upstream's default MMDS store limit (= the default API payload limit).
pub(crate) const DEFAULT_MMDS_SIZE_LIMIT: usize = 51_200;

/// The VM's configuration; owned by the VMM loop, published read-only to the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmResources {
    pub machine_config: MachineConfig,
    pub boot_source: Option<BootSource>,
    pub drives: Drives,
    pub cpu_config: Option<CustomCpuTemplate>,
    pub net: NetworkInterfaces,
    pub vsock: Option<Vsock>,
    pub balloon: Option<BalloonDeviceConfig>,
    pub entropy: Option<EntropyDeviceConfig>,
    pub pmem: PmemDevices,
    pub serial: Option<SerialConfig>,
    pub metrics: Option<Metrics>,
    /// Version, address and compat mode of the last successful `PUT /mmds/config`; which
    /// interfaces carry MMDS is on each interface.
    pub mmds_config: Option<MmdsConfig>,
    pub mmds: MmdsStore,
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    /// The hot-pluggable memory the guest is asked to plug (`PATCH /hotplug/memory`).
    pub memory_requested_mib: u32,
    /// `--enable-pci`: virtio devices on PCI, and hot-plug after boot.
    pub pci_enabled: bool,
    /// The root port of every device of a running (or snapshotted) PCI machine, as the engine
    /// laid them out at boot and hot-plug changed them since; `None` before boot.
    pub pci_layout: Option<crate::resources::pci::PciLayout>,
}

impl Default for VmResources {
    fn default() -> Self {
        Self {
            machine_config: MachineConfig::default(),
            boot_source: None,
            drives: Drives::default(),
            cpu_config: None,
            net: NetworkInterfaces::default(),
            vsock: None,
            balloon: None,
            entropy: None,
            pmem: PmemDevices::default(),
            serial: None,
            metrics: None,
            mmds_config: None,
            mmds: MmdsStore::new(DEFAULT_MMDS_SIZE_LIMIT),
            memory_hotplug: None,
            memory_requested_mib: 0,
            pci_enabled: false,
            pci_layout: None,
        }
    }
}

impl VmResources {
    /// `DELETE /{drives|network-interfaces|pmem}/{id}`: the device exists and is not the root
    /// device.
    pub(crate) fn check_unplug(&self, kind: DeviceKind, id: &str) -> Result<(), VmmActionError> {
        let root = match kind {
            DeviceKind::Drive => self.drives.get(id).map(|d| d.is_root_device),
            DeviceKind::NetworkInterface => self.net.get(id).map(|_| false),
            DeviceKind::Pmem => self.pmem.get(id).map(|p| p.root_device),
        };
        match root {
            None => Err(VmmActionError::DeviceNotFound),
            Some(true) => Err(VmmActionError::CannotUnplugRootDevice),
            Some(false) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::drive::BlockDeviceConfig;
    use crate::resources::pmem::PmemConfig;

    fn drive(id: &str, root: bool, path: &str) -> BlockDeviceConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": true,
        }))
        .unwrap()
    }

    /// Hot-plug takes new ids and never a root device; unplug only takes a device that
    /// exists and is not the root device. Upstream's texts.
    #[test]
    fn hotplug_and_unplug_rules() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let path = disk.path().to_str().unwrap();
        let mut resources = VmResources::default();
        resources.insert_drive(drive("rootfs", true, path)).unwrap();
        let text = |e: VmmActionError| e.to_string();
        assert_eq!(
            text(
                resources
                    .drive_for_hotplug(drive("rootfs", false, path))
                    .unwrap_err()
            ),
            VmmActionError::DeviceIdInUse.to_string()
        );
        assert!(
            text(
                resources
                    .drive_for_hotplug(drive("data", true, path))
                    .unwrap_err()
            )
            .ends_with("A root block device already exists!")
        );
        assert_eq!(
            resources
                .drive_for_hotplug(drive("data", false, path))
                .unwrap()
                .id,
            "data"
        );
        // A directory, accepted read-only before boot as upstream does, is no disk QEMU can
        // plug: refused at once.
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().to_str().unwrap();
        assert!(
            text(
                resources
                    .drive_for_hotplug(drive("data", false, dir))
                    .unwrap_err()
            )
            .ends_with(&format!("not a regular file or a block device {dir}"))
        );
        let root_pmem = PmemConfig {
            id: "pm0".into(),
            path_on_host: path.into(),
            root_device: true,
            ..Default::default()
        };
        assert!(
            text(resources.pmem_size_for_hotplug(&root_pmem).unwrap_err())
                .ends_with("the root device defined as a block device")
        );

        assert_eq!(
            text(
                resources
                    .check_unplug(DeviceKind::Drive, "rootfs")
                    .unwrap_err()
            ),
            "Cannot unplug root device"
        );
        assert_eq!(
            text(
                resources
                    .check_unplug(DeviceKind::Pmem, "none")
                    .unwrap_err()
            ),
            "Device not found"
        );
        let mut data = drive("data", false, path);
        data.is_root_device = false;
        resources.insert_drive(data).unwrap();
        resources.check_unplug(DeviceKind::Drive, "data").unwrap();
    }
}
