//! The resources header of squib's snapshot state file (the container format is
//! `squib_snapshot`'s): what a restore needs to rebuild the same VM, as JSON.

use serde::{Deserialize, Serialize};
use squib_snapshot::{FormatVersion, SnapshotFormatError};

use crate::resources::{VmConfig, VmResources};

/// The resources header: the VM's configuration ([`VmConfig`], re-validated on load like a
/// fresh configuration) and what a restore needs beyond it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateHeader {
    #[serde(flatten)]
    pub config: VmConfig,
    /// The VM ran on the PCI machine (`--enable-pci`): the restore must rebuild it.
    #[serde(default)]
    pub pci_enabled: bool,
    /// The size the guest was asked to plug into its virtio-mem device.
    #[serde(default)]
    pub memory_requested_mib: u32,
    /// Root port (and address, for memory devices) of every device of a PCI machine,
    /// hot-plugged ones included: the restore rebuilds the same machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_layout: Option<crate::resources::pci::PciLayout>,
}

impl StateHeader {
    pub fn from_resources(resources: &VmResources) -> Self {
        Self {
            config: resources.vm_config(),
            pci_enabled: resources.pci_enabled,
            memory_requested_mib: resources.memory_requested_mib,
            pci_layout: resources.pci_layout.clone(),
        }
    }
}

/// A 1.0.0 header in 1.1.0 keys: four keys were snake case, and a restored VM saved its
/// absent boot source as `null` (1.1.0 writes the empty one `GET /vm/config` shows).
fn upgrade_1_0_header(mut header: serde_json::Value) -> serde_json::Value {
    if let Some(object) = header.as_object_mut() {
        for (old, new) in [
            ("machine_config", "machine-config"),
            ("boot_source", "boot-source"),
            ("network_interfaces", "network-interfaces"),
            ("memory_hotplug", "memory-hotplug"),
        ] {
            if let Some(value) = object.remove(old) {
                object.insert(new.to_string(), value);
            }
        }
        if object
            .get("boot-source")
            .is_none_or(serde_json::Value::is_null)
        {
            object.insert(
                "boot-source".to_string(),
                serde_json::to_value(crate::resources::boot_source::BootSourceConfig::default())
                    .unwrap_or_default(),
            );
        }
    }
    header
}

/// A parsed state file.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotState {
    pub version: FormatVersion,
    pub resources: StateHeader,
    /// The engine's device state (QEMU's migration stream).
    pub device_state: Vec<u8>,
}

/// Serializes a state file: this header, then the engine's device state.
pub fn encode(resources: &StateHeader, device_state: &[u8]) -> Vec<u8> {
    // Serializing plain configuration structs into JSON cannot fail.
    let header = serde_json::to_vec(resources).unwrap_or_default();
    squib_snapshot::encode(&header, device_state)
}

/// Parses a state file: the container's checks, then the header (a 1.0.0 one upgraded).
pub fn decode(bytes: &[u8]) -> Result<SnapshotState, SnapshotFormatError> {
    let file = squib_snapshot::decode(bytes)?;
    let serde_error = |e: serde_json::Error| SnapshotFormatError::Serde(e.to_string());
    let resources: StateHeader = if (file.version.major, file.version.minor) == (1, 0) {
        let header = serde_json::from_slice(file.header).map_err(serde_error)?;
        serde_json::from_value(upgrade_1_0_header(header)).map_err(serde_error)?
    } else {
        serde_json::from_slice(file.header).map_err(serde_error)?
    };
    Ok(SnapshotState {
        version: file.version,
        resources,
        device_state: file.device_state.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut resources = StateHeader::from_resources(&VmResources::default());
        let machine = resources.config.machine_config.as_mut().unwrap();
        machine.mem_size_mib = 256;
        machine.vcpu_count = 2;
        let bytes = encode(&resources, b"QEVM\x00stream");
        let state = decode(&bytes).unwrap();
        assert_eq!(state.version, squib_snapshot::SNAPSHOT_VERSION);
        assert_eq!(state.resources, resources);
        assert_eq!(state.device_state, b"QEVM\x00stream");
    }

    #[test]
    fn a_1_0_0_file_is_still_read() {
        let header = br#"{"machine_config":{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"boot_source":null,"drives":[],"network_interfaces":[],"balloon":{"amount_mib":3,"deflate_on_oom":false,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false},"entropy":null,"pci_enabled":true,"memory_hotplug":null,"memory_requested_mib":0,"pmem":[]}"#;
        let mut bytes = squib_snapshot::SNAPSHOT_MAGIC.to_le_bytes().to_vec();
        for part in [1u16, 0, 0] {
            bytes.extend_from_slice(&part.to_le_bytes());
        }
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(b"dev");
        let crc = squib_snapshot::crc64(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let state = decode(&bytes).unwrap();
        assert_eq!(state.version.to_string(), "1.0.0");
        assert_eq!(state.device_state, b"dev");
        let machine = state.resources.config.machine_config.unwrap();
        assert_eq!((machine.vcpu_count, machine.mem_size_mib), (2, 256));
        assert_eq!(state.resources.config.balloon.unwrap().amount_mib, 3);
        assert_eq!(state.resources.config.boot_source, Default::default());
        assert!(state.resources.pci_enabled);
    }

    #[test]
    fn a_header_that_is_not_the_resources_is_a_serde_error() {
        let bytes = squib_snapshot::encode(br#"{"drives":7}"#, b"dev");
        assert!(matches!(decode(&bytes), Err(SnapshotFormatError::Serde(_))));
    }
}
