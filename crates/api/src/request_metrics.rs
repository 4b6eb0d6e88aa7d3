//! Which API requests count where (docs/api-contract.md §10.2): a request that reaches an endpoint's
//! parser increments its `*_count`; one the parser rejects (JSON, id or field errors) also
//! increments its `*_fails`. Errors the VMM returns later do not count as fails.

use squib_vmm::metrics::MetricsRegistry;

/// The metrics section and key prefix of a request, when it has counters.
pub fn counter(method: &str, path: &str, has_body: bool) -> Option<(&'static str, &'static str)> {
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or("");
    let second = segments.next();
    let entry = match (method, resource, has_body) {
        ("GET", "", false) => ("get_api_requests", "instance_info"),
        ("GET", "version", false) => ("get_api_requests", "vmm_version"),
        ("GET", "machine-config", false) => ("get_api_requests", "machine_cfg"),
        ("GET", "mmds", false) => ("get_api_requests", "mmds"),
        ("GET", "hotplug", false) if second == Some("memory") => {
            ("get_api_requests", "hotplug_memory")
        }
        ("PUT", resource, true) => (
            "put_api_requests",
            match resource {
                "actions" => "actions",
                "boot-source" => "boot_source",
                "drives" => "drive",
                "logger" => "logger",
                "machine-config" => "machine_cfg",
                "cpu-config" => "cpu_cfg",
                "metrics" => "metrics",
                "network-interfaces" => "network",
                "mmds" => "mmds",
                "vsock" => "vsock",
                "pmem" => "pmem",
                "serial" => "serial",
                "hotplug" if second == Some("memory") => "hotplug_memory",
                _ => return None,
            },
        ),
        ("PATCH", resource, true) => (
            "patch_api_requests",
            match resource {
                "drives" => "drive",
                "network-interfaces" => "network",
                "machine-config" => "machine_cfg",
                "mmds" => "mmds",
                "pmem" => "pmem",
                "hotplug" if second == Some("memory") => "hotplug_memory",
                _ => return None,
            },
        ),
        _ => return None,
    };
    Some(entry)
}

/// Counts one request; `parsed` is false when its parser rejected it.
pub fn record(metrics: &MetricsRegistry, method: &str, path: &str, has_body: bool, parsed: bool) {
    let Some((section, name)) = counter(method, path, has_body) else {
        return;
    };
    if section == "get_api_requests" {
        metrics.inc(section, key(name, "count"));
        return;
    }
    metrics.inc(section, key(name, "count"));
    if !parsed {
        metrics.inc(section, key(name, "fails"));
    }
}

/// `⟨name⟩_count` / `⟨name⟩_fails` as static keys.
fn key(name: &'static str, suffix: &str) -> &'static str {
    macro_rules! keys {
        ($($n:literal),*) => {
            match (name, suffix) {
                $(($n, "count") => concat!($n, "_count"), ($n, _) => concat!($n, "_fails"),)*
                _ => "unknown",
            }
        };
    }
    keys!(
        "instance_info",
        "vmm_version",
        "machine_cfg",
        "mmds",
        "hotplug_memory",
        "actions",
        "boot_source",
        "drive",
        "logger",
        "cpu_cfg",
        "metrics",
        "network",
        "vsock",
        "pmem",
        "serial"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_requests() {
        assert_eq!(
            counter("GET", "/", false),
            Some(("get_api_requests", "instance_info"))
        );
        assert_eq!(
            counter("PUT", "/drives/root", true),
            Some(("put_api_requests", "drive"))
        );
        assert_eq!(
            counter("PUT", "/hotplug/memory", true),
            Some(("put_api_requests", "hotplug_memory"))
        );
        assert_eq!(counter("PUT", "/drives/root", false), None);
        assert_eq!(counter("PUT", "/balloon", true), None);
        assert_eq!(counter("GET", "/vm/config", false), None);
        assert_eq!(
            counter("PATCH", "/machine-config", true),
            Some(("patch_api_requests", "machine_cfg"))
        );
    }

    #[test]
    fn fails_only_on_parse_errors() {
        let m = MetricsRegistry::new();
        record(&m, "PUT", "/drives/x", true, true);
        record(&m, "PUT", "/drives/x", true, false);
        record(&m, "GET", "/version", false, true);
        record(&m, "PATCH", "/mmds", true, false);
        assert_eq!(m.get("put_api_requests", "drive_count"), 2);
        assert_eq!(m.get("put_api_requests", "drive_fails"), 1);
        assert_eq!(m.get("get_api_requests", "vmm_version_count"), 1);
        assert_eq!(m.get("patch_api_requests", "mmds_fails"), 1);
        assert_eq!(m.get("patch_api_requests", "mmds_count"), 1);
    }
}
