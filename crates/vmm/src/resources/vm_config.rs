//! [`VmConfig`]: the whole configuration as one document, in upstream's keys and order. It is
//! the body of `GET /vm/config`, the `--config-file` document and the resource header of the
//! snapshot state file: the resource list is written once, here.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::VmResources;
use super::balloon::BalloonDeviceConfig;
use super::boot_source::BootSourceConfig;
use super::drive::BlockDeviceConfig;
use super::entropy::EntropyDeviceConfig;
use super::logger::LoggerConfig;
use super::machine_config::MachineConfig;
use super::memory_hotplug::MemoryHotplugConfig;
use super::metrics::MetricsConfig;
use super::mmds::{MmdsConfig, MmdsConfigRequest};
use super::net::NetworkInterfaceConfig;
use super::pmem::PmemConfig;
use super::vsock::VsockDeviceConfig;

/// The VM configuration document. Unknown top-level keys are ignored, as upstream does
/// (`serial` among them: it cannot be set through the file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    pub balloon: Option<BalloonDeviceConfig>,
    pub drives: Vec<BlockDeviceConfig>,
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceConfig,
    /// Read from `--config-file` only: upstream never shows the CPU template, the logger or
    /// metrics here, so they are written as `null`.
    #[serde(rename = "cpu-config", serialize_with = "as_null")]
    pub cpu_config: Option<CpuConfigSource>,
    #[serde(serialize_with = "as_null")]
    pub logger: Option<LoggerConfig>,
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfig>,
    #[serde(serialize_with = "as_null")]
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfigRequest>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    pub vsock: Option<VsockDeviceConfig>,
    pub entropy: Option<EntropyDeviceConfig>,
    #[serde(default)]
    pub pmem: Vec<PmemConfig>,
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
}

/// `cpu-config` in a config file: the template itself, or the path of a JSON file holding it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CpuConfigSource {
    Path(String),
    Inline(Value),
}

fn as_null<T, S: Serializer>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

impl From<MmdsConfig> for MmdsConfigRequest {
    fn from(config: MmdsConfig) -> Self {
        Self {
            version: Some(config.version),
            network_interfaces: config.network_interfaces,
            ipv4_address: Some(config.ipv4_address),
            imds_compat: config.imds_compat,
        }
    }
}

impl VmResources {
    /// The configuration as upstream shows it: devices in their read-back shapes, an empty
    /// boot source when none is set (after a restore), MMDS only while an interface carries it.
    pub fn vm_config(&self) -> VmConfig {
        VmConfig {
            balloon: self.balloon,
            drives: self.drives.iter().map(|d| d.to_config()).collect(),
            boot_source: self
                .boot_source
                .as_ref()
                .map(|b| b.config.clone())
                .unwrap_or_default(),
            cpu_config: None,
            logger: None,
            machine_config: Some(self.machine_config.clone()),
            metrics: None,
            mmds_config: self.effective_mmds_config().map(Into::into),
            network_interfaces: self.net.iter().map(|n| n.to_config()).collect(),
            vsock: self.vsock.as_ref().map(|v| v.config.clone()),
            entropy: self.entropy.map(EntropyDeviceConfig::to_config),
            pmem: self.pmem.to_configs(),
            memory_hotplug: self.memory_hotplug,
        }
    }

    /// The body of `GET /vm/config`, as compact JSON.
    pub fn full_config_json(&self) -> String {
        serde_json::to_string(&self.vm_config()).unwrap_or_default()
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

    #[test]
    fn a_written_config_reads_back_the_same() {
        let mut resources = VmResources::default();
        resources.machine_config.vcpu_count = 2;
        resources.balloon = Some(BalloonDeviceConfig {
            amount_mib: 7,
            ..Default::default()
        });
        let config = resources.vm_config();
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), config);
    }
}
