//! `/snapshot/create` and `/snapshot/load`: request shapes and the memory-backend rule.

use serde::Deserialize;

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

#[cfg(test)]
mod tests {
    use super::*;

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
