//! GETs, answered from the [`VmView`] the VMM loop published last: they never wait for an action.

use axum::http::StatusCode;
use serde::Serialize;
use squib_vmm::{FIRECRACKER_API_VERSION, VmView, VmmActionError};

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

pub(crate) fn render(request: GetRequest, vm: &VmView) -> ApiResponse {
    match request {
        GetRequest::InstanceInfo => ApiResponse::json(&vm.instance_info()),
        GetRequest::Version => ApiResponse::json(&Version {
            firecracker_version: FIRECRACKER_API_VERSION,
        }),
        GetRequest::MachineConfig => ApiResponse::json(&vm.resources.machine_config),
        GetRequest::FullVmConfig => ApiResponse::json_text(vm.resources.full_config_json()),
        GetRequest::Balloon => answer(vm.balloon_config()),
        GetRequest::BalloonStatistics => answer(vm.balloon_stats()),
        GetRequest::BalloonHintingStatus => answer(vm.hinting_status()),
        GetRequest::MemoryHotplug => answer(vm.memory_hotplug_status()),
        GetRequest::Mmds => match vm.mmds_json() {
            Ok(json) => ApiResponse::json_text(json),
            Err(e) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    }
}
