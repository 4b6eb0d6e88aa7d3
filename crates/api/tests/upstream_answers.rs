//! Upstream Firecracker's exact answers, table-driven: `data/upstream_answers.json` holds
//! request sequences (every method × path, mutations of each body schema of firecracker.yaml:
//! wrong types, missing, extra and null fields, bounds, unicode, huge numbers, plus pre-boot
//! sequences) with the status, headers and body Firecracker 1.17 answered to each, recorded
//! from upstream's binary. Each sequence replays on a fresh server over a real Unix socket.
//!
//! Each entry is `[group, [[request, status, deprecation, body], ...]]`. `{dir}` stands for a
//! directory holding the fixture files made below; the version is squib's API level (1.17.0,
//! docs/deviations.md) and the instance id the test server's. Upstream's headers are always
//! `Server`, `Connection: keep-alive`, `Deprecation: true` when set, then `Content-Type` and
//! `Content-Length` when there is a body.

mod common;

use common::{Server, read_reply, start};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

type Step = (String, u16, bool, String);

fn table() -> Vec<(String, Vec<Step>)> {
    let text = include_str!("data/upstream_answers.json");
    serde_json::from_str(text).expect("the table is JSON")
}

/// The files the recorded requests name, as they were when upstream answered.
fn make_fixtures(dir: &str) {
    let file = |name: &str, len: usize, byte: u8| {
        std::fs::write(format!("{dir}/{name}"), vec![byte; len]).unwrap();
    };
    file("disk.img", 1 << 20, 0);
    file("pmem.img", 2 << 20, 0);
    // Neither an ELF nor a bzImage: only opened before boot.
    file("kernel", 4096, 0x5a);
    file("garbage", 5000, 0xa5);
    file("empty", 0, 0);
    std::fs::create_dir(format!("{dir}/adir")).unwrap();
}

/// The request with `{dir}` replaced and its `Content-Length` made to fit again.
fn request_bytes(raw: &str, dir: &str) -> Vec<u8> {
    let raw = raw.replace("{dir}", dir);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return raw.into_bytes();
    };
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("content-length") => {
                format!("{name}: {}", body.len())
            }
            _ => line.to_string(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}

