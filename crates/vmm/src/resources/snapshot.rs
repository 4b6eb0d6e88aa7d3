//! `/snapshot/create` and `/snapshot/load`: request shapes, the memory-backend rule, and the
//! resources a load rebuilds from a state file through the rules of their endpoints.

use serde::Deserialize;
use squib_net::tap::TapOpener;

use super::VmResources;
use super::machine_config::{HugePages, MachineConfig};
use super::net::NetworkInterfaceConfig;
use super::vm_config::VmConfig;
use crate::action::LoadSnapshotError;
use crate::snapshot_file::StateHeader;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    Diff,
    #[default]
    Full,
}

/// Body of `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    #[serde(deserialize_with = "super::path_string::required")]
    pub snapshot_path: String,
    #[serde(deserialize_with = "super::path_string::required")]
    pub mem_file_path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    File,
    Uffd,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendConfig {
    #[serde(deserialize_with = "super::path_string::required")]
    pub backend_path: String,
    pub backend_type: MemBackendType,
}

/// Unknown fields are accepted here, as upstream does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// Unknown fields are accepted here, as upstream does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VsockOverride {
    pub uds_path: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotHugePages {
    #[default]
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Body of `PUT /snapshot/load` as sent, deprecated fields included.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSnapshotConfig {
    #[serde(deserialize_with = "super::path_string::required")]
    pub snapshot_path: String,
    #[serde(default, deserialize_with = "super::path_string::optional")]
    pub mem_file_path: Option<String>,
    pub mem_backend: Option<MemBackendConfig>,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    pub vsock_override: Option<VsockOverride>,
    #[serde(default)]
    pub clock_realtime: bool,
    #[serde(default)]
    pub huge_pages: SnapshotHugePages,
}

/// A load request with exactly one memory backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSnapshotParams {
    pub snapshot_path: String,
    pub mem_backend: MemBackendConfig,
    pub track_dirty_pages: bool,
    pub resume_vm: bool,
    pub network_overrides: Vec<NetworkOverride>,
    pub vsock_override: Option<VsockOverride>,
    pub clock_realtime: bool,
    pub huge_pages: SnapshotHugePages,
}

pub(crate) const TOO_MANY_MEM_FIELDS: &str =
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required";
pub(crate) const MISSING_MEM_FIELD: &str =
    "missing field: either `mem_backend` or `mem_file_path` is required";

impl LoadSnapshotConfig {
    /// `mem_file_path` or `enable_diff_snapshots` were used (docs/api-contract.md §3.6).
    pub fn is_deprecated(&self) -> bool {
        self.mem_file_path.is_some() || self.enable_diff_snapshots
    }

    /// Applies the one-backend rule; the error is serde-level text, as upstream reports it.
    pub fn into_params(self) -> Result<LoadSnapshotParams, &'static str> {
        let mem_backend = match (self.mem_backend, self.mem_file_path) {
            (Some(_), Some(_)) => return Err(TOO_MANY_MEM_FIELDS),
            (None, None) => return Err(MISSING_MEM_FIELD),
            (Some(backend), None) => backend,
            (None, Some(path)) => MemBackendConfig {
                backend_path: path,
                backend_type: MemBackendType::File,
            },
        };
        Ok(LoadSnapshotParams {
            snapshot_path: self.snapshot_path,
            mem_backend,
            track_dirty_pages: self.track_dirty_pages || self.enable_diff_snapshots,
            resume_vm: self.resume_vm,
            network_overrides: self.network_overrides,
            vsock_override: self.vsock_override,
            clock_realtime: self.clock_realtime,
            huge_pages: self.huge_pages,
        })
    }
}

