//! The route table of docs/api-contract.md §3.2: one row per (method, path) that reaches an endpoint, with
//! its parser and the API request counter it feeds (docs/api-contract.md §10.2). Dispatch and the request
//! metrics both read this table, so a route cannot be counted under another route's key.
//! Whatever no row takes gets upstream's fall-through answers, in upstream's order.

use std::str::SplitTerminator;

use squib_metrics::schema::{GetApiRequests, PatchApiRequests, PutApiRequests};
use squib_metrics::{Counter, MetricsRegistry};

use crate::endpoints::reads::GetRequest;
use crate::endpoints::{
    actions, balloon, boot_source, cpu_config, drives, entropy, hotplug_memory, logger,
    machine_config, metrics, mmds, network_interfaces, pmem, serial, snapshot, vm, vsock,
};
use crate::request::{ParsedRequest, RequestError};

/// The path segments after the resource (and after the sub-resource, for rows that name one).
pub(crate) type Segments<'a> = SplitTerminator<'a, char>;

type Parser = fn(&[u8], Segments<'_>) -> Result<ParsedRequest, RequestError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Patch,
    Delete,
}

/// Whether a row takes requests with a body, without one, or both.
#[derive(Clone, Copy, Debug)]
enum Body {
    Empty,
    Required,
    Any,
}

/// The request counters of a route (§10.2): a field of `get_api_requests`, or the `*_count`
/// and `*_fails` fields of `put_api_requests` / `patch_api_requests`. A request a row takes
/// increments its `*_count`; one the row's parser rejects (JSON, id or field errors) also its
/// `*_fails`. Errors the VMM returns later do not count as fails.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RequestMetric {
    Get(fn(&GetApiRequests) -> &Counter),
    Put(fn(&PutApiRequests) -> [&Counter; 2]),
    Patch(fn(&PatchApiRequests) -> [&Counter; 2]),
}

impl RequestMetric {
    /// Counts one request that this metric's route took; `parsed` is false when its parser
    /// rejected it.
    pub(crate) fn record(self, metrics: &MetricsRegistry, parsed: bool) {
        let values = &metrics.values;
        let (count, fails) = match self {
            Self::Get(count) => (count(&values.get_api_requests), None),
            Self::Put(counters) => {
                let [count, fails] = counters(&values.put_api_requests);
                (count, Some(fails))
            }
            Self::Patch(counters) => {
                let [count, fails] = counters(&values.patch_api_requests);
                (count, Some(fails))
            }
        };
        count.inc();
        if let Some(fails) = fails
            && !parsed
        {
            fails.inc();
        }
    }
}

const fn get(count: fn(&GetApiRequests) -> &Counter) -> Option<RequestMetric> {
    Some(RequestMetric::Get(count))
}

const fn put(counters: fn(&PutApiRequests) -> [&Counter; 2]) -> Option<RequestMetric> {
    Some(RequestMetric::Put(counters))
}

const fn patch(counters: fn(&PatchApiRequests) -> [&Counter; 2]) -> Option<RequestMetric> {
    Some(RequestMetric::Patch(counters))
}

struct Route {
    method: Method,
    /// The first path segment, compared as is (a query string stays part of it, as upstream).
    resource: &'static str,
    /// The second path segment the row requires, if any.
    sub: Option<&'static str>,
    body: Body,
    parse: Parser,
    metric: Option<RequestMetric>,
}

use Body::{Any, Empty, Required};
use Method::{Delete, Get, Patch, Put};

const fn row(
    method: Method,
    resource: &'static str,
    sub: Option<&'static str>,
    body: Body,
    parse: Parser,
    metric: Option<RequestMetric>,
) -> Route {
    Route {
        method,
        resource,
        sub,
        body,
        parse,
        metric,
    }
}

