//! The route table of contract §3.2, in its fall-through order: method, first path segment
//! and body presence select a parser; everything else is upstream's generic 400.

use squib_vmm::VmmAction;

use crate::endpoints::reads::GetRequest;
use crate::endpoints::{actions, boot_source, drives, machine_config, vm};
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

    /// Marks a request that used a deprecated field (`Deprecation: true`, contract §3.6).
    pub fn deprecated(self, deprecated: bool) -> Self {
        match self {
            Self::Action { action, .. } => Self::Action { action, deprecated },
            other => other,
        }
    }
}

/// Endpoints that exist upstream but have no support in squib yet: an honest 400.
fn unsupported(what: &str) -> Result<ParsedRequest, RequestError> {
    Err(RequestError::generic(format!(
        "{what} is not supported by squib yet."
    )))
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

    match (method, resource, has_body) {
        ("GET", "", false) => Ok(ParsedRequest::Get(GetRequest::InstanceInfo)),
        ("GET", "version", false) => Ok(ParsedRequest::Get(GetRequest::Version)),
        ("GET", "machine-config", false) => Ok(ParsedRequest::Get(GetRequest::MachineConfig)),
        ("GET", "vm", false) if segments.next() == Some("config") => {
            Ok(ParsedRequest::Get(GetRequest::FullVmConfig))
        }
        ("GET", "balloon", false) => unsupported("The balloon device"),
        ("GET", "mmds", false) => unsupported("MMDS"),
        ("GET", "hotplug", false) if segments.next() == Some("memory") => {
            unsupported("Memory hotplug")
        }
        ("GET", _, true) => Err(RequestError::generic("GET request cannot have a body.")),

        ("PUT", "actions", true) => actions::parse_put_actions(body),
        ("PUT", "boot-source", true) => boot_source::parse_put_boot_source(body),
        ("PUT", "drives", true) => drives::parse_put_drive(body, segments.next()),
        ("PUT", "machine-config", true) => machine_config::parse_put_machine_config(body),
        ("PUT", "balloon", true) => unsupported("The balloon device"),
        ("PUT", "cpu-config", true) => unsupported("Custom CPU configuration"),
        ("PUT", "pmem", true) => unsupported("Pmem"),
        ("PUT", "logger", true) => unsupported("Configuring the logger through the API"),
        ("PUT", "serial", true) => unsupported("Configuring the serial device"),
        ("PUT", "metrics", true) => unsupported("Configuring metrics through the API"),
        ("PUT", "mmds", true) => unsupported("MMDS"),
        ("PUT", "network-interfaces", true) => unsupported("Network interfaces"),
        ("PUT", "snapshot", true) => unsupported("Snapshots"),
        ("PUT", "vsock", true) => unsupported("Vsock"),
        ("PUT", "entropy", true) => unsupported("The entropy device"),
        ("PUT", "hotplug", true) if segments.next() == Some("memory") => {
            unsupported("Memory hotplug")
        }
        ("PUT", _, false) => Err(RequestError::generic("Empty PUT request.")),

        ("PATCH", "machine-config", true) => machine_config::parse_patch_machine_config(body),
        ("PATCH", "vm", true) => vm::parse_patch_vm(body),
        ("PATCH", "balloon", _) => unsupported("The balloon device"),
        ("PATCH", "drives", true) => unsupported("Updating a drive"),
        ("PATCH", "mmds", true) => unsupported("MMDS"),
        ("PATCH", "network-interfaces", true) => unsupported("Network interfaces"),
        ("PATCH", "pmem", true) => unsupported("Pmem"),
        ("PATCH", "hotplug", true) if segments.next() == Some("memory") => {
            unsupported("Memory hotplug")
        }
        ("PATCH", _, false) => Err(RequestError::generic("Empty PATCH request.")),

        ("DELETE", "drives" | "pmem" | "network-interfaces", false) => {
            unsupported("Hot-unplugging a device")
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
