//! The VM's lifecycle state and the read-only snapshot the VMM loop publishes for GETs.

use serde::Serialize;

use crate::resources::VmResources;

/// The Firecracker API level squib implements (contract §13: not upstream's `-dev` suffix).
pub const FIRECRACKER_API_VERSION: &str = "1.17.0";

/// Lifecycle state as `GET /` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

impl VmState {
    pub fn is_booted(self) -> bool {
        self != VmState::NotStarted
    }
}

/// Body of `GET /`, in upstream's key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: VmState,
    pub vmm_version: String,
    pub app_name: String,
}

/// Everything GET handlers may read, as of the last action the VMM loop finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmSnapshot {
    pub instance_id: String,
    pub state: VmState,
    pub resources: VmResources,
}

impl VmmSnapshot {
    pub fn new(instance_id: String) -> Self {
        Self {
            instance_id,
            state: VmState::NotStarted,
            resources: VmResources::default(),
        }
    }

    pub fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.instance_id.clone(),
            state: self.state,
            vmm_version: FIRECRACKER_API_VERSION.to_string(),
            app_name: "Firecracker".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_info_shape() {
        let info = VmmSnapshot::new("anonymous-instance".into()).instance_info();
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"id":"anonymous-instance","state":"Not started","vmm_version":"1.17.0","app_name":"Firecracker"}"#
        );
    }
}