fn read(request: GetRequest) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::Get(request))
}

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    row(Get, "", None, Empty, |_, _| read(GetRequest::InstanceInfo), get(|m| &m.instance_info_count)),
    row(Get, "balloon", None, Empty, |_, s| balloon::parse_get_balloon(s), None),
    row(Get, "version", None, Empty, |_, _| read(GetRequest::Version), get(|m| &m.vmm_version_count)),
    row(Get, "vm", Some("config"), Empty, |_, _| read(GetRequest::FullVmConfig), None),
    row(Get, "machine-config", None, Empty, |_, _| read(GetRequest::MachineConfig), get(|m| &m.machine_cfg_count)),
    row(Get, "mmds", None, Empty, |_, _| read(GetRequest::Mmds), get(|m| &m.mmds_count)),
    row(Get, "hotplug", Some("memory"), Empty, |_, _| read(GetRequest::MemoryHotplug), get(|m| &m.hotplug_memory_count)),

    row(Put, "actions", None, Required, |b, _| actions::parse_put(b), put(|m| [&m.actions_count, &m.actions_fails])),
    row(Put, "balloon", None, Required, |b, _| balloon::parse_put(b), None),
    row(Put, "boot-source", None, Required, |b, _| boot_source::parse_put(b), put(|m| [&m.boot_source_count, &m.boot_source_fails])),
    row(Put, "cpu-config", None, Required, |b, _| cpu_config::parse_put(b), put(|m| [&m.cpu_cfg_count, &m.cpu_cfg_fails])),
    row(Put, "drives", None, Required, |b, mut s| drives::parse_put(b, s.next()), put(|m| [&m.drive_count, &m.drive_fails])),
    row(Put, "pmem", None, Required, |b, mut s| pmem::parse_put(b, s.next()), put(|m| [&m.pmem_count, &m.pmem_fails])),
    row(Put, "logger", None, Required, |b, _| logger::parse_put(b), put(|m| [&m.logger_count, &m.logger_fails])),
    row(Put, "serial", None, Required, |b, _| serial::parse_put(b), put(|m| [&m.serial_count, &m.serial_fails])),
    row(Put, "machine-config", None, Required, |b, _| machine_config::parse_put(b), put(|m| [&m.machine_cfg_count, &m.machine_cfg_fails])),
    row(Put, "metrics", None, Required, |b, _| metrics::parse_put(b), put(|m| [&m.metrics_count, &m.metrics_fails])),
    row(Put, "mmds", None, Required, |b, mut s| mmds::parse_put(b, s.next()), put(|m| [&m.mmds_count, &m.mmds_fails])),
    row(Put, "network-interfaces", None, Required, |b, mut s| network_interfaces::parse_put(b, s.next()), put(|m| [&m.network_count, &m.network_fails])),
    row(Put, "snapshot", None, Required, |b, mut s| snapshot::parse_put(b, s.next()), None),
    row(Put, "vsock", None, Required, |b, _| vsock::parse_put(b), put(|m| [&m.vsock_count, &m.vsock_fails])),
    row(Put, "entropy", None, Required, |b, _| entropy::parse_put(b), None),
    row(Put, "hotplug", Some("memory"), Required, |b, _| hotplug_memory::parse_put(b), put(|m| [&m.hotplug_memory_count, &m.hotplug_memory_fails])),

    row(Patch, "balloon", None, Any, balloon::parse_patch, None),
    row(Patch, "drives", None, Required, |b, mut s| drives::parse_patch(b, s.next()), patch(|m| [&m.drive_count, &m.drive_fails])),
    row(Patch, "machine-config", None, Required, |b, _| machine_config::parse_patch(b), patch(|m| [&m.machine_cfg_count, &m.machine_cfg_fails])),
    row(Patch, "mmds", None, Required, |b, _| mmds::parse_patch(b), patch(|m| [&m.mmds_count, &m.mmds_fails])),
    row(Patch, "network-interfaces", None, Required, |b, mut s| network_interfaces::parse_patch(b, s.next()), patch(|m| [&m.network_count, &m.network_fails])),
    row(Patch, "pmem", None, Required, |b, mut s| pmem::parse_patch(b, s.next()), patch(|m| [&m.pmem_count, &m.pmem_fails])),
    row(Patch, "vm", None, Required, |b, _| vm::parse_patch(b), None),
    row(Patch, "hotplug", Some("memory"), Required, |b, _| hotplug_memory::parse_patch(b), patch(|m| [&m.hotplug_memory_count, &m.hotplug_memory_fails])),

    row(Delete, "drives", None, Empty, |_, mut s| drives::parse_delete(s.next()), None),
    row(Delete, "pmem", None, Empty, |_, mut s| pmem::parse_delete(s.next()), None),
    row(Delete, "network-interfaces", None, Empty, |_, mut s| network_interfaces::parse_delete(s.next()), None),
];

/// A request after the route table: what its parser made of it, and the counter its row feeds.
pub(crate) struct Routed {
    pub(crate) parsed: Result<ParsedRequest, RequestError>,
    pub(crate) metric: Option<RequestMetric>,
}

