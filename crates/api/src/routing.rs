//! The route table of docs/api-contract.md §3.2, in its fall-through order: method, first path segment
//! and body presence select a parser; everything else is upstream's generic 400.

use squib_vmm::VmmAction;
use squib_vmm::action::DeviceKind;

use crate::endpoints::reads::GetRequest;
use crate::endpoints::{
    actions, balloon, boot_source, devices, drives, machine_config, mmds, network_interfaces, pmem,
    snapshot, vm,
};
use crate::request_error::RequestError;

/// A request that passed HTTP, routing, id and JSON checks.
#[derive(Debug, PartialEq)]
pub enum ParsedRequest {
    /// Answered from the published snapshot.
    Get(GetRequest),
    /// Sent to the VMM loop.
    Action { action: VmmAction, deprecated: bool },
}

impl ParsedRequest {
    pub fn action(action: VmmAction) -> Self {
        Self::Action {
            action,
            deprecated: false,
        }
    }

    /// Marks a request that used a deprecated field (`Deprecation: true`, docs/api-contract.md §3.6).
    pub fn deprecated(self, deprecated: bool) -> Self {
        match self {
            Self::Action { action, .. } => Self::Action { action, deprecated },
            other => other,
        }
    }
}

/// Routes one request. `method` is one of GET, PUT, PATCH, DELETE (others never get here);
/// `path` is the raw path, query string included, as upstream keeps it.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or("");
    let has_body = !body.is_empty();
    let invalid = || RequestError::InvalidPathMethod {
        method: method.to_string(),
        path: resource.to_string(),
    };
    let get = |request| Ok(ParsedRequest::Get(request));

    match (method, resource, has_body) {
        ("GET", "", false) => get(GetRequest::InstanceInfo),
        ("GET", "balloon", false) => balloon::parse_get_balloon(segments),
        ("GET", "version", false) => get(GetRequest::Version),
        ("GET", "vm", false) if segments.next() == Some("config") => get(GetRequest::FullVmConfig),
        ("GET", "machine-config", false) => get(GetRequest::MachineConfig),
        ("GET", "mmds", false) => get(GetRequest::Mmds),
        ("GET", "hotplug", false) if segments.next() == Some("memory") => {
            get(GetRequest::MemoryHotplug)
        }
        ("GET", _, true) => Err(RequestError::generic("GET request cannot have a body.")),

        ("PUT", "actions", true) => actions::parse_put_actions(body),
        ("PUT", "balloon", true) => balloon::parse_put_balloon(body),
        ("PUT", "boot-source", true) => boot_source::parse_put_boot_source(body),
        ("PUT", "cpu-config", true) => devices::parse_put_cpu_config(body),
        ("PUT", "drives", true) => drives::parse_put_drive(body, segments.next()),
        ("PUT", "pmem", true) => pmem::parse_put_pmem(body, segments.next()),
        ("PUT", "logger", true) => devices::parse_put_logger(body),
        ("PUT", "serial", true) => devices::parse_put_serial(body),
        ("PUT", "machine-config", true) => machine_config::parse_put_machine_config(body),
        ("PUT", "metrics", true) => devices::parse_put_metrics(body),
        ("PUT", "mmds", true) => mmds::parse_put_mmds(body, segments.next()),
        ("PUT", "network-interfaces", true) => {
            network_interfaces::parse_put_net(body, segments.next())
        }
        ("PUT", "snapshot", true) => snapshot::parse_put_snapshot(body, segments.next()),
        ("PUT", "vsock", true) => devices::parse_put_vsock(body),
        ("PUT", "entropy", true) => devices::parse_put_entropy(body),
        ("PUT", "hotplug", true) if segments.next() == Some("memory") => {
            devices::parse_put_hotplug_memory(body)
        }
        ("PUT", _, false) => Err(RequestError::generic("Empty PUT request.")),

        ("PATCH", "balloon", _) => balloon::parse_patch_balloon(body, segments),
        ("PATCH", "drives", true) => drives::parse_patch_drive(body, segments.next()),
        ("PATCH", "machine-config", true) => machine_config::parse_patch_machine_config(body),
        ("PATCH", "mmds", true) => mmds::parse_patch_mmds(body),
        ("PATCH", "network-interfaces", true) => {
            network_interfaces::parse_patch_net(body, segments.next())
        }
        ("PATCH", "pmem", true) => pmem::parse_patch_pmem(body, segments.next()),
        ("PATCH", "vm", true) => vm::parse_patch_vm(body),
        ("PATCH", "hotplug", true) if segments.next() == Some("memory") => {
            devices::parse_patch_hotplug_memory(body)
        }
        ("PATCH", _, false) => Err(RequestError::generic("Empty PATCH request.")),

        ("DELETE", "drives", false) => drives::parse_delete(DeviceKind::Drive, segments.next()),
        ("DELETE", "pmem", false) => drives::parse_delete(DeviceKind::Pmem, segments.next()),
        ("DELETE", "network-interfaces", false) => {
            drives::parse_delete(DeviceKind::NetworkInterface, segments.next())
        }
        ("DELETE", _, true) => Err(RequestError::generic("Empty Delete request.")),

        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(method: &str, path: &str, body: &str) -> String {
        parse_request(method, path, body.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn fall_through_order() {
        assert_eq!(
            fault("GET", "/foo/bar", ""),
            "Invalid request method and/or path: GET foo."
        );
        assert_eq!(
            fault("GET", "/vm", ""),
            "Invalid request method and/or path: GET vm."
        );
        assert_eq!(fault("GET", "/", "{}"), "GET request cannot have a body.");
        assert_eq!(fault("PUT", "/nothing", ""), "Empty PUT request.");
        assert_eq!(fault("PATCH", "/vm", ""), "Empty PATCH request.");
        assert_eq!(fault("DELETE", "/drives/x", "{}"), "Empty Delete request.");
        assert_eq!(
            fault("PUT", "/hotplug/x", "{}"),
            "Invalid request method and/or path: PUT hotplug."
        );
        assert_eq!(fault("PUT", "/drives", "{}"), "The ID cannot be empty.");
        assert_eq!(fault("PUT", "/drives//x", "{}"), "The ID cannot be empty.");
        assert_eq!(
            fault("GET", "/machine-config?x=1", ""),
            "Invalid request method and/or path: GET machine-config?x=1."
        );
    }

    #[test]
    fn reads_and_trailing_slashes() {
        for path in ["/", "", "//"] {
            assert_eq!(
                parse_request("GET", path, b"").unwrap(),
                ParsedRequest::Get(GetRequest::InstanceInfo)
            );
        }
        assert_eq!(
            parse_request("GET", "/version/x", b"").unwrap(),
            ParsedRequest::Get(GetRequest::Version)
        );
        assert_eq!(
            parse_request("GET", "/machine-config/", b"").unwrap(),
            ParsedRequest::Get(GetRequest::MachineConfig)
        );
        assert_eq!(
            parse_request("GET", "/vm/config", b"").unwrap(),
            ParsedRequest::Get(GetRequest::FullVmConfig)
        );
    }
}
