//! Everything the client has configured for the microVM, and the rules that span resources.

use serde::Serialize;
use serde_json::Value;

use crate::config::boot_source::{BootSource, BootSourceConfig};
use crate::config::drive::{BlockDeviceConfig, Drives};
use crate::config::machine_config::MachineConfig;

/// The VM's configuration; owned by the VMM loop, published read-only to the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmResources {
    pub machine_config: MachineConfig,
    pub boot_source: Option<BootSource>,
    pub drives: Drives,
}

/// `GET /vm/config`: upstream's keys, in upstream's order, null when absent.
#[derive(Serialize)]
struct FullVmConfig<'a> {
    balloon: Option<Value>,
    drives: Vec<BlockDeviceConfig>,
    #[serde(rename = "boot-source")]
    boot_source: BootSourceConfig,
    #[serde(rename = "cpu-config")]
    cpu_config: Option<Value>,
    logger: Option<Value>,
    #[serde(rename = "machine-config")]
    machine_config: &'a MachineConfig,
    metrics: Option<Value>,
    #[serde(rename = "mmds-config")]
    mmds_config: Option<Value>,
    #[serde(rename = "network-interfaces")]
    network_interfaces: Vec<Value>,
    vsock: Option<Value>,
    entropy: Option<Value>,
    pmem: Vec<Value>,
    #[serde(rename = "memory-hotplug")]
    memory_hotplug: Option<Value>,
}

impl VmResources {
    /// The body of `GET /vm/config`, as compact JSON.
    pub fn full_config_json(&self) -> String {
        let view = FullVmConfig {
            balloon: None,
            drives: self.drives.iter().map(|d| d.to_config()).collect(),
            boot_source: self
                .boot_source
                .as_ref()
                .map(|b| b.config.clone())
                .unwrap_or_default(),
            cpu_config: None,
            logger: None,
            machine_config: &self.machine_config,
            metrics: None,
            mmds_config: None,
            network_interfaces: Vec::new(),
            vsock: None,
            entropy: None,
            pmem: Vec::new(),
            memory_hotplug: None,
        };
        serde_json::to_string(&view).expect("the VM config view always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_vm_config_has_upstream_keys_in_order() {
        assert_eq!(
            VmResources::default().full_config_json(),
            concat!(
                r#"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"#,
                r#""cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"#,
                r#""metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null,"pmem":[],"memory-hotplug":null}"#
            )
        );
    }
}
