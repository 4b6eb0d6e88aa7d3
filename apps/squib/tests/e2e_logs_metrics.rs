//! End-to-end: the real `squib` binary's log lines (docs/api-contract.md §10.1) and metrics lines
//! (docs/api-contract.md §10.2), with a real guest where the metrics need one.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use regex::Regex;
use serde_json::Value;

/// Upstream's top-level metric keys for one drive `rootfs` and no other device.
const TOP_LEVEL_KEYS: &[&str] = &[
    "utc_timestamp_ms",
    "api_server",
    "balloon",
    "block_rootfs",
    "block",
    "deprecated_api",
    "get_api_requests",
    "i8042",
    "uart",
    "latencies_us",
    "logger",
    "mmds",
    "net",
    "patch_api_requests",
    "put_api_requests",
    "seccomp",
    "vcpu",
    "vmm",
    "signals",
    "vsock",
    "entropy",
    "pmem",
    "interrupts",
    "memory_hotplug",
];

/// Top-level keys of a JSON object in their textual order.
fn keys_in_order(line: &str) -> Vec<String> {
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                self.0.push(key);
            }
            Ok(())
        }
    }
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(line);
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys))
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
    keys
}

/// Every metrics line written so far, parsed; the file ends with a newline.
fn metrics_lines(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a line is incomplete: {text}"
    );
    text.lines()
        .map(|l| {
            let v = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}"));
            (l.to_string(), v)
        })
        .collect()
}

/// `FlushMetrics`, then the lines written since just before it (the flush's line, and a
/// periodic one that may have come in between).
fn flush(squib: &Squib, path: &Path) -> Vec<Value> {
    let before = metrics_lines(path).len();
    squib.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    wait_for_lines(path, before + 1)
        .into_iter()
        .skip(before)
        .map(|(_, v)| v)
        .collect()
}

/// A counter summed over lines (each holds the delta since the line before).
fn sum(lines: &[Value], section: &str, key: &str) -> u64 {
    lines
        .iter()
        .map(|line| {
            line[section][key]
                .as_u64()
                .unwrap_or_else(|| panic!("{section}.{key} in {line}"))
        })
        .sum()
}