async fn replay(server: &Server, group: &str, steps: &[Step]) -> Vec<String> {
    let dir = server.dir.path().to_str().unwrap().to_string();
    make_fixtures(&dir);
    let mut failures = Vec::new();
    for (raw, status, deprecation, body) in steps {
        let mut stream = UnixStream::connect(&server.socket).await.unwrap();
        stream.write_all(&request_bytes(raw, &dir)).await.unwrap();
        let reply = read_reply(&mut stream, &mut Vec::new()).await;
        let body = body.replace("{dir}", &dir);
        let mut headers = vec![
            ("Server".to_string(), "Firecracker API".to_string()),
            ("Connection".to_string(), "keep-alive".to_string()),
        ];
        if *deprecation {
            headers.push(("Deprecation".to_string(), "true".to_string()));
        }
        if !body.is_empty() {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
            headers.push(("Content-Length".to_string(), body.len().to_string()));
        }
        let got_headers: Vec<(String, String)> = reply
            .head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if reply.status() != *status || got_headers != headers || reply.body != body {
            failures.push(format!(
                "[{group}] {raw:?}\n  upstream: {status} {headers:?} {body}\n  squib:    {} {got_headers:?} {}",
                reply.status(),
                reply.body
            ));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_answer_matches_upstream() {
    let table = table();
    let steps: usize = table.iter().map(|(_, s)| s.len()).sum();
    assert!(steps > 1000, "the table lost its cases: {steps}");
    let mut failures = Vec::new();
    for (group, steps) in &table {
        let server = start().await;
        failures.extend(replay(&server, group, steps).await);
    }
    assert!(
        failures.is_empty(),
        "{} of {steps} answers differ from upstream's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Upstream ignores `Connection: close`: it answers `Connection: keep-alive` and the
/// connection stays open for the next request.
#[tokio::test]
async fn connection_close_is_ignored_as_upstream_does() {
    let server = start().await;
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    let mut buffer = Vec::new();
    for request in [
        "GET /version HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /version HTTP/1.1\r\nconnection: Close\r\n\r\n",
        "GET /version HTTP/1.1\r\n\r\n",
    ] {
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_reply(&mut stream, &mut buffer).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(
            reply.header("Connection"),
            Some("keep-alive"),
            "{}",
            reply.head
        );
        assert_eq!(reply.body, r#"{"firecracker_version":"1.17.0"}"#);
    }
}

/// A directory as kernel or initrd: upstream opens it at `PUT /boot-source` and fails only
/// when it loads it at `InstanceStart`; so does a kernel its loader cannot read (texts
/// recorded from upstream).
#[tokio::test]
async fn directory_boot_files_fail_at_boot_as_upstream() {
    let server = start().await;
    let dir = server.dir.path().to_str().unwrap().to_string();
    let kernel = server.kernel_path().to_string();
    let instance_start = r#"{"action_type":"InstanceStart"}"#;
    let put = server
        .put(
            "/boot-source",
            &format!(r#"{{"kernel_image_path":"{dir}"}}"#),
        )
        .await;
    assert_eq!(put.status(), 204, "{}", put.body);
    let reply = server.put("/actions", instance_start).await;
    assert_eq!(reply.status(), 400);
    assert_eq!(
        reply.body,
        r#"{"fault_message":"Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Unable to read elf header"}"#
    );
    let put = server
        .put(
            "/boot-source",
            &format!(r#"{{"kernel_image_path":"{kernel}","initrd_path":"{dir}"}}"#),
        )
        .await;
    assert_eq!(put.status(), 204, "{}", put.body);
    let reply = server.put("/actions", instance_start).await;
    assert_eq!(reply.status(), 400);
    assert_eq!(
        reply.body,
        r#"{"fault_message":"Start microvm error: Error with initrd initialization: Cannot load initrd due to an invalid image: Is a directory (os error 21)."}"#
    );
    // Neither an ELF nor a bzImage, and too short for an ELF header (recorded from upstream).
    make_fixtures(&dir);
    for (kernel, loader) in [
        (
            "kernel",
            "failed to load bzImage kernel image: Kernel Loader: Invalid bzImage",
        ),
        (
            "empty",
            "failed to load ELF kernel image: Kernel Loader: Unable to read elf header",
        ),
    ] {
        let body = format!(r#"{{"kernel_image_path":"{dir}/{kernel}"}}"#);
        assert_eq!(server.put("/boot-source", &body).await.status(), 204);
        let reply = server.put("/actions", instance_start).await;
        assert_eq!(
            reply.body,
            format!(
                r#"{{"fault_message":"Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: {loader}"}}"#
            )
        );
    }
    // Upstream opens the serial output before it loads the kernel.
    let body = format!(r#"{{"serial_out_path":"{dir}/adir"}}"#);
    assert_eq!(server.put("/serial", &body).await.status(), 204);
    assert_eq!(
        server.put("/actions", instance_start).await.body,
        r#"{"fault_message":"Start microvm error: Failed to create device manager: Error with EventFd: Is a directory (os error 21)"}"#
    );
    assert_eq!(server.get("/").await.json()["state"], "Not started");
}

/// A directory as a drive: upstream opens it at `PUT /drives`, so read-only it is accepted and
/// `GET /vm/config` lists it, writable it fails with `EISDIR` (recorded from upstream). QEMU
/// cannot use a directory as a disk, so squib refuses it at `InstanceStart`
/// (docs/deviations.md), and the microVM stays configurable.
#[tokio::test]
async fn directory_drive_is_accepted_read_only_and_refused_at_boot() {
    let server = start().await;
    let dir = server.dir.path().to_str().unwrap().to_string();
    make_fixtures(&dir);
    let kernel = server.kernel_path().to_string();
    let body = format!(r#"{{"kernel_image_path":"{kernel}"}}"#);
    assert_eq!(server.put("/boot-source", &body).await.status(), 204);
    let drive = |read_only: bool| {
        format!(
            r#"{{"drive_id":"d","path_on_host":"{dir}/adir","is_root_device":false,"is_read_only":{read_only}}}"#
        )
    };
    let reply = server.put("/drives/d", &drive(false)).await;
    assert_eq!(
        reply.body,
        format!(
            r#"{{"fault_message":"Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: Is a directory (os error 21) {dir}/adir"}}"#
        )
    );
    let reply = server.put("/drives/d", &drive(true)).await;
    assert_eq!(reply.status(), 204, "{}", reply.body);
    let config = server.vm_config().await;
    assert_eq!(config["drives"][0]["path_on_host"], format!("{dir}/adir"));
    assert_eq!(config["drives"][0]["is_read_only"], true);
    let reply = server
        .put("/actions", r#"{"action_type":"InstanceStart"}"#)
        .await;
    assert_eq!(
        reply.body,
        format!(
            r#"{{"fault_message":"Start microvm error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: not a regular file or a block device {dir}/adir"}}"#
        )
    );
    assert_eq!(server.get("/").await.json()["state"], "Not started");
    // Replaced by a regular file, the same microVM boots.
    let body = format!(
        r#"{{"drive_id":"d","path_on_host":"{dir}/disk.img","is_root_device":false,"is_read_only":true}}"#
    );
    assert_eq!(server.put("/drives/d", &body).await.status(), 204);
    let reply = server
        .put("/actions", r#"{"action_type":"InstanceStart"}"#)
        .await;
    assert_eq!(reply.status(), 204, "{}", reply.body);
}

/// Upstream reads a pmem device's configuration back as it came, an empty limiter included,
/// where a drive's disabled limiter reads back as `null` (recorded from upstream).
#[tokio::test]
async fn pmem_limiters_read_back_as_given() {
    let server = start().await;
    let dir = server.dir.path().to_str().unwrap().to_string();
    make_fixtures(&dir);
    for (id, limiter) in [("a", "{}"), ("b", r#"{"ops":{"size":0,"refill_time":0}}"#)] {
        let body =
            format!(r#"{{"id":"{id}","path_on_host":"{dir}/pmem.img","rate_limiter":{limiter}}}"#);
        assert_eq!(
            server.put(&format!("/pmem/{id}"), &body).await.status(),
            204
        );
    }
    let body = format!(
        r#"{{"drive_id":"d","path_on_host":"{dir}/disk.img","is_root_device":false,"rate_limiter":{{}}}}"#
    );
    assert_eq!(server.put("/drives/d", &body).await.status(), 204);
    let config = server.vm_config().await;
    assert_eq!(
        config["pmem"][0]["rate_limiter"],
        serde_json::json!({"bandwidth":null,"ops":null})
    );
    assert_eq!(
        config["pmem"][1]["rate_limiter"],
        serde_json::json!({"bandwidth":null,"ops":{"size":0,"one_time_burst":null,"refill_time":0}})
    );
    assert_eq!(config["drives"][0]["rate_limiter"], serde_json::Value::Null);
}

/// A byte that is not UTF-8 in a JSON body: serde_json's column counts it, as in upstream's
/// build (recorded from upstream).
#[tokio::test]
async fn non_utf8_body_column_as_upstream() {
    let server = start().await;
    for method in ["PUT", "PATCH"] {
        let mut request =
            format!("{method} /mmds HTTP/1.1\r\nContent-Length: 9\r\n\r\n").into_bytes();
        request.extend_from_slice(b"{\"a\":\"\xff\"}");
        let mut stream = UnixStream::connect(&server.socket).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let reply = read_reply(&mut stream, &mut Vec::new()).await;
        assert_eq!(
            reply.body,
            r#"{"fault_message":"An error occurred when deserializing the json body of a request: invalid unicode code point at line 1 column 8."}"#
        );
    }
}
