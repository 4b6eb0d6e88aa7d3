//! The walking-skeleton endpoints over a real Unix socket with raw HTTP/1.1 bytes, against
//! the VMM loop with a guest-less engine (the real engine is exercised by the e2e tests).

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, read_reply, start, start_with_options};
use squib_vmm::fake_engine::FakeEngine;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

async fn start_with(engine: FakeEngine, action_timeout: Duration, max_payload: usize) -> Server {
    start_with_options(Options {
        engine,
        action_timeout,
        max_payload,
        mmds_limit: None,
    })
    .await
}

#[tokio::test]
async fn get_root_exact_framing() {
    let server = start().await;
    let reply = server.send("GET", "/", None).await;
    assert!(reply.head.starts_with("HTTP/1.1 200"), "{}", reply.head);
    assert_eq!(
        reply.header_names(),
        ["Server", "Connection", "Content-Type", "Content-Length"]
    );
    assert_eq!(reply.header("Server"), Some("Firecracker API"));
    assert_eq!(reply.header("Connection"), Some("keep-alive"));
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(
        reply.body,
        r#"{"id":"test-vm","state":"Not started","vmm_version":"1.17.0","app_name":"Firecracker"}"#
    );
}

#[tokio::test]
async fn get_version_and_vm_config() {
    let server = start().await;
    assert_eq!(
        server.send("GET", "/version", None).await.body,
        r#"{"firecracker_version":"1.17.0"}"#
    );
    let config = server.send("GET", "/vm/config", None).await;
    assert_eq!(config.status(), 200);
    let value: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(value["boot-source"]["kernel_image_path"], "");
}