impl VmResources {
    /// The resources of the restored VM: the snapshot's device set (re-validated, overrides
    /// applied), over what the client set before the load (logger, metrics, serial, MMDS
    /// data). The boot source is empty, as upstream reports it after a restore.
    pub(crate) fn restored(
        &self,
        header: &StateHeader,
        params: &LoadSnapshotParams,
        open_tap: &TapOpener,
    ) -> Result<VmResources, LoadSnapshotError> {
        let saved = &header.config;
        // The file is as untrusted as an API body: everything in it is validated like one.
        let invalid = |what: String| {
            LoadSnapshotError::SnapshotState(format!("Invalid snapshot content: {what}"))
        };
        let saved_machine = MachineConfig::default()
            .updated(&saved.machine_config.clone().unwrap_or_default().into())
            .map_err(|e| invalid(format!("machine configuration: {e}")))?;
        if saved_machine.mem_bytes().is_none() {
            return Err(invalid(format!(
                "a memory size of {} MiB",
                saved_machine.mem_size_mib
            )));
        }
        if let Some(balloon) = &saved.balloon {
            balloon
                .validate(saved_machine.mem_size_mib)
                .map_err(|e| invalid(format!("balloon: {e}")))?;
        }
        let huge_pages = match params.huge_pages {
            SnapshotHugePages::Snapshot => saved_machine.huge_pages,
            SnapshotHugePages::None => HugePages::None,
            SnapshotHugePages::Transparent => HugePages::Transparent,
            SnapshotHugePages::Hugetlbfs2M => HugePages::Hugetlbfs2M,
        };
        if huge_pages == HugePages::Hugetlbfs2M {
            return Err(LoadSnapshotError::GuestMemory(
                "Cannot restore hugetlbfs backed snapshot by mapping the memory file. Please use uffd."
                    .into(),
            ));
        }
        if params.vsock_override.is_some() {
            // squib's engine never runs a vsock device, so no snapshot carries one.
            return Err(LoadSnapshotError::SnapshotState(
                "Unknown Vsock Device.".into(),
            ));
        }
        let mut interfaces = saved.network_interfaces.clone();
        for o in &params.network_overrides {
            let iface = interfaces
                .iter_mut()
                .find(|i| i.iface_id == o.iface_id)
                .ok_or_else(|| {
                    LoadSnapshotError::SnapshotState("Unknown Network Device.".into())
                })?;
            iface.host_dev_name = o.host_dev_name.clone();
        }

        let mut resources = VmResources {
            machine_config: MachineConfig {
                vcpu_count: saved_machine.vcpu_count,
                mem_size_mib: saved_machine.mem_size_mib,
                track_dirty_pages: params.track_dirty_pages,
                huge_pages,
                ..MachineConfig::default()
            },
            boot_source: None,
            // The guest keeps the CPU it was saved with (the engine's device state records
            // it); like upstream, the restored VM reports no template.
            cpu_config: None,
            balloon: saved.balloon,
            entropy: saved.entropy,
            pci_enabled: header.pci_enabled,
            pci_layout: header.pci_layout.clone(),
            memory_hotplug: saved.memory_hotplug,
            memory_requested_mib: header.memory_requested_mib,
            // The devices are added below, through the rules the API applies.
            drives: Default::default(),
            pmem: Default::default(),
            net: Default::default(),
            ..self.clone()
        };
        resources
            .add_saved_devices(saved, interfaces, open_tap)
            .map_err(invalid)?;
        Ok(resources)
    }

