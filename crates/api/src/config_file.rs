//! `--config-file`: the JSON document is turned into the same actions the HTTP API sends,
//! in a fixed order, and replayed through the same controller; `InstanceStart` comes last.

use serde::Deserialize;
use serde_json::Value;
use squib_vmm::VmmAction;
use squib_vmm::config::boot_source::BootSourceConfig;
use squib_vmm::config::drive::BlockDeviceConfig;
use squib_vmm::config::machine_config::MachineConfig;

use crate::controller::{Controller, DispatchError};

/// Top-level keys upstream knows but squib does not handle yet: refusing them beats ignoring.
const NOT_YET_SUPPORTED: &[&str] = &[
    "cpu-config",
    "network-interfaces",
    "vsock",
    "balloon",
    "mmds-config",
    "entropy",
    "pmem",
    "memory-hotplug",
    "logger",
    "metrics",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("Invalid config file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{0}` in the config file is not supported by squib yet.")]
    Unsupported(String),
    #[error("{0}")]
    Action(String),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// The sections squib reads. Unknown top-level keys are ignored, as upstream does.
#[derive(Deserialize)]
struct VmConfigFile {
    #[serde(rename = "boot-source")]
    boot_source: BootSourceConfig,
    drives: Vec<BlockDeviceConfig>,
    #[serde(rename = "machine-config")]
    machine_config: Option<MachineConfig>,
}

/// Parses the document into the actions that configure and boot the VM, in replay order.
pub fn actions_from_json(text: &str) -> Result<Vec<VmmAction>, ConfigFileError> {
    let document: Value = serde_json::from_str(text)?;
    if let Some(key) = NOT_YET_SUPPORTED
        .iter()
        .find(|key| document.get(**key).is_some_and(|v| !v.is_null()))
    {
        return Err(ConfigFileError::Unsupported((*key).to_string()));
    }
    let file: VmConfigFile = serde_json::from_value(document)?;
    let mut actions = Vec::new();
    if let Some(machine_config) = file.machine_config {
        actions.push(VmmAction::PutMachineConfig(machine_config));
    }
    actions.push(VmmAction::ConfigureBootSource(file.boot_source));
    actions.extend(file.drives.into_iter().map(VmmAction::InsertBlockDevice));
    actions.push(VmmAction::StartMicroVm);
    Ok(actions)
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
    fn required_and_unsupported_sections() {
        let err = actions_from_json(r#"{"drives":[]}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `boot-source`"),
            "{err}"
        );
        let err = actions_from_json(
            r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[],"vsock":{}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`vsock` in the config file is not supported by squib yet."
        );
    }
}
