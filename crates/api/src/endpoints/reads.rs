//! GETs, answered from the snapshot the VMM loop published last: they never wait for an action.

use serde::Serialize;
use squib_vmm::{FIRECRACKER_API_VERSION, VmmSnapshot};

use crate::response::ApiResponse;

/// A GET the router recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetRequest {
    InstanceInfo,
    Version,
    MachineConfig,
    FullVmConfig,
}

#[derive(Serialize)]
struct Version<'a> {
    firecracker_version: &'a str,
}

pub fn render(request: GetRequest, snapshot: &VmmSnapshot) -> ApiResponse {
    match request {
        GetRequest::InstanceInfo => ApiResponse::json(&snapshot.instance_info()),
        GetRequest::Version => ApiResponse::json(&Version {
            firecracker_version: FIRECRACKER_API_VERSION,
        }),
        GetRequest::MachineConfig => ApiResponse::json(&snapshot.resources.machine_config),
        GetRequest::FullVmConfig => ApiResponse::json_text(snapshot.resources.full_config_json()),
    }
}
