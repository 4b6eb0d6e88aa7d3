//! Where the devices of a PCI machine sit: one PCIe root port per device, and how many ports
//! the machine has. The engine lays cold-plugged devices out at boot; hot-plug and unplug
//! change the layout, and a snapshot keeps it so a restore rebuilds the same machine.

use serde::{Deserialize, Serialize};

use crate::action::DeviceKind;

/// A device's root port on the PCI machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciSlot {
    /// [`device_key`] of the device (or `balloon`, `entropy`, `vsock`, `memory`).
    pub device: String,
    pub port: usize,
    /// Guest-physical address of a memory device (pmem): a restore puts it back there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memaddr: Option<u64>,
}

/// The root ports of a PCI machine and the device in each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciLayout {
    /// Root ports the machine has (used and free).
    pub ports: usize,
    pub devices: Vec<PciSlot>,
    /// Room above the guest's RAM for memory devices (virtio-mem, virtio-pmem), in MiB.
    #[serde(default)]
    pub device_memory_mib: u64,
}

/// The key of a drive, network interface or pmem device in a [`PciLayout`]. Device ids never
/// hold `/`, so keys of different kinds never collide.
pub fn device_key(kind: DeviceKind, id: &str) -> String {
    let kind = match kind {
        DeviceKind::Drive => "drive",
        DeviceKind::NetworkInterface => "net",
        DeviceKind::Pmem => "pmem",
    };
    format!("{kind}/{id}")
}

impl PciLayout {
    pub fn slot(&self, device: &str) -> Option<&PciSlot> {
        self.devices.iter().find(|s| s.device == device)
    }

    pub fn port_of(&self, device: &str) -> Option<usize> {
        self.slot(device).map(|s| s.port)
    }

    /// The lowest port no device holds.
    pub fn free_port(&self) -> Option<usize> {
        (0..self.ports).find(|p| self.devices.iter().all(|s| s.port != *p))
    }

    pub fn remove(&mut self, device: &str) -> Option<PciSlot> {
        let at = self.devices.iter().position(|s| s.device == device)?;
        Some(self.devices.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_the_lowest_unused_and_keys_name_the_kind() {
        let slot = |device: &str, port| PciSlot {
            device: device.into(),
            port,
            memaddr: None,
        };
        let mut layout = PciLayout {
            ports: 3,
            devices: vec![slot("drive/a", 0), slot("net/a", 2)],
            device_memory_mib: 0,
        };
        assert_eq!(device_key(DeviceKind::Drive, "a"), "drive/a");
        assert_eq!(device_key(DeviceKind::Pmem, "a"), "pmem/a");
        assert_eq!(layout.free_port(), Some(1));
        layout.devices.push(slot("pmem/p", 1));
        assert_eq!(layout.free_port(), None);
        assert_eq!(layout.remove("drive/a").map(|s| s.port), Some(0));
        assert_eq!(layout.free_port(), Some(0));
        assert_eq!(layout.port_of("net/a"), Some(2));
    }
}
