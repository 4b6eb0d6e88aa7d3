//! Devices plugged into and out of a running PCI guest: a free PCIe root port, the device's
//! host side (block node, chardev, netdev, memory backend, squib's own net device) and
//! `device_add` over QMP; `device_del`, and the host side taken down once QEMU reports the
//! device gone (`DEVICE_DELETED`), in a task of its own so nobody waits for the guest.
//!
//! QEMU's root ports are hot-plug capable and announce a new device to the guest (ACPI or
//! PCIe native hot-plug), so the guest sees it without a manual rescan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use squib_vmm::action::DeviceKind;
use squib_vmm::engine::NO_FREE_PCI_SLOT;
use squib_vmm::resources::drive::{CacheType, Drive, DriveBackend};
use squib_vmm::resources::net::NetworkInterface;
use squib_vmm::resources::pci::{PciLayout, PciSlot, device_key};
use squib_vmm::resources::pmem::PmemConfig;
use squib_vmm::{EngineError, VmResources};

use crate::net::NetInterface;
use crate::plan::{self, Aio, DriveNames, Machine, VirtioKind};
use crate::throttle::throttle_args;
use squib_qmp::{QmpClient, QmpError};

/// A host-side object a device uses, removed after the device.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Backend {
    Netdev(String),
    Chardev(String),
    Block(String),
    Object(String),
}

/// QEMU's names for one pluggable device.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plugged {
    device: String,
    /// In the order they go away.
    backends: Vec<Backend>,
}

/// What a layout key reads while its device is on its way out: it still holds its port.
const UNPLUGGING: &str = "unplugging:";

/// The PCI machine's ports and the QEMU names of every device that can be unplugged.
pub(crate) struct PciHotplug {
    layout: Arc<Mutex<PciLayout>>,
    names: HashMap<String, Plugged>,
    runtime_dir: PathBuf,
    io_uring: bool,
    /// Cards get no MSI-X (see [`crate::caps::Capabilities::vhost_user_net_pci_needs_intx`]).
    net_intx: bool,
}

fn qmp_error(err: QmpError) -> EngineError {
    EngineError::Failed(err.to_string())
}

/// The QEMU names cold-plugged drives, interfaces and pmem devices got from the command line.
fn cold_names(resources: &VmResources) -> HashMap<String, Plugged> {
    let mut names = HashMap::new();
    for (index, drive) in resources.drives.iter().enumerate() {
        let drive_names = plan::drive_names(index, &drive.id);
        let backend = match drive.backend {
            DriveBackend::File { .. } => Backend::Block(drive_names.node),
            DriveBackend::VhostUser { .. } => Backend::Chardev(plan::vhost_user_chardev_id(index)),
        };
        names.insert(
            device_key(DeviceKind::Drive, &drive.id),
            Plugged {
                device: drive_names.device,
                backends: vec![backend],
            },
        );
    }
    for (index, iface) in resources.net.iter().enumerate() {
        let netdev = plan::netdev_id(index);
        names.insert(
            device_key(DeviceKind::NetworkInterface, &iface.config.iface_id),
            Plugged {
                device: format!("nic{index}"),
                backends: vec![
                    Backend::Netdev(netdev.clone()),
                    Backend::Chardev(format!("{netdev}chr")),
                ],
            },
        );
    }
    for (index, pmem) in resources.pmem.iter().enumerate() {
        names.insert(
            device_key(DeviceKind::Pmem, &pmem.id),
            Plugged {
                device: format!("pmem{index}"),
                backends: vec![Backend::Object(format!("pmem_mem{index}"))],
            },
        );
    }
    names
}

/// QEMU names of a device hot-plugged into `port`: a port is reused only once its last
/// device and that device's host side are gone, so these never collide. Cold-plugged names
/// have no `-`.
fn hot_name(port: usize, what: &str) -> String {
    format!("hp{port}-{what}")
}

impl PciHotplug {
    /// The devices of a guest QEMU has just started with `layout` (see
    /// [`plan::pci_layout`]); hot-plugged sockets go into `runtime_dir`.
    pub(crate) fn new(
        layout: PciLayout,
        resources: &VmResources,
        runtime_dir: &Path,
        io_uring: bool,
        net_intx: bool,
    ) -> Self {
        Self {
            layout: Arc::new(Mutex::new(layout)),
            names: cold_names(resources),
            runtime_dir: runtime_dir.to_path_buf(),
            io_uring,
            net_intx,
        }
    }