/// Routes one request. `method` is one of GET, PUT, PATCH, DELETE (others never get here);
/// `path` is the raw path, query string included, as upstream keeps it.
pub(crate) fn route(method: &str, path: &str, body: &[u8]) -> Routed {
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or("");
    let has_body = !body.is_empty();
    let invalid = || RequestError::InvalidPathMethod {
        method: method.to_string(),
        path: resource.to_string(),
    };
    let unrouted = |error| Routed {
        parsed: Err(error),
        metric: None,
    };
    let method = match method {
        "GET" => Get,
        "PUT" => Put,
        "PATCH" => Patch,
        "DELETE" => Delete,
        _ => return unrouted(invalid()),
    };
    let taken = ROUTES.iter().find(|r| {
        r.method == method
            && r.resource == resource
            && match r.body {
                Empty => !has_body,
                Required => has_body,
                Any => true,
            }
            && r.sub.is_none_or(|sub| segments.clone().next() == Some(sub))
    });
    if let Some(r) = taken {
        if r.sub.is_some() {
            segments.next();
        }
        return Routed {
            parsed: (r.parse)(body, segments),
            metric: r.metric,
        };
    }
    unrouted(match (method, has_body) {
        (Get, true) => RequestError::generic("GET request cannot have a body."),
        (Put, false) => RequestError::generic("Empty PUT request."),
        (Patch, false) => RequestError::generic("Empty PATCH request."),
        (Delete, true) => RequestError::generic("Empty Delete request."),
        _ => invalid(),
    })
}

/// [`route`] without the metrics: what a request parses to (also the fuzz target's entry).
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ParsedRequest, RequestError> {
    route(method, path, body).parsed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        assert_eq!(
            parse_request("PATCH", "/hotplug/memory", br#"{"requested_size_mib":0}"#).unwrap(),
            ParsedRequest::action(squib_vmm::VmmAction::UpdateMemoryHotplugSize(
                serde_json::from_str(r#"{"requested_size_mib":0}"#).unwrap()
            ))
        );
    }

    /// The registry after one request went through `route` and its metric.
    fn counted(method: &str, path: &str, body: &str) -> Arc<MetricsRegistry> {
        let m = MetricsRegistry::new();
        let routed = route(method, path, body.as_bytes());
        if let Some(metric) = routed.metric {
            metric.record(&m, routed.parsed.is_ok());
        }
        m
    }

    #[test]
    fn counted_requests() {
        let m = counted("GET", "/", "");
        assert_eq!(m.values.get_api_requests.instance_info_count.get(), 1);
        let m = counted("PUT", "/drives/root", "{}");
        assert_eq!(m.values.put_api_requests.drive_count.get(), 1);
        assert_eq!(m.values.put_api_requests.drive_fails.get(), 1);
        let m = counted("PUT", "/hotplug/memory", "{}");
        assert_eq!(m.values.put_api_requests.hotplug_memory_count.get(), 1);
        let m = counted("PATCH", "/machine-config", "{}");
        assert_eq!(m.values.patch_api_requests.machine_cfg_count.get(), 1);
        assert_eq!(m.values.patch_api_requests.machine_cfg_fails.get(), 1);
        for (method, path, body) in [
            ("PUT", "/hotplug/x", "{}"),
            ("PUT", "/drives/root", ""),
            ("PUT", "/balloon", "{}"),
            ("GET", "/vm/config", ""),
            ("DELETE", "/drives/root", ""),
        ] {
            assert!(
                route(method, path, body.as_bytes()).metric.is_none(),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn fails_only_on_parse_errors() {
        let m = MetricsRegistry::new();
        for (method, path, body) in [
            (
                "PUT",
                "/drives/x",
                r#"{"drive_id":"x","is_root_device":false,"path_on_host":"/x"}"#,
            ),
            ("PUT", "/drives/x", "{}"),
            ("GET", "/version", ""),
            ("PATCH", "/mmds", "not json"),
        ] {
            let routed = route(method, path, body.as_bytes());
            routed.metric.unwrap().record(&m, routed.parsed.is_ok());
        }
        let v = &m.values;
        assert_eq!(v.put_api_requests.drive_count.get(), 2);
        assert_eq!(v.put_api_requests.drive_fails.get(), 1);
        assert_eq!(v.get_api_requests.vmm_version_count.get(), 1);
        assert_eq!(v.patch_api_requests.mmds_fails.get(), 1);
        assert_eq!(v.patch_api_requests.mmds_count.get(), 1);
    }
}
