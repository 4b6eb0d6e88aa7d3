//! GETs, answered from the snapshot the VMM loop published last: they never wait for an action.

use axum::http::StatusCode;
use serde::Serialize;
use squib_vmm::{FIRECRACKER_API_VERSION, VmmActionError, VmmSnapshot};

use crate::response::ApiResponse;

/// A GET the router recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetRequest {
    InstanceInfo,
    Version,
    MachineConfig,
    FullVmConfig,
    Balloon,
    BalloonStatistics,
    BalloonHintingStatus,
    MemoryHotplug,
    Mmds,
}

#[derive(Serialize)]
struct Version<'a> {
    firecracker_version: &'a str,
}

fn answer<T: Serialize>(result: Result<T, VmmActionError>) -> ApiResponse {
    match result {
        Ok(value) => ApiResponse::json(&value),
        Err(e) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

pub fn render(request: GetRequest, snapshot: &VmmSnapshot) -> ApiResponse {
    match request {
        GetRequest::InstanceInfo => ApiResponse::json(&snapshot.instance_info()),
        GetRequest::Version => ApiResponse::json(&Version {
            firecracker_version: FIRECRACKER_API_VERSION,
        }),
        GetRequest::MachineConfig => ApiResponse::json(&snapshot.resources.machine_config),
        GetRequest::FullVmConfig => ApiResponse::json_text(snapshot.resources.full_config_json()),
        GetRequest::Balloon => answer(snapshot.balloon_config()),
        GetRequest::BalloonStatistics => answer(snapshot.balloon_stats()),
        GetRequest::BalloonHintingStatus => answer(snapshot.hinting_status()),
        GetRequest::MemoryHotplug => answer(snapshot.memory_hotplug_status()),
        GetRequest::Mmds => match snapshot.mmds_json() {
            Ok(json) => ApiResponse::json_text(json),
            Err(e) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    }
}
