//! Driven by upstream's OpenAPI spec (a copy in `tests/data`): every path and method of the spec
//! is routed (never the generic "Invalid request method and/or path" 400), and every 2xx body
//! squib produces validates against the spec's response schema.

mod common;

use serde_json::Value;

fn spec() -> Value {
    let text = include_str!("data/firecracker.yaml");
    serde_norway::from_str(text).expect("the spec parses")
}

/// Swagger 2.0 has no `nullable`; upstream serializes absent values as `null`, which the
/// spec means as "not present".
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn validate(spec: &Value, path: &str, method: &str, status: u16, body: &str) {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    let schema = &response["schema"];
    assert!(!schema.is_null(), "no schema for {method} {path} {status}");
    let root = serde_json::json!({"allOf": [schema], "definitions": spec["definitions"]});
    let validator = jsonschema::draft4::new(&root).expect("the spec's schema compiles");
    let instance = without_nulls(&serde_json::from_str(body).unwrap());
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{method} {path}: {body}: {errors:?}");
}

#[tokio::test]
async fn every_spec_route_is_routed() {
    let spec = spec();
    let s = common::start().await;
    let mut count = 0;
    for (path, methods) in spec["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{drive_id}", "d0")
            .replace("{iface_id}", "n0")
            .replace("{id}", "p0");
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let body = (method != "GET").then_some("{}");
            let reply = s.send(&method, &concrete, body).await;
            count += 1;
            // A route answers a client's error with a 4xx; a 5xx (500, 503, 504) on this input
            // would be a fault of squib's own, never a pass.
            let status = reply.status();
            assert!(
                (200..300).contains(&status) || (400..500).contains(&status),
                "{method} {path} answered {status}: {}",
                reply.body
            );
            if reply.status() == 400 {
                assert!(
                    !reply
                        .fault()
                        .starts_with("Invalid request method and/or path"),
                    "{method} {path} is not routed: {}",
                    reply.body
                );
            }
        }
    }
    assert!(count >= 38, "only {count} operations in the spec?");
}

#[tokio::test]
async fn success_bodies_match_the_spec() {
    let spec = spec();
    let s = common::start().await;
    s.configure_bootable().await;
    let disk = s.disk.path().display().to_string();
    for (path, body) in [
        (
            "/drives/rootfs",
            format!(
                r#"{{"drive_id":"rootfs","is_root_device":true,"path_on_host":"{disk}","rate_limiter":{{"bandwidth":{{"size":1,"refill_time":1,"one_time_burst":0}}}}}}"#
            ),
        ),
        (
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#
                .to_string(),
        ),
        (
            "/mmds/config",
            r#"{"version":"V2","network_interfaces":["eth0"]}"#.to_string(),
        ),
        (
            "/mmds",
            r#"{"latest":{"meta-data":{"id":"i-1"}}}"#.to_string(),
        ),
        (
            "/balloon",
            r#"{"amount_mib":1,"deflate_on_oom":true,"stats_polling_interval_s":1}"#.to_string(),
        ),
        (
            "/vsock",
            format!(r#"{{"guest_cid":3,"uds_path":"{}"}}"#, s.path("v.sock")),
        ),
        ("/entropy", "{}".to_string()),
        ("/pmem/p0", r#"{"id":"p0","path_on_host":"/p"}"#.to_string()),
        ("/hotplug/memory", r#"{"total_size_mib":1024}"#.to_string()),
    ] {
        let r = s.send("PUT", path, Some(&body)).await;
        assert_eq!(r.status(), 204, "{path}: {}", r.body);
    }
    for path in [
        "/",
        "/version",
        "/machine-config",
        "/vm/config",
        "/mmds",
        "/balloon",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.body);
        validate(&spec, path, "get", 200, &r.body);
    }
}