#[tokio::test]
async fn machine_config_put_patch_get() {
    let server = start().await;
    let get = server.send("GET", "/machine-config", None).await;
    assert_eq!(
        get.body,
        r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
    );
    let put = server
        .send(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":2,"mem_size_mib":256}"#),
        )
        .await;
    assert_eq!(put.status(), 204);
    assert_eq!(
        put.head.lines().count(),
        3,
        "204 has no Content-Type or Content-Length: {}",
        put.head
    );
    let patch = server
        .send("PATCH", "/machine-config", Some(r#"{"mem_size_mib":512}"#))
        .await;
    assert_eq!(patch.status(), 204);
    let get = server.send("GET", "/machine-config", None).await;
    assert_eq!(
        get.body,
        r#"{"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
    );

    let bad = server
        .send(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":0,"mem_size_mib":256}"#),
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.fault(),
        "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."
    );
    let bad = server
        .send("PATCH", "/machine-config", Some(r#"{"mem_size_mib":0}"#))
        .await;
    assert_eq!(
        bad.fault(),
        "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size."
    );
    assert_eq!(
        server
            .send("PATCH", "/machine-config", Some("{}"))
            .await
            .fault(),
        "Empty PATCH request."
    );
    let bad = server
        .send("PUT", "/machine-config", Some(r#"{"vcpu_count":1}"#))
        .await;
    assert_eq!(
        bad.fault(),
        "An error occurred when deserializing the json body of a request: missing field `mem_size_mib` at line 1 column 16."
    );
    // Refused requests changed nothing.
    assert_eq!(
        server.send("GET", "/machine-config", None).await.body,
        get.body
    );

    let deprecated = server
        .send(
            "PATCH",
            "/machine-config",
            Some(r#"{"cpu_template":"None"}"#),
        )
        .await;
    assert_eq!(deprecated.status(), 204);
    assert_eq!(deprecated.header("Deprecation"), Some("true"));
    assert_eq!(
        deprecated.header_names(),
        ["Server", "Connection", "Deprecation"]
    );
}

#[tokio::test]
async fn boot_source_rules() {
    let server = start().await;
    let missing = server
        .send(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#),
        )
        .await;
    assert_eq!(missing.status(), 400);
    assert_eq!(
        missing.fault(),
        "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"
    );
    let unknown = server
        .send(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"a","foo":1}"#),
        )
        .await;
    assert_eq!(
        unknown.fault(),
        "An error occurred when deserializing the json body of a request: unknown field `foo`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column 30."
    );
    let body = format!(
        r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
        server.kernel_path()
    );
    assert_eq!(server.put("/boot-source", &body).await.status(), 204);
    let config = server.vm_config().await;
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        server.kernel_path()
    );
    assert_eq!(config["boot-source"]["boot_args"], "console=ttyS0");
    assert_eq!(
        config["boot-source"]["initrd_path"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn drives_rules() {
    let server = start().await;
    let disk = server.disk.path().to_str().unwrap();
    let body = |id: &str, root: bool| {
        format!(
            r#"{{"drive_id":"{id}","is_root_device":{root},"path_on_host":"{disk}","is_read_only":true}}"#
        )
    };
    assert_eq!(
        server
            .send("PUT", "/drives/rootfs", Some(&body("rootfs", true)))
            .await
            .status(),
        204
    );
    let second_root = server
        .send("PUT", "/drives/other", Some(&body("other", true)))
        .await;
    assert_eq!(
        second_root.fault(),
        "Drive config error: A root block device already exists!"
    );
    let mismatch = server
        .send("PUT", "/drives/data", Some(&body("other", false)))
        .await;
    assert_eq!(
        mismatch.fault(),
        "The id from the path does not match the id from the body!"
    );
    let bad_id = server
        .send("PUT", "/drives/a-b", Some(&body("a-b", false)))
        .await;
    assert_eq!(
        bad_id.fault(),
        "API Resource IDs can only contain alphanumeric characters and underscores."
    );
    let empty_id = server
        .send("PUT", "/drives/", Some(&body("x", false)))
        .await;
    assert_eq!(empty_id.fault(), "The ID cannot be empty.");
    let missing = server
        .send(
            "PUT",
            "/drives/data",
            Some(
                r#"{"drive_id":"data","is_root_device":false,"path_on_host":"/nonexistent/disk"}"#,
            ),
        )
        .await;
    assert_eq!(
        missing.fault(),
        "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent/disk"
    );
    assert_eq!(
        server
            .send("PUT", "/drives/data", Some(&body("data", false)))
            .await
            .status(),
        204
    );
    let config: serde_json::Value =
        serde_json::from_str(&server.send("GET", "/vm/config", None).await.body).unwrap();
    let drives = config["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 2);
    assert_eq!(drives[0]["drive_id"], "rootfs");
    assert_eq!(drives[0]["is_read_only"], true);
    assert_eq!(drives[0]["cache_type"], "Unsafe");
}

#[tokio::test]
async fn lifecycle_pre_and_post_boot_rules() {
    let server = start().await;
    let no_kernel = server
        .send(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        )
        .await;
    assert_eq!(
        no_kernel.fault(),
        "Start microvm error: Cannot start microvm without kernel configuration."
    );
    for (method, path, body) in [
        ("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#),
        ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
    ] {
        let reply = server.send(method, path, Some(body)).await;
        assert_eq!(
            reply.fault(),
            "The requested operation is not supported before starting the microVM.",
            "{method} {path} {body}"
        );
    }

    server.boot().await;
    let info: serde_json::Value =
        serde_json::from_str(&server.send("GET", "/", None).await.body).unwrap();
    assert_eq!(info["state"], "Running");

    for (method, path, body) in [
        ("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count":2}"#),
    ] {
        let reply = server.send(method, path, Some(body)).await;
        assert_eq!(
            reply.fault(),
            "The requested operation is not supported after starting the microVM.",
            "{method} {path}"
        );
    }
    let boot_source = format!(r#"{{"kernel_image_path":"{}"}}"#, server.kernel_path());
    assert_eq!(
        server
            .send("PUT", "/boot-source", Some(&boot_source))
            .await
            .fault(),
        "The requested operation is not supported after starting the microVM."
    );

    for (state, expected) in [
        ("Paused", "Paused"),
        ("Paused", "Paused"),
        ("Resumed", "Running"),
        ("Resumed", "Running"),
    ] {
        let reply = server
            .send("PATCH", "/vm", Some(&format!(r#"{{"state":"{state}"}}"#)))
            .await;
        assert_eq!(reply.status(), 204);
        let info: serde_json::Value =
            serde_json::from_str(&server.send("GET", "/", None).await.body).unwrap();
        assert_eq!(info["state"], expected);
    }
    assert_eq!(
        server
            .send("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#))
            .await
            .status(),
        204
    );
    assert_eq!(
        server
            .send(
                "PUT",
                "/actions",
                Some(r#"{"action_type":"SendCtrlAltDel"}"#)
            )
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn engine_sees_pause_resume_and_ctrl_alt_del_once_each() {
    let engine = FakeEngine::default();
    let calls = engine.calls.clone();
    let server = start_with(engine, Duration::from_secs(10), 51_200).await;
    server.boot().await;
    for body in [
        r#"{"state":"Paused"}"#,
        r#"{"state":"Paused"}"#,
        r#"{"state":"Resumed"}"#,
    ] {
        assert_eq!(server.send("PATCH", "/vm", Some(body)).await.status(), 204);
    }
    server
        .send(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"SendCtrlAltDel"}"#),
        )
        .await;
    assert_eq!(
        *calls.lock().unwrap(),
        ["start", "pause", "resume", "ctrl-alt-del"]
    );
}

#[tokio::test]
async fn http_layer_errors() {
    let server = start().await;
    let post = server.raw(b"POST / HTTP/1.1\r\n\r\n").await;
    assert_eq!(post.status(), 400);
    assert_eq!(post.header("Content-Length"), Some("110"));
    assert_eq!(
        post.body,
        "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped.\" }"
    );
    // HEAD too, body included (hyper would drop it for a HEAD), and the connection stays usable.
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let head = read_reply(&mut stream, &mut buffer).await;
    assert_eq!(
        head.head,
        "HTTP/1.1 400 Bad Request\r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 110"
    );
    assert_eq!(head.body, post.body);
    let next = read_reply(&mut stream, &mut buffer).await;
    assert_eq!(next.status(), 200);
    // A target that is neither a path nor an http:// URL is the root for upstream.
    let star = server.raw(b"GET * HTTP/1.1\r\n\r\n").await;
    assert_eq!(star.status(), 200);
    assert_eq!(star.json()["state"], "Not started");
    let absolute = server
        .raw(b"GET http://localhost/machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(absolute.json()["mem_size_mib"], 128);
    let unknown = server.send("GET", "/foo/bar", None).await;
    assert_eq!(unknown.status(), 400);
    assert_eq!(
        unknown.fault(),
        "Invalid request method and/or path: GET foo."
    );
    let get_with_body = server.send("GET", "/", Some("{}")).await;
    assert_eq!(get_with_body.fault(), "GET request cannot have a body.");
    assert_eq!(
        server.send("PUT", "/machine-config", None).await.fault(),
        "Empty PUT request."
    );
    let json = server.send("PUT", "/actions", Some("{")).await;
    assert_eq!(
        json.fault(),
        "An error occurred when deserializing the json body of a request: EOF while parsing an object at line 1 column 1."
    );
}

#[tokio::test]
async fn payload_limit() {
    let server = start_with(FakeEngine::default(), Duration::from_secs(10), 100).await;
    let body = format!(
        r#"{{"vcpu_count":1,"mem_size_mib":128,"x":"{}"}}"#,
        "a".repeat(100)
    );
    let reply = server.send("PUT", "/machine-config", Some(&body)).await;
    assert_eq!(reply.status(), 400);
    assert_eq!(
        reply.body,
        format!(
            "{{ \"error\": \"Request payload with size {} is larger than the limit of 100 allowed by server.\nAll previous unanswered requests will be dropped.\" }}",
            body.len()
        )
    );
    // Exactly the limit is allowed through to the JSON parser.
    let exact = format!("{:<100}", r#"{"vcpu_count":1,"mem_size_mib":64}"#);
    assert_eq!(
        server
            .send("PUT", "/machine-config", Some(&exact))
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let server = start().await;
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    let mut buffer = Vec::new();
    stream
        .write_all(b"GET /version HTTP/1.1\r\n\r\nPUT /machine-config HTTP/1.1\r\nContent-Length: 34\r\n\r\n{\"vcpu_count\":2,\"mem_size_mib\":64}GET /machine-config HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let first = read_reply(&mut stream, &mut buffer).await;
    let second = read_reply(&mut stream, &mut buffer).await;
    let third = read_reply(&mut stream, &mut buffer).await;
    assert_eq!(first.body, r#"{"firecracker_version":"1.17.0"}"#);
    assert_eq!(second.status(), 204);
    assert!(
        third
            .body
            .starts_with(r#"{"vcpu_count":2,"mem_size_mib":64,"#),
        "{}",
        third.body
    );
    // The connection stays open after an error, too.
    stream
        .write_all(b"GET /nope HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut stream, &mut buffer).await.status(), 400);
    assert_eq!(read_reply(&mut stream, &mut buffer).await.status(), 200);
}

#[tokio::test]
async fn slow_action_times_out_and_gets_stay_live() {
    let engine = FakeEngine::with_start_delay(Duration::from_millis(1500));
    let server = start_with(engine, Duration::from_millis(200), 51_200).await;
    server.configure_bootable().await;
    let started = Instant::now();
    let reply = server
        .send(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        )
        .await;
    assert_eq!(reply.status(), 504);
    assert_eq!(reply.fault(), "VMM action timed out: InstanceStart");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the 504 came before the action ended"
    );
    // While the boot is still running, GETs are answered from the snapshot.
    let info: serde_json::Value =
        serde_json::from_str(&server.send("GET", "/", None).await.body).unwrap();
    assert_eq!(info["state"], "Not started");
    // The timed-out action kept running and completed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info: serde_json::Value =
            serde_json::from_str(&server.send("GET", "/", None).await.body).unwrap();
        if info["state"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "the boot never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