    /// The layout as a snapshot must rebuild it: devices on their way out are left out.
    pub(crate) fn layout(&self) -> PciLayout {
        let mut layout = self.locked().clone();
        layout.devices.retain(|s| !s.device.starts_with(UNPLUGGING));
        layout
    }

    /// The devices on their way out: `device_del` sent, `DEVICE_DELETED` not yet arrived.
    pub(crate) fn unplugging(&self) -> Vec<String> {
        self.locked()
            .devices
            .iter()
            .filter_map(|s| s.device.strip_prefix(UNPLUGGING).map(str::to_string))
            .collect()
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, PciLayout> {
        // A panic elsewhere cannot leave the layout half-updated: every change is one call.
        self.layout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads back where QEMU put the memory devices, so a restore puts them there again.
    pub(crate) async fn record_memaddrs(&self, qmp: &QmpClient, resources: &VmResources) {
        let mut ids: Vec<(String, String)> = resources
            .pmem
            .iter()
            .enumerate()
            .map(|(i, p)| (device_key(DeviceKind::Pmem, &p.id), format!("pmem{i}")))
            .collect();
        if resources.memory_hotplug.is_some() {
            ids.push((
                plan::MEMORY_KEY.to_string(),
                plan::MEMORY_HOTPLUG_ID.to_string(),
            ));
        }
        for (key, id) in ids {
            match memaddr(qmp, &id).await {
                Ok(addr) => {
                    if let Some(slot) = self.locked().devices.iter_mut().find(|s| s.device == key) {
                        slot.memaddr = Some(addr);
                    }
                }
                Err(e) => tracing::warn!(%e, device = %id, "cannot read a memory device's address"),
            }
        }
    }

    /// Takes a free port for `key`.
    fn reserve(&self, key: &str) -> Result<usize, EngineError> {
        let mut layout = self.locked();
        let port = layout
            .free_port()
            .ok_or_else(|| EngineError::Failed(NO_FREE_PCI_SLOT.to_string()))?;
        layout.devices.push(PciSlot {
            device: key.to_string(),
            port,
            memaddr: None,
        });
        Ok(port)
    }

    fn release(&self, key: &str) {
        self.locked().remove(key);
    }

    /// Plugs a drive; returns the names of its block node and device for a file drive.
    pub(crate) async fn plug_drive(
        &mut self,
        qmp: &QmpClient,
        drive: &Drive,
    ) -> Result<Option<DriveNames>, EngineError> {
        let key = device_key(DeviceKind::Drive, &drive.id);
        let port = self.reserve(&key)?;
        let device = hot_name(port, "blk");
        match &drive.backend {
            DriveBackend::File {
                path,
                read_only,
                rate_limiter,
                ..
            } => {
                let node = hot_name(port, "drive");
                let aio = if self.io_uring {
                    Aio::of(drive).qemu_name()
                } else {
                    "threads"
                };
                let plugged = Plugged {
                    device: device.clone(),
                    backends: vec![Backend::Block(node.clone())],
                };
                let steps = async {
                    qmp.blockdev_add(json!({
                        "driver": "raw",
                        "node-name": node,
                        "read-only": read_only,
                        "cache": {
                            "direct": false,
                            "no-flush": matches!(drive.cache_type, CacheType::Unsafe),
                        },
                        "file": {
                            "driver": "file",
                            "filename": path,
                            "aio": aio,
                            "locking": "off",
                        },
                    }))
                    .await?;
                    qmp.device_add(device_props(
                        VirtioKind::Block,
                        port,
                        &device,
                        json!({ "drive": node }),
                    ))
                    .await?;
                    if let Some(limiter) = rate_limiter {
                        qmp.block_set_io_throttle(throttle_args(&device, Some(limiter)))
                            .await?;
                    }
                    Ok(())
                };
                self.finish(qmp, key, plugged, steps.await)
                    .await
                    .map(|()| Some(DriveNames { node, device }))
            }
            DriveBackend::VhostUser { .. } => {
                // Its backend connection is squib's descriptor; handing one to QEMU after
                // start-up is not done yet (docs/deviations.md).
                self.release(&key);
                Err(EngineError::Failed(
                    "squib cannot hot-plug vhost-user drives yet".to_string(),
                ))
            }
        }
    }

    /// Plugs a network interface: squib's own virtio-net device for it on a new vhost-user
    /// socket, a chardev and netdev connected to it, and the virtio-net-pci function.
    pub(crate) async fn plug_net(
        &mut self,
        qmp: &QmpClient,
        iface: &NetworkInterface,
    ) -> Result<NetInterface, EngineError> {
        let key = device_key(DeviceKind::NetworkInterface, &iface.config.iface_id);
        let port = self.reserve(&key)?;
        let netdev = hot_name(port, "net");
        let chardev = hot_name(port, "chr");
        let device = hot_name(port, "nic");
        let socket = self.runtime_dir.join(format!("{netdev}.sock"));
        // Hot-plugged interfaces never carry MMDS: `/mmds/config` is pre-boot only.
        let served = match crate::net::serve_device(iface, &netdev, &socket, None) {
            Ok(served) => served,
            Err(e) => {
                self.release(&key);
                return Err(e);
            }
        };
        let mut props = json!({ "netdev": netdev });
        if let Some(mac) = iface.config.guest_mac {
            props["mac"] = json!(mac.to_string());
        }
        if let Some(mtu) = iface.config.mtu {
            props["host_mtu"] = json!(mtu);
        }
        if self.net_intx {
            props["vectors"] = json!(0);
        }
        let plugged = Plugged {
            device: device.clone(),
            backends: vec![
                Backend::Netdev(netdev.clone()),
                Backend::Chardev(chardev.clone()),
            ],
        };
        let steps = async {
            let path = socket.to_str().ok_or_else(|| QmpError::Command {
                command: "chardev-add",
                message: format!("the socket path {} is not UTF-8", socket.display()),
            })?;
            qmp.chardev_add_unix_client(&chardev, path).await?;
            qmp.netdev_add(json!({ "type": "vhost-user", "id": netdev, "chardev": chardev }))
                .await?;
            qmp.device_add(device_props(VirtioKind::Net, port, &device, props))
                .await
        };
        self.finish(qmp, key, plugged, steps.await)
            .await
            .map(|()| served)
    }

    /// Plugs a pmem device over its backing file (`size` bytes, checked by the VMM).
    pub(crate) async fn plug_pmem(
        &mut self,
        qmp: &QmpClient,
        pmem: &PmemConfig,
        size: u64,
    ) -> Result<(), EngineError> {
        let key = device_key(DeviceKind::Pmem, &pmem.id);
        let port = self.reserve(&key)?;
        let memdev = hot_name(port, "pmem-mem");
        let device = hot_name(port, "pmem");
        let plugged = Plugged {
            device: device.clone(),
            backends: vec![Backend::Object(memdev.clone())],
        };
        let steps = async {
            qmp.object_add(json!({
                "qom-type": "memory-backend-file",
                "id": memdev,
                "mem-path": pmem.path_on_host,
                "size": size,
                "share": true,
                "readonly": pmem.read_only,
            }))
            .await?;
            qmp.device_add(device_props(
                VirtioKind::Pmem,
                port,
                &device,
                json!({ "memdev": memdev }),
            ))
            .await?;
            memaddr(qmp, &device).await
        };
        let addr = steps.await;
        let (result, addr) = match addr {
            Ok(addr) => (Ok(()), Some(addr)),
            Err(e) => (Err(e), None),
        };
        self.finish(qmp, key.clone(), plugged, result).await?;
        if let Some(slot) = self.locked().devices.iter_mut().find(|s| s.device == key) {
            slot.memaddr = addr;
        }
        Ok(())
    }

    /// Records a plugged device, or takes down what a failed plug left behind.
    async fn finish(
        &mut self,
        qmp: &QmpClient,
        key: String,
        plugged: Plugged,
        result: Result<(), QmpError>,
    ) -> Result<(), EngineError> {
        match result {
            Ok(()) => {
                self.names.insert(key, plugged);
                Ok(())
            }
            Err(err) => {
                // Nothing the guest saw: the device never got added, or is removed at once
                // (a failed step after `device_add` is a rate limit, which never fails on
                // a device QEMU just created).
                let _ = qmp.device_del(&plugged.device).await;
                remove_backends(qmp, &plugged.backends).await;
                self.release(&key);
                Err(qmp_error(err))
            }
        }
    }

    /// Asks the guest to release the device `key`; once QEMU reports it gone, its host side
    /// goes (with `keep_alive`, e.g. its net device), and its port becomes free.
    pub(crate) async fn unplug(
        &mut self,
        qmp: &Arc<QmpClient>,
        key: &str,
        keep_alive: Option<NetInterface>,
    ) -> Result<(), (EngineError, Option<NetInterface>)> {
        let Some(plugged) = self.names.get(key).cloned() else {
            return Err((EngineError::DeviceNotFound, keep_alive));
        };
        let mut deleted = qmp.deleted_devices();
        if let Err(e) = qmp.device_del(&plugged.device).await {
            return Err((qmp_error(e), keep_alive));
        }
        self.names.remove(key);
        let leaving = format!("{UNPLUGGING}{key}");
        if let Some(slot) = self.locked().devices.iter_mut().find(|s| s.device == key) {
            slot.device = leaving.clone();
        }
        let qmp = qmp.clone();
        let layout = self.layout.clone();
        tokio::spawn(async move {
            loop {
                match deleted.recv().await {
                    Ok(id) if id == plugged.device => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    // QEMU is gone: so is everything the device had.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            tracing::info!(device = %plugged.device, "the guest released the device");
            remove_backends(&qmp, &plugged.backends).await;
            drop(keep_alive);
            layout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&leaving);
        });
        Ok(())
    }
}

/// Removes backends in order; a failure is logged (the device is gone either way).
async fn remove_backends(qmp: &QmpClient, backends: &[Backend]) {
    for backend in backends {
        let result = match backend {
            Backend::Netdev(id) => qmp.netdev_del(id).await,
            Backend::Chardev(id) => qmp.chardev_remove(id).await,
            Backend::Block(node) => qmp.blockdev_del(node).await,
            Backend::Object(id) => qmp.object_del(id).await,
        };
        if let Err(e) = result {
            tracing::debug!(%e, ?backend, "cannot remove a device's host side");
        }
    }
}

/// The guest-physical address QEMU gave the memory device `id`.
async fn memaddr(qmp: &QmpClient, id: &str) -> Result<u64, QmpError> {
    let value = qmp
        .qom_get(&format!("/machine/peripheral/{id}"), "memaddr")
        .await?;
    value.as_u64().ok_or(QmpError::Command {
        command: "qom-get",
        message: format!("unexpected memaddr {value}"),
    })
}

/// `device_add` arguments for a `kind` device with id `id` in root port `port`.
fn device_props(kind: VirtioKind, port: usize, id: &str, extra: Value) -> Value {
    let mut props = json!({
        "driver": Machine::Q35.device_type(kind).unwrap_or("virtio-device-unavailable"),
        "bus": plan::root_port_id(port),
        "id": id,
    });
    if kind == VirtioKind::Net {
        // No option ROM, as for cold-plugged cards.
        props["romfile"] = json!("");
    }
    if let (Some(props), Value::Object(extra)) = (props.as_object_mut(), extra) {
        props.extend(extra);
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_plugged_devices_get_port_names_and_pci_properties() {
        assert_eq!(hot_name(3, "blk"), "hp3-blk");
        assert_eq!(
            device_props(
                VirtioKind::Net,
                2,
                "hp2-nic",
                json!({ "netdev": "hp2-net" })
            ),
            json!({
                "driver": "virtio-net-pci",
                "bus": "rp2",
                "id": "hp2-nic",
                "romfile": "",
                "netdev": "hp2-net",
            })
        );
        assert_eq!(
            device_props(VirtioKind::Pmem, 0, "hp0-pmem", json!({ "memdev": "m" }))["driver"],
            "virtio-pmem-pci"
        );
    }

    #[test]
    fn a_full_machine_refuses_with_upstreams_text() {
        let hotplug = PciHotplug::new(
            PciLayout {
                ports: 1,
                devices: vec![PciSlot {
                    device: "drive/a".into(),
                    port: 0,
                    memaddr: None,
                }],
                device_memory_mib: 0,
            },
            &VmResources::default(),
            Path::new("/nonexistent"),
            true,
            false,
        );
        assert_eq!(
            hotplug.reserve("drive/b").unwrap_err().to_string(),
            NO_FREE_PCI_SLOT
        );
        hotplug.release("drive/a");
        assert_eq!(hotplug.reserve("drive/b").unwrap(), 0);
        assert_eq!(hotplug.layout().port_of("drive/b"), Some(0));
    }
}
