//! `PUT /drives|/network-interfaces|/pmem` and `DELETE` on a running PCI guest: the
//! resources' hot-plug rules (upstream's texts), then the engine plugs or unplugs; the VM's resources follow, so
//! `GET /vm/config` and snapshots see the devices the guest has.

use super::Vmm;
use crate::action::{ActionResult, DeviceKind, VmmActionError, VmmData};
use crate::engine::{Engine, HotplugDevice, RunningVm};
use crate::resources::drive::BlockDeviceConfig;
use crate::resources::net::NetworkInterfaceConfig;
use crate::resources::pmem::PmemConfig;

impl<E: Engine> Vmm<E> {
    /// `PUT /drives/{id}` after boot.
    pub(super) async fn hotplug_drive(&mut self, cfg: BlockDeviceConfig) -> ActionResult {
        let drive = self.resources.drive_for_hotplug(cfg)?;
        self.running_vm()?
            .hotplug(HotplugDevice::Drive(&drive))
            .await
            .map_err(VmmActionError::PciManager)?;
        // Not a root device and a new id: the insert cannot fail.
        self.resources.drives.insert(drive)?;
        self.pci_changed();
        Ok(VmmData::Empty)
    }

    /// `PUT /network-interfaces/{id}` after boot: the TAP is opened (and the MAC checked) as
    /// before boot, then the engine serves and plugs the card.
    pub(super) async fn hotplug_net(&mut self, cfg: NetworkInterfaceConfig) -> ActionResult {
        let id = cfg.iface_id.clone();
        self.resources.insert_hotplugged_net(cfg, &self.open_tap)?;
        let Some(iface) = self.resources.net.get(&id).cloned() else {
            return Err(VmmActionError::DeviceNotFound);
        };
        let plugged = match self.vm.as_mut() {
            Some(vm) => vm
                .hotplug(HotplugDevice::Net(&iface))
                .await
                .map_err(VmmActionError::PciManager),
            None => Err(VmmActionError::OperationNotSupportedPreBoot),
        };
        if let Err(e) = plugged {
            // Closes the TAP again.
            self.resources.net.remove(&id);
            return Err(e);
        }
        self.pci_changed();
        Ok(VmmData::Empty)
    }

    /// `PUT /pmem/{id}` after boot: the file is opened here, as upstream does for a hot-plug.
    pub(super) async fn hotplug_pmem(&mut self, cfg: PmemConfig) -> ActionResult {
        let size = self.resources.pmem_size_for_hotplug(&cfg)?;
        self.running_vm()?
            .hotplug(HotplugDevice::Pmem(&cfg, size))
            .await
            .map_err(VmmActionError::PciManager)?;
        self.resources.pmem.insert(cfg, false)?;
        self.pci_changed();
        Ok(VmmData::Empty)
    }

    /// `DELETE /{drives|network-interfaces|pmem}/{id}`: the guest is asked to release the
    /// device and the call returns; the engine takes its host side down once it has.
    pub(super) async fn unplug(&mut self, kind: DeviceKind, id: String) -> ActionResult {
        self.resources.check_unplug(kind, &id)?;
        self.running_vm()?
            .unplug(kind, &id)
            .await
            .map_err(VmmActionError::PciManager)?;
        match kind {
            DeviceKind::Drive => drop(self.resources.drives.remove(&id)),
            DeviceKind::NetworkInterface => drop(self.resources.net.remove(&id)),
            DeviceKind::Pmem => drop(self.resources.pmem.remove(&id)),
        }
        self.pci_changed();
        Ok(VmmData::Empty)
    }

    /// After a plug or unplug: the new port layout, and metrics sections for the devices
    /// the guest now has.
    fn pci_changed(&mut self) {
        if let Some(vm) = self.vm.as_ref() {
            self.resources.pci_layout = vm.pci_layout();
        }
        self.register_device_metrics();
    }
}
