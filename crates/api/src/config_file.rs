//! `--config-file`: the JSON document is turned into the same actions the HTTP API sends,
//! in a fixed order, and replayed through the same controller; `InstanceStart` comes last.

use squib_vmm::VmmAction;
use squib_vmm::resources::cpu_config::CustomCpuTemplate;
use squib_vmm::resources::{CpuConfigSource, VmConfig};

use crate::controller::{Controller, DispatchError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("Invalid config file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("Unable to read the CPU template file {0}: {1}")]
    CpuTemplateFile(String, std::io::Error),
    #[error("{0}")]
    Action(String),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// Parses the document into the actions that configure and boot the VM, in upstream's order
/// (logger, metrics, machine, CPU, kernel, drives, net, vsock, balloon, MMDS, entropy, pmem,
/// memory hotplug); `InstanceStart` comes last.
pub fn actions_from_json(text: &str) -> Result<Vec<VmmAction>, ConfigFileError> {
    let file: VmConfig = serde_json::from_str(text)?;
    let mut actions = Vec::new();
    actions.extend(file.logger.map(VmmAction::ConfigureLogger));
    actions.extend(file.metrics.map(VmmAction::ConfigureMetrics));
    actions.extend(file.machine_config.map(VmmAction::PutMachineConfig));
    if let Some(source) = file.cpu_config {
        let value = match source {
            CpuConfigSource::Inline(value) => value,
            CpuConfigSource::Path(path) => {
                let text = read_template(&path)
                    .map_err(|e| ConfigFileError::CpuTemplateFile(path.clone(), e))?;
                serde_json::from_str(&text)?
            }
        };
        let template: CustomCpuTemplate = serde_json::from_value(value)?;
        actions.push(VmmAction::PutCpuConfiguration(template));
    }
    actions.push(VmmAction::ConfigureBootSource(file.boot_source));
    actions.extend(file.drives.into_iter().map(VmmAction::InsertBlockDevice));
    actions.extend(
        file.network_interfaces
            .into_iter()
            .map(VmmAction::InsertNetworkDevice),
    );
    actions.extend(file.vsock.map(VmmAction::SetVsockDevice));
    actions.extend(file.balloon.map(VmmAction::SetBalloonDevice));
    actions.extend(file.mmds_config.map(VmmAction::SetMmdsConfiguration));
    actions.extend(file.entropy.map(VmmAction::SetEntropyDevice));
    actions.extend(file.pmem.into_iter().map(VmmAction::InsertPmemDevice));
    actions.extend(file.memory_hotplug.map(VmmAction::SetMemoryHotplug));
    actions.push(VmmAction::StartMicroVm);
    Ok(actions)
}

/// A CPU template is a few KiB; more than this is not one.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

// Reads a template file: a regular file only (a FIFO or a device would stall or flood the
// start), and at most MAX_TEMPLATE_BYTES of it.
fn read_template(path: &str) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TEMPLATE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_TEMPLATE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Configures and boots the VM from the document; stops at the first failure.
pub async fn replay(controller: &Controller, text: &str) -> Result<(), ConfigFileError> {
    for action in actions_from_json(text)? {
        controller
            .execute(action)
            .await?
            .map_err(|e| ConfigFileError::Action(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_template_path_must_be_a_small_regular_file() {
        let doc = |path: &str| {
            format!(
                r#"{{"boot-source":{{"kernel_image_path":"/k"}},"drives":[],"cpu-config":"{path}"}}"#
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("t.json");
        std::fs::write(&good, r#"{"kvm_capabilities":[]}"#).unwrap();
        assert!(actions_from_json(&doc(good.to_str().unwrap())).is_ok());
        // A device (or a FIFO) is refused without reading from it.
        let err = actions_from_json(&doc("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_TEMPLATE_BYTES + 1) as usize]).unwrap();
        let err = actions_from_json(&doc(big.to_str().unwrap())).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn fixed_order_with_start_last() {
        let actions = actions_from_json(
            r#"{"drives":[{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/r"}],
                "machine-config":{"vcpu_count":2,"mem_size_mib":256},
                "boot-source":{"kernel_image_path":"/k"},
                "unknown-key":1}"#,
        )
        .unwrap();
        let names: Vec<_> = actions.iter().map(VmmAction::name).collect();
        assert_eq!(
            names,
            [
                "PutMachineConfig",
                "ConfigureBootSource",
                "InsertBlockDevice",
                "InstanceStart"
            ]
        );
    }

    #[test]
    fn required_sections_and_full_order() {
        let err = actions_from_json(r#"{"drives":[]}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `boot-source`"),
            "{err}"
        );
        let actions = actions_from_json(
            r#"{"memory-hotplug":{"total_size_mib":128},"pmem":[{"id":"p","path_on_host":"/p"}],
                "entropy":{},"mmds-config":{"network_interfaces":["eth0"]},
                "balloon":{"amount_mib":1,"deflate_on_oom":false},
                "vsock":{"guest_cid":3,"uds_path":"/v"},
                "network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0"}],
                "drives":[],"boot-source":{"kernel_image_path":"/k"},
                "cpu-config":{"kvm_capabilities":[]},
                "machine-config":{"vcpu_count":1,"mem_size_mib":128},
                "metrics":{"metrics_path":"/m"},"logger":{"level":"Debug"},
                "serial":{"serial_out_path":"/s"}}"#,
        )
        .unwrap();
        let names: Vec<_> = actions.iter().map(VmmAction::name).collect();
        assert_eq!(
            names,
            [
                "ConfigureLogger",
                "ConfigureMetrics",
                "PutMachineConfig",
                "PutCpuConfiguration",
                "ConfigureBootSource",
                "InsertNetworkDevice",
                "SetVsockDevice",
                "SetBalloonDevice",
                "SetMmdsConfiguration",
                "SetEntropyDevice",
                "InsertPmemDevice",
                "SetMemoryHotplugDevice",
                "InstanceStart"
            ]
        );
        let err = actions_from_json(
            r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[],"vsock":{"x":1}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
    }
}