    /// Adds the devices of a snapshot's configuration (`interfaces` with the load's overrides
    /// applied) and checks its memory hot-plug through the rules the API applies: a state
    /// file is as untrusted as an API body. The text names the device and the broken rule.
    fn add_saved_devices(
        &mut self,
        saved: &VmConfig,
        interfaces: Vec<NetworkInterfaceConfig>,
        open_tap: &TapOpener,
    ) -> Result<(), String> {
        if let Some(hotplug) = &saved.memory_hotplug {
            hotplug
                .validate()
                .map_err(|e| format!("memory hot-plug: {e}"))?;
        }
        if self.memory_requested_mib != 0 {
            self.check_memory_hotplug_request(self.memory_requested_mib)
                .map_err(|e| format!("memory hot-plug: {e}"))?;
        }
        for cfg in &saved.drives {
            let id = cfg.drive_id.clone();
            self.insert_drive(cfg.clone())
                .map_err(|e| format!("drive {id}: {e}"))?;
        }
        for cfg in &saved.pmem {
            let id = cfg.id.clone();
            self.insert_pmem(cfg.clone())
                .map_err(|e| format!("pmem {id}: {e}"))?;
        }
        for cfg in interfaces {
            let id = cfg.iface_id.clone();
            self.net
                .insert(cfg, open_tap)
                .map_err(|e| format!("network interface {id}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// An empty configuration with the keys of `json` put over it.
    fn saved(json: &str) -> VmConfig {
        let mut config = serde_json::to_value(VmConfig::default()).unwrap();
        let edits: serde_json::Map<String, Value> = serde_json::from_str(json).unwrap();
        config.as_object_mut().unwrap().extend(edits);
        serde_json::from_value(config).unwrap()
    }

    fn add(saved: &VmConfig) -> Result<VmResources, String> {
        let open: squib_net::tap::TapOpener =
            std::sync::Arc::new(|name: &str| Ok(squib_net::tap::TapHandle::detached(name)));
        let mut resources = VmResources::default();
        let interfaces = saved.network_interfaces.clone();
        resources.add_saved_devices(saved, interfaces, &open)?;
        Ok(resources)
    }

    /// A crafted state file meets the rules a client meets: one root device across drives and
    /// pmem, one MAC per interface, a valid memory hot-plug device.
    /// The whole restore refuses a crafted header with the load's error, and builds the
    /// saved VM from a sound one.
    #[test]
    fn restored_resources_follow_the_rules() {
        let open: TapOpener =
            std::sync::Arc::new(|name: &str| Ok(squib_net::tap::TapHandle::detached(name)));
        let params = load(r#"{"snapshot_path":"s","mem_file_path":"m"}"#)
            .into_params()
            .unwrap();
        let mut header = StateHeader::from_resources(&VmResources::default());
        header.config = saved(
            r#"{"machine-config":{"vcpu_count":2,"mem_size_mib":256},"pmem":[{"id":"a","path_on_host":"/a","root_device":true},{"id":"b","path_on_host":"/b","root_device":true}]}"#,
        );
        let err = VmResources::default()
            .restored(&header, &params, &open)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to restore from snapshot: Failed to get snapshot state from file: Invalid snapshot content: pmem b: A root pmem device already exist"
        );
        header.config.pmem.pop();
        let restored = VmResources::default()
            .restored(&header, &params, &open)
            .unwrap();
        assert_eq!(restored.machine_config.vcpu_count, 2);
        assert!(restored.pmem.has_root());
        assert!(restored.boot_source.is_none());
    }

    #[test]
    fn saved_devices_go_through_the_resource_rules() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let disk = disk.path().to_str().unwrap();
        let root_drive = format!(
            r#""drives":[{{"drive_id":"rootfs","path_on_host":"{disk}","is_root_device":true,"is_read_only":true}}]"#
        );
        let root_pmem = r#""pmem":[{"id":"pm0","path_on_host":"/p","root_device":true}]"#;
        let both = saved(&format!("{{{root_drive},{root_pmem}}}"));
        assert_eq!(
            add(&both).unwrap_err(),
            "pmem pm0: Attempt to add pmem as a root device while the root device defined as a block device"
        );
        let ok = add(&saved(&format!("{{{root_drive}}}"))).unwrap();
        assert_eq!(ok.drives.root().unwrap().id, "rootfs");

        let two_root_drives = saved(&format!(
            r#"{{"drives":[{{"drive_id":"a","path_on_host":"{disk}","is_root_device":true,"is_read_only":true}},{{"drive_id":"b","path_on_host":"{disk}","is_root_device":true,"is_read_only":true}}]}}"#
        ));
        assert!(add(&two_root_drives).unwrap_err().starts_with("drive b: "));

        let same_mac = saved(
            r#"{"network-interfaces":[{"iface_id":"a","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"},{"iface_id":"b","host_dev_name":"tap1","guest_mac":"06:00:00:00:00:01"}]}"#,
        );
        assert_eq!(
            add(&same_mac).unwrap_err(),
            "network interface b: The MAC address is already in use: 06:00:00:00:00:01"
        );

        let bad_hotplug = saved(
            r#"{"memory-hotplug":{"total_size_mib":1024,"block_size_mib":3,"slot_size_mib":128}}"#,
        );
        assert!(
            add(&bad_hotplug)
                .unwrap_err()
                .starts_with("memory hot-plug: ")
        );
    }

    fn load(json: &str) -> LoadSnapshotConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn mem_backend_rules() {
        assert_eq!(
            load(r#"{"snapshot_path":"s"}"#).into_params(),
            Err(MISSING_MEM_FIELD)
        );
        assert_eq!(
            load(r#"{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_path":"m","backend_type":"File"}}"#)
                .into_params(),
            Err(TOO_MANY_MEM_FIELDS)
        );
        let deprecated =
            load(r#"{"snapshot_path":"s","mem_file_path":"m","enable_diff_snapshots":true}"#);
        assert!(deprecated.is_deprecated());
        let params = deprecated.into_params().unwrap();
        assert!(params.track_dirty_pages);
        assert_eq!(params.mem_backend.backend_type, MemBackendType::File);
        // Overrides accept unknown fields; the body itself does not.
        load(
            r#"{"snapshot_path":"s","mem_file_path":"m","network_overrides":[{"iface_id":"a","host_dev_name":"t","x":1}],"vsock_override":{"uds_path":"u","y":2}}"#,
        );
        let err = serde_json::from_str::<LoadSnapshotConfig>(r#"{"x":1}"#).unwrap_err();
        assert!(err.to_string().starts_with("unknown field `x`, expected one of `snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `track_dirty_pages`, `resume_vm`, `network_overrides`, `vsock_override`, `clock_realtime`, `huge_pages`"), "{err}");
    }
}