fn wait_for_lines(path: &Path, count: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = metrics_lines(path);
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} metrics lines, wanted {count}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_lines_with_a_real_guest() {
    let guest = guest();
    let out = tempfile::tempdir().unwrap();
    let metrics = out.path().join("metrics.json");
    let mut squib = Squib::start(&[
        "--id",
        "e2e-metrics",
        "--metrics-path",
        metrics.to_str().unwrap(),
    ]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    // A parse-level failure counts as a fail; a VMM-level one does not.
    let (status, _) = squib.api("PUT", "/drives/rootfs", Some("{not json"));
    assert_eq!(status, 400);
    let (status, body) = squib.api("PUT", "/metrics", Some(r#"{"metrics_path":"/tmp/x"}"#));
    assert_eq!(status, 400);
    assert!(
        body.contains("Reinitialization of metrics not allowed."),
        "{body}"
    );
    squib.state();
    configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait",
    );
    assert!(metrics_lines(&metrics).is_empty(), "no line before boot");
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);

    // The boot-time line.
    let lines = wait_for_lines(&metrics, 1);
    let (_, first) = &lines[0];
    let put = &first["put_api_requests"];
    assert_eq!(put["drive_count"], 2, "{first}");
    assert_eq!(put["drive_fails"], 1, "{first}");
    assert_eq!(put["boot_source_count"], 1);
    assert_eq!(put["machine_cfg_count"], 1);
    assert_eq!(put["metrics_count"], 1);
    assert_eq!(put["metrics_fails"], 0);
    assert_eq!(put["actions_count"], 1);
    assert_eq!(first["get_api_requests"]["instance_info_count"], 1);

    // The guest mounts and reads its root drive. Counters are deltas since the previous line,
    // and the 60 s periodic line may land between two flushes when the guest is slow: every
    // figure below is taken over the lines a flush added, not from one line.
    squib.wait_for_line(ROOTFS_MARKER, BOOT_TIMEOUT);
    let added = flush(&squib, &metrics);
    assert_eq!(sum(&added, "put_api_requests", "drive_count"), 0, "deltas");
    assert_eq!(sum(&added, "put_api_requests", "actions_count"), 1);
    let lines = metrics_lines(&metrics);
    let all: Vec<Value> = lines.into_iter().map(|(_, v)| v).collect();
    let read_bytes = sum(&all, "block_rootfs", "read_bytes");
    assert!(
        read_bytes > 0 && sum(&all, "block_rootfs", "read_count") > 0,
        "{all:?}"
    );
    for line in &added {
        assert_eq!(
            line["block"]["read_bytes"], line["block_rootfs"]["read_bytes"],
            "{line}"
        );
    }

    // Nothing read since: the next lines' block counters are (close to) zero deltas.
    let added = flush(&squib, &metrics);
    assert!(
        sum(&added, "block_rootfs", "read_bytes") < read_bytes,
        "counters are deltas"
    );

    // Pause/resume latencies are measured (stored values).
    squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let added = flush(&squib, &metrics);
    assert!(sum(&added, "latencies_us", "pause_vm") > 0, "{added:?}");
    assert!(
        sum(&added, "latencies_us", "vmm_resume_vm") > 0,
        "{added:?}"
    );

    // The guest ends: squib writes a last line on its way out.
    let lines_before_exit = metrics_lines(&metrics).len();
    squib.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    let status = squib.wait_exit(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", squib.console());
    let lines = metrics_lines(&metrics);
    assert!(lines.len() > lines_before_exit, "an exit line");
    for (text, _) in &lines {
        assert!(!text.contains(' '), "compact: {text}");
        assert_eq!(keys_in_order(text), TOP_LEVEL_KEYS, "{text}");
    }
    let stamps: Vec<u64> = lines
        .iter()
        .map(|(_, v)| v["utc_timestamp_ms"].as_u64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
}

#[test]
fn put_metrics_and_a_signal_write_the_exit_line() {
    let mut squib = Squib::start(&["--id", "e2e-metrics-sig", "--start-time-us", "1"]);
    let metrics = squib.dir.path().join("metrics.fifo.json");
    // Upstream does not truncate: an existing file is overwritten from offset 0.
    std::fs::write(&metrics, "x".repeat(10_000)).unwrap();
    squib.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({
            "metrics_path": metrics,
            "emit_id": true,
            "properties": {"team": "squib"},
            "unknown_field": 1
        })
        .to_string(),
    );
    let (status, _) = squib.api("PUT", "/metrics", Some(r#"{"metrics_path":"/tmp/y"}"#));
    assert_eq!(status, 400);
    // FlushMetrics is a runtime-only action in squib: pre-boot it is refused.
    let (status, _) = squib.api("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#));
    assert_eq!(status, 400);
    unsafe_kill(squib.child.id(), "TERM");
    let status = squib.wait_exit(Duration::from_secs(10));
    // Dies by the signal, as upstream (no handler there), once the exit line is written.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15),
        "{}",
        squib.console()
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line = text.lines().next().unwrap();
    let keys = keys_in_order(line);
    assert_eq!(
        keys[..4],
        ["utc_timestamp_ms", "id", "properties", "api_server"]
    );
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["id"], "e2e-metrics-sig");
    assert_eq!(v["properties"]["team"], "squib");
    assert_eq!(v["put_api_requests"]["metrics_count"], 2);
    assert_eq!(v["put_api_requests"]["actions_count"], 1);
    assert!(v["api_server"]["process_startup_time_us"].as_u64().unwrap() > 0);
    assert!(v.get("block").is_some());
    // The rest of the old content follows the line: no truncation, no append.
    assert!(text[line.len() + 1..].starts_with('x'), "{text}");
}

/// Sends a signal with kill(1): the tests need no libc.
fn unsafe_kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The §10.1 line: time, `[id:thread(:LEVEL)(:file:line)]`, message.
fn log_line_regex(show_level: bool, show_origin: bool) -> Regex {
    let level = if show_level {
        ":(ERROR|WARN|INFO|DEBUG|TRACE)"
    } else {
        ""
    };
    let origin = if show_origin { r":[^\]:]+:\d+" } else { "" };
    Regex::new(&format!(
        r"^\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}:\d{{2}}\.\d{{9}} \[e2e-log:(main|fc_api|fc_vcpu \d+){level}{origin}\] .+$"
    ))
    .unwrap()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn log_lines_follow_firecrackers_format() {
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("squib.log");
    let squib = Squib::start(&[
        "--id",
        "e2e-log",
        "--log-path",
        log.to_str().unwrap(),
        "--level",
        "info",
        "--show-level",
        "--show-log-origin",
    ]);
    squib.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    let (status, _) = squib.api("PUT", "/machine-config", Some(r#"{"vcpu_count":0}"#));
    assert_eq!(status, 400);
    squib.api("GET", "/", None);

    let text = read_log(&log);
    let full = log_line_regex(true, true);
    for line in text.lines() {
        assert!(full.is_match(line), "bad line: {line:?}\n{text}");
    }
    assert!(
        text.contains(r#":INFO:crates/api/src/server.rs:"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"] The API server received a Put request on "/machine-config" with body "{\"vcpu_count\":1,\"mem_size_mib\":128}"."#
        ),
        "{text}"
    );
    assert!(
        text.contains("] The request was executed successfully. Status code: 204 No Content.\n"),
        "{text}"
    );
    assert!(
        text.contains("] The API server received a Get request on \"/\".\n"),
        "{text}"
    );
    assert!(
        text.contains(":ERROR:")
            && text.contains("] Received Error. Status code: 400 Bad Request. Message: "),
        "{text}"
    );
    assert!(
        text.contains(":fc_api:INFO:"),
        "API lines come from fc_api: {text}"
    );

    // PUT /logger: a new target, Warn level (Info filtered), no level or origin shown.
    let log2 = out.path().join("squib2.log");
    squib.ok(
        "PUT",
        "/logger",
        &serde_json::json!({
            "log_path": log2,
            "level": "Warning",
            "show_level": false,
            "show_log_origin": false
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    let (status, _) = squib.api("PUT", "/machine-config", Some("{bad"));
    assert_eq!(status, 400);
    let text2 = read_log(&log2);
    let bare = log_line_regex(false, false);
    assert!(!text2.is_empty());
    for line in text2.lines() {
        assert!(bare.is_match(line), "bad line: {line:?}\n{text2}");
    }
    assert!(
        !text2.contains("The request was executed successfully"),
        "{text2}"
    );
    assert!(
        text2.contains("] Received Error. Status code: 400 Bad Request. Message: "),
        "{text2}"
    );

    // A PUT without `level` resets it to Info.
    squib.ok("PUT", "/logger", r#"{"show_level":true}"#);
    squib.api("GET", "/version", None);
    let text3 = read_log(&log2);
    assert!(
        text3.contains(":INFO] The API server received a Get request on \"/version\".\n"),
        "{text3}"
    );
}
