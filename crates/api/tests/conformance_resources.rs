//! Contract §3–§5, §9, §11 for the resources beyond the walking skeleton: routing texts, every
//! body's validation, the state matrix, the boot-path rule, /vm/config and the MMDS store.
//! Every refused request is followed by a check that nothing changed.

mod common;

use common::{Options, assert_fault, start, start_with, start_with_options};
use squib_vmm::fake_engine::FakeEngine;

const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";
const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";

#[tokio::test]
async fn routing_texts() {
    let s = start().await;
    assert_fault(
        &s.put("/snapshot", "{}").await,
        "Missing snapshot operation type.",
    );
    assert_fault(
        &s.put("/snapshot/x", "{}").await,
        "Invalid request method and/or path: PUT /snapshot/x.",
    );
    assert_fault(
        &s.put("/mmds/other", "{}").await,
        "Unrecognized PUT request path `other`.",
    );
    assert_fault(
        &s.get("/balloon/foo").await,
        "Unrecognized GET request path `foo`.",
    );
    assert_fault(
        &s.get("/balloon/hinting").await,
        "Unrecognized GET request path `/hinting/`.",
    );
    assert_fault(
        &s.patch("/balloon/hinting/x", "{}").await,
        "Unrecognized PATCH request path `/hinting/x`.",
    );
    assert_fault(
        &s.send("PATCH", "/balloon/statistics", None).await,
        "Empty PATCH request.",
    );
    assert_fault(
        &s.send("DELETE", "/pmem/", None).await,
        "The ID cannot be empty.",
    );
    assert_fault(
        &s.send("DELETE", "/drives/a.b", None).await,
        "API Resource IDs can only contain alphanumeric characters and underscores.",
    );
    assert_fault(&s.send("DELETE", "/drives/a", None).await, PRE_BOOT);
    assert_fault(
        &s.send("DELETE", "/vsock/a", None).await,
        "Invalid request method and/or path: DELETE vsock.",
    );
    assert_fault(
        &s.put("/hotplug/x", "{}").await,
        "Invalid request method and/or path: PUT hotplug.",
    );
    assert_fault(
        &s.get("/hotplug").await,
        "Invalid request method and/or path: GET hotplug.",
    );
    // Extra segments after /mmds on GET still read the whole store.
    assert_eq!(s.get("/mmds/anything").await.body, "{}");
}

#[tokio::test]
async fn network_interfaces() {
    let s = start().await;
    let ok =
        r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"AA:FC:00:00:00:01","mtu":1500}"#;
    assert_eq!(s.put("/network-interfaces/eth0", ok).await.status(), 204);
    let before = s.vm_config().await;
    assert_eq!(
        before["network-interfaces"],
        serde_json::json!([{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"aa:fc:00:00:00:01","mtu":1500,"rx_rate_limiter":null,"tx_rate_limiter":null}])
    );
    assert_fault(
        &s.put("/network-interfaces/eth1", ok).await,
        "The id from the path [eth1] does not match the id from the body [eth0]!",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"aa:fc:00:00:00:01"}"#,
        )
        .await,
        "Network config error: The MAC address is already in use: aa:fc:00:00:00:01",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1","mtu":67}"#,
        )
        .await,
        "Network config error: Could not create the network device: MTU 67 is out of range [68, 65535]",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"eth7"}"#,
        )
        .await,
        "Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by eth7. Check our documentation on setting up the network devices.",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap0123456789abcd"}"#,
        )
        .await,
        "Network config error: Could not create the network device: Open tap device failed: Invalid interface name",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"1:2:3:4:5:6"}"#,
        )
        .await,
        "An error occurred when deserializing the json body of a request: The provided MAC address is invalid. at line 1 column 68.",
    );
    assert_fault(
        &s.put(
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1","mtu":65536}"#,
        )
        .await,
        "An error occurred when deserializing the json body of a request: invalid value: integer `65536`, expected u16 at line 1 column 53.",
    );
    assert_eq!(s.vm_config().await, before);
    assert_fault(
        &s.patch("/network-interfaces/eth0", r#"{"iface_id":"eth0"}"#)
            .await,
        PRE_BOOT,
    );
}

#[tokio::test]
async fn mmds_store_and_config() {
    let s = start_with(Some(30)).await;
    assert_eq!(s.get("/mmds").await.body, "{}");
    assert_fault(
        &s.patch("/mmds", r#"{"a":1}"#).await,
        "MMDS error: The MMDS data store is not initialized.",
    );
    assert_eq!(
        s.put("/mmds", r#"{"z":{"b":1,"a":2},"y":"v"}"#)
            .await
            .status(),
        204
    );
    assert_eq!(s.get("/mmds").await.body, r#"{"y":"v","z":{"a":2,"b":1}}"#);
    assert_eq!(
        s.patch("/mmds", r#"{"y":null,"z":{"c":3}}"#).await.status(),
        204
    );
    assert_eq!(s.get("/mmds").await.body, r#"{"z":{"a":2,"b":1,"c":3}}"#);
    let big = r#"{"long":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    for r in [s.put("/mmds", big).await, s.patch("/mmds", big).await] {
        assert_eq!(r.status(), 413);
        assert_eq!(
            r.fault(),
            "MMDS limit exceeded error: The MMDS patch request doesn't fit."
        );
    }
    assert_eq!(s.get("/mmds").await.body, r#"{"z":{"a":2,"b":1,"c":3}}"#);

    // /mmds/config: checks in order, triple-M prefix, Deprecation for V1 or no version.
    let r = s
        .put(
            "/mmds/config",
            r#"{"network_interfaces":[],"ipv4_address":"10.0.0.1"}"#,
        )
        .await;
    assert_fault(
        &r,
        "MMMDS config error: The MMDS IPv4 address is not link local.",
    );
    assert_eq!(r.header("Deprecation"), Some("true"));
    assert_fault(
        &s.put(
            "/mmds/config",
            r#"{"version":"V2","network_interfaces":[]}"#,
        )
        .await,
        "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.",
    );
    let r = s
        .put(
            "/mmds/config",
            r#"{"version":"V2","network_interfaces":["eth0"]}"#,
        )
        .await;
    assert_fault(
        &r,
        "MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.",
    );
    assert_eq!(r.header("Deprecation"), None);
    assert_eq!(s.vm_config().await["mmds-config"], serde_json::Value::Null);
    assert_eq!(
        s.put(
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#
        )
        .await
        .status(),
        204
    );
    let r = s
        .put(
            "/mmds/config",
            r#"{"version":"V1","network_interfaces":["eth0"]}"#,
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.header("Deprecation"), Some("true"));
    assert_eq!(
        s.vm_config().await["mmds-config"],
        serde_json::json!({"version":"V1","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254","imds_compat":false})
    );
    assert_fault(
        &s.put(
            "/mmds/config",
            r#"{"network_interfaces":["eth0"],"ipv4_address":"1.2"}"#,
        )
        .await,
        "An error occurred when deserializing the json body of a request: invalid IPv4 address syntax at line 1 column 51.",
    );
}

#[tokio::test]
async fn device_bodies_and_messages() {
    let s = start().await;
    let vsock_path = s.path("v.sock");
    let r = s
        .put(
            "/vsock",
            &format!(r#"{{"vsock_id":"v","guest_cid":3,"uds_path":"{vsock_path}"}}"#),
        )
        .await;
    assert_eq!(r.status(), 204, "{}", r.body);
    assert_eq!(r.header("Deprecation"), Some("true"));
    assert!(std::path::Path::new(&vsock_path).exists());
    // Re-PUT with the same path replaces the device.
    assert_eq!(
        s.put(
            "/vsock",
            &format!(r#"{{"guest_cid":4,"uds_path":"{vsock_path}"}}"#)
        )
        .await
        .status(),
        204
    );
    let busy = s.path("busy.sock");
    let _holder = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    assert_fault(
        &s.put(
            "/vsock",
            &format!(r#"{{"guest_cid":5,"uds_path":"{busy}"}}"#),
        )
        .await,
        "Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)",
    );
    // As upstream, the configured device is dropped before the new one is refused.
    assert_eq!(s.vm_config().await["vsock"], serde_json::Value::Null);
    assert!(!std::path::Path::new(&vsock_path).exists());
    assert_eq!(
        s.put(
            "/vsock",
            &format!(r#"{{"guest_cid":4,"uds_path":"{vsock_path}"}}"#)
        )
        .await
        .status(),
        204
    );
    let before = s.vm_config().await;
    assert_fault(
        &s.put("/balloon", r#"{"amount_mib":129,"deflate_on_oom":false}"#)
            .await,
        "Balloon config error: Amount of pages requested is too large.",
    );
    assert_fault(
        &s.get("/balloon").await,
        "Balloon config error: No balloon device found.",
    );
    assert_fault(
        &s.put(
            "/balloon",
            r#"{"amount_mib":1,"deflate_on_oom":false,"stats_polling_interval_s":65536}"#,
        )
        .await,
        "An error occurred when deserializing the json body of a request: invalid value: integer `65536`, expected u16 at line 1 column 71.",
    );
    for (body, msg) in [
        (
            r#"{"total_size_mib":128,"block_size_mib":1}"#,
            "Block size must not be lower than 2 MiB",
        ),
        (
            r#"{"total_size_mib":128,"block_size_mib":3}"#,
            "Block size must be a power of 2",
        ),
        (
            r#"{"total_size_mib":128,"slot_size_mib":2}"#,
            "Slot size must not be lower than 128 MiB",
        ),
        (
            r#"{"total_size_mib":64}"#,
            "Total size must not be lower than slot size (128 MiB)",
        ),
        (
            r#"{"total_size_mib":200}"#,
            "Total size must be a multiple of slot size (128 MiB)",
        ),
    ] {
        assert_fault(
            &s.put("/hotplug/memory", body).await,
            &format!("Memory hotplug config error: {msg}"),
        );
    }
    assert_fault(
        &s.put("/logger", r#"{"level":"loud"}"#).await,
        "An error occurred when deserializing the json body of a request: Invalid LevelFilter at line 1 column 16.",
    );
    assert_fault(
        &s.put("/logger", r#"{"log_path":"/nonexistent/dir/log"}"#)
            .await,
        "Logger error: Failed to open target file: No such file or directory (os error 2)",
    );
    assert_eq!(s.vm_config().await, before);

    assert_eq!(
        s.put("/balloon", r#"{"amount_mib":64,"deflate_on_oom":true}"#)
            .await
            .status(),
        204
    );
    assert_eq!(
        s.get("/balloon").await.body,
        r#"{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false}"#
    );
    assert_fault(
        &s.patch("/machine-config", r#"{"mem_size_mib":32}"#).await,
        "Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.",
    );
    assert_eq!(
        s.put(
            "/entropy",
            r#"{"rate_limiter":{"bandwidth":{"size":0,"refill_time":1}}}"#
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        s.put(
            "/pmem/p0",
            &format!(
                r#"{{"id":"p0","path_on_host":"{}","root_device":true}}"#,
                s.path("pm")
            )
        )
        .await
        .status(),
        204
    );
    assert_fault(
        &s.put(
            "/drives/root",
            &format!(
                r#"{{"drive_id":"root","is_root_device":true,"path_on_host":"{}"}}"#,
                s.disk.path().display()
            ),
        )
        .await,
        "Drive config error: Attempt to add block as a root device while the root device defined as a pmem device",
    );
    assert_fault(
        &s.put(
            "/pmem/p1",
            r#"{"id":"p1","path_on_host":"/x","root_device":true}"#,
        )
        .await,
        "Pmem config error: A root pmem device already exist",
    );
    assert_fault(
        &s.put("/pmem/p1", r#"{"id":"p2","path_on_host":"/x"}"#)
            .await,
        "The id from the path does not match the id from the body!",
    );
    let metrics = s.path("metrics.fifo");
    assert_eq!(
        s.put(
            "/metrics",
            &format!(r#"{{"metrics_path":"{metrics}","unknown":1}}"#)
        )
        .await
        .status(),
        204
    );
    assert_fault(
        &s.put("/metrics", &format!(r#"{{"metrics_path":"{metrics}"}}"#))
            .await,
        "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.",
    );
    let cfg = s.vm_config().await;
    let keys: Vec<_> = cfg.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 13);
    assert_eq!(cfg["entropy"], serde_json::json!({"rate_limiter":null}));
    assert_eq!(
        cfg["vsock"],
        serde_json::json!({"guest_cid":4,"uds_path":vsock_path})
    );
    assert_eq!(cfg["pmem"][0]["root_device"], true);
    assert_eq!(cfg["metrics"], serde_json::Value::Null);
}

#[tokio::test]
async fn state_matrix_after_boot() {
    let s = start().await;
    for (method, path, body) in [
        ("PATCH", "/balloon", r#"{"amount_mib":1}"#),
        (
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s":1}"#,
        ),
        ("PATCH", "/balloon/hinting/start", ""),
        ("PATCH", "/drives/a", r#"{"drive_id":"a"}"#),
        ("PATCH", "/pmem/a", r#"{"id":"a"}"#),
        ("PATCH", "/hotplug/memory", r#"{"requested_size_mib":2}"#),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#,
        ),
        ("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#),
    ] {
        let body = (!body.is_empty()).then_some(body);
        assert_fault(&s.send(method, path, body).await, PRE_BOOT);
    }
    for path in [
        "/balloon/statistics",
        "/balloon/hinting/status",
        "/hotplug/memory",
    ] {
        assert_fault(&s.get(path).await, PRE_BOOT);
    }
    s.boot().await;
    for (path, body) in [
        ("/boot-source", r#"{"kernel_image_path":"/k"}"#),
        ("/cpu-config", "{}"),
        ("/logger", "{}"),
        ("/metrics", r#"{"metrics_path":"/m"}"#),
        ("/serial", "{}"),
        ("/balloon", r#"{"amount_mib":1,"deflate_on_oom":false}"#),
        ("/vsock", r#"{"guest_cid":3,"uds_path":"/v"}"#),
        ("/entropy", "{}"),
        ("/mmds/config", r#"{"network_interfaces":["a"]}"#),
        ("/hotplug/memory", r#"{"total_size_mib":128}"#),
        (
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#,
        ),
    ] {
        assert_fault(&s.put(path, body).await, POST_BOOT);
    }
    assert_fault(
        &s.put(
            "/drives/d",
            r#"{"drive_id":"d","is_root_device":false,"path_on_host":"/x"}"#,
        )
        .await,
        "PCI is not enabled",
    );
    assert_fault(
        &s.send("DELETE", "/network-interfaces/n", None).await,
        "PCI is not enabled",
    );
    assert_fault(
        &s.patch("/balloon", r#"{"amount_mib":1}"#).await,
        "Balloon update error: Failed perform action on device: Device not found",
    );
    assert_fault(
        &s.get("/balloon").await,
        "Internal VMM error: Failed perform action on device: Device not found",
    );
    assert_fault(
        &s.get("/hotplug/memory").await,
        "Internal VMM error: Failed perform action on device: Device not found",
    );
    assert_fault(
        &s.patch("/drives/a", r#"{"drive_id":"a"}"#).await,
        "Drive config error: Unable to patch the block device: Failed perform action on device: Device not found Please verify the request arguments.",
    );
    assert_fault(
        &s.patch("/network-interfaces/a", r#"{"iface_id":"a"}"#)
            .await,
        "Network config error: Unable to update the net device: Failed perform action on device: Device not found",
    );
    // Upstream looks the device up only to apply a rate limiter: without one, 204.
    assert_eq!(s.patch("/pmem/a", r#"{"id":"a"}"#).await.status(), 204);
    assert_fault(
        &s.patch("/pmem/a", r#"{"id":"a","rate_limiter":{}}"#).await,
        "Pmem config error: Unable to patch the pmem device: Failed perform action on device: Device not found Please verify the request arguments.",
    );
    assert_fault(
        &s.put(
            "/snapshot/create",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#,
        )
        .await,
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running",
    );
    // No MMDS-enabled interface after boot: the store is unreachable.
    assert_fault(
        &s.get("/mmds").await,
        "MMDS error: The MMDS data store is not initialized.",
    );
    assert_fault(
        &s.put("/mmds", "{}").await,
        "MMDS error: The MMDS data store is not initialized.",
    );
    assert_eq!(
        s.put("/actions", r#"{"action_type":"FlushMetrics"}"#)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn boot_path_rule_and_fatal_load() {
    // A boot-path call, even a refused one, forbids a later load (not fatal).
    let s = start().await;
    assert_eq!(
        s.put("/boot-source", r#"{"kernel_image_path":"/nonexistent"}"#)
            .await
            .status(),
        400
    );
    assert_fault(
        &s.put(
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#,
        )
        .await,
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.",
    );
    assert_eq!(s.get("/").await.status(), 200);
    assert!(!s.vmm.is_finished());

    // Logger, serial, metrics, cpu-config and MMDS data do not set the mark; a failed load is fatal.
    let s = start().await;
    assert_eq!(s.put("/logger", r#"{"level":"Debug"}"#).await.status(), 204);
    assert_eq!(
        s.put("/serial", r#"{"serial_out_path":"/s"}"#)
            .await
            .status(),
        204
    );
    assert_eq!(
        s.put("/cpu-config", r#"{"kvm_capabilities":["!171"]}"#)
            .await
            .status(),
        204
    );
    assert_eq!(s.put("/mmds", r#"{"a":1}"#).await.status(), 204);
    assert_fault(
        &s.put("/snapshot/load", r#"{"snapshot_path":"s","mem_backend":{"backend_path":"m","backend_type":"File"},"mem_file_path":"m"}"#).await,
        "An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.",
    );
    let r = s
        .put(
            "/snapshot/load",
            r#"{"snapshot_path":"/nonexistent/state","mem_file_path":"m"}"#,
        )
        .await;
    assert_fault(
        &r,
        "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)",
    );
    assert_eq!(r.header("Deprecation"), Some("true"));
    let exit = tokio::time::timeout(std::time::Duration::from_secs(5), s.vmm)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(exit, squib_vmm::VmmExit::FatalError(_)),
        "{exit:?}"
    );
}

#[tokio::test]
async fn corrupt_snapshot_state_files_fail_the_load_fatally() {
    use squib_vmm::snapshot_file::{StateHeader, encode};
    let resources = StateHeader::from_resources(&squib_vmm::VmResources::default());
    let good = encode(&resources, b"device state");
    let mut bad_magic = good.clone();
    bad_magic[..8].copy_from_slice(&7u64.to_le_bytes());
    let body = bad_magic.len() - 8;
    let crc = squib_snapshot::crc64(&bad_magic[..body]);
    bad_magic[body..].copy_from_slice(&crc.to_le_bytes());
    let mut bad_crc = good.clone();
    bad_crc[20] ^= 1;
    let prefix = "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to load snapshot state from file: ";
    for (bytes, text) in [
        (bad_crc, "CRC64 validation failed"),
        // Upstream's texts for a file its decoder cannot read, and for one shorter than a CRC.
        (
            bad_magic,
            "An error occurred during bitcode serialization: bitcode error",
        ),
        (
            vec![0x5a; 5000],
            "An error occurred during bitcode serialization: bitcode error",
        ),
        (b"tiny".to_vec(), "IO Error: File too short to contain CRC"),
        (Vec::new(), "IO Error: File too short to contain CRC"),
    ] {
        let s = start().await;
        let state = s.path("vm.state");
        std::fs::write(&state, bytes).unwrap();
        let body = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": s.path("vm.mem")},
        })
        .to_string();
        assert_fault(
            &s.put("/snapshot/load", &body).await,
            &format!("{prefix}{text}"),
        );
        let exit = tokio::time::timeout(std::time::Duration::from_secs(5), s.vmm)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(exit, squib_vmm::VmmExit::FatalError(_)),
            "{exit:?}"
        );
    }
}

/// The Uffd backend is refused once the state file is read (upstream reads it first), and the
/// load fails fatally.
#[tokio::test]
async fn uffd_backend_is_refused_after_the_state_file() {
    use squib_vmm::snapshot_file::{StateHeader, encode};
    let resources = StateHeader::from_resources(&squib_vmm::VmResources::default());
    let s = start().await;
    let state = s.path("vm.state");
    std::fs::write(&state, encode(&resources, b"device state")).unwrap();
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": s.path("uffd.sock")},
    })
    .to_string();
    assert_fault(
        &s.put("/snapshot/load", &body).await,
        "Load snapshot error: The Uffd memory backend is not supported by squib: use backend_type File.",
    );
    let exit = tokio::time::timeout(std::time::Duration::from_secs(5), s.vmm)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(exit, squib_vmm::VmmExit::FatalError(_)),
        "{exit:?}"
    );
}

/// A state file is as untrusted as an API body: crafted values behind a valid CRC are
/// refused like the same values sent to the API, and the load fails fatally.
#[tokio::test]
async fn crafted_state_file_values_are_validated_like_api_input() {
    use squib_vmm::snapshot_file::{StateHeader, encode};
    let prefix = "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Invalid snapshot content: ";
    let crafted = |edit: &dyn Fn(&mut StateHeader)| {
        let mut resources = StateHeader::from_resources(&squib_vmm::VmResources::default());
        edit(&mut resources);
        encode(&resources, b"device state")
    };
    let cases: [(Vec<u8>, String); 4] = [
        (
            crafted(&|r| r.config.machine_config.as_mut().unwrap().vcpu_count = 0),
            "machine configuration: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.".into(),
        ),
        (
            crafted(&|r| r.config.machine_config.as_mut().unwrap().mem_size_mib = usize::MAX),
            format!("a memory size of {} MiB", usize::MAX),
        ),
        (
            crafted(&|r| {
                r.config.balloon = serde_json::from_str(r#"{"amount_mib":4096,"deflate_on_oom":false}"#)
                    .unwrap()
            }),
            "balloon: ".into(),
        ),
        (
            crafted(&|r| {
                r.config.pmem = serde_json::from_str(
                    r#"[{"id":"pm0","path_on_host":"/a","root_device":true},{"id":"pm1","path_on_host":"/b","root_device":true}]"#,
                )
                .unwrap()
            }),
            "pmem pm1: A root pmem device already exist".into(),
        ),
    ];
    for (bytes, text) in cases {
        let s = start().await;
        let state = s.path("vm.state");
        std::fs::write(&state, bytes).unwrap();
        let body = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": s.path("vm.mem")},
        })
        .to_string();
        let reply = s.put("/snapshot/load", &body).await;
        assert_eq!(reply.status(), 400);
        assert!(
            reply.body.contains(&format!("{prefix}{text}")),
            "{}",
            reply.body
        );
        let exit = tokio::time::timeout(std::time::Duration::from_secs(5), s.vmm)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(exit, squib_vmm::VmmExit::FatalError(_)),
            "{exit:?}"
        );
    }
}

#[tokio::test]
async fn diff_snapshots_are_refused_on_a_paused_vm() {
    let s = start().await;
    s.boot().await;
    assert_eq!(s.patch("/vm", r#"{"state":"Paused"}"#).await.status(), 204);
    let body = serde_json::json!({
        "snapshot_path": s.path("vm.state"),
        "mem_file_path": s.path("vm.mem"),
        "snapshot_type": "Diff",
    })
    .to_string();
    assert_fault(
        &s.put("/snapshot/create", &body).await,
        "Create snapshot error: Diff snapshots are not supported by squib: only Full snapshots can be created.",
    );
    // Nothing is left behind.
    assert!(!std::path::Path::new(&s.path("vm.state")).exists());
    assert!(!std::path::Path::new(&s.path("vm.mem")).exists());
}

/// A device whose `DELETE` was answered but which the guest still holds would be in QEMU's
/// state and missing from the state file: create refuses before touching any file (the
/// paused guest cannot finish releasing it).
#[tokio::test]
async fn snapshot_create_is_refused_while_an_unplug_is_pending() {
    let engine = FakeEngine::default();
    let s = start_with_options(Options {
        engine: engine.clone(),
        ..Options::default()
    })
    .await;
    s.boot().await;
    assert_eq!(s.patch("/vm", r#"{"state":"Paused"}"#).await.status(), 204);
    *engine.unplugging.lock().unwrap() = vec!["drive/data".to_string(), "net/eth1".to_string()];
    let body = serde_json::json!({
        "snapshot_path": s.path("vm.state"),
        "mem_file_path": s.path("vm.mem"),
    })
    .to_string();
    assert_fault(
        &s.put("/snapshot/create", &body).await,
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: the guest has not released the devices being unplugged yet: drive/data, net/eth1. Resume the microVM until it has, then pause it and create the snapshot.",
    );
    assert!(!std::path::Path::new(&s.path("vm.state")).exists());
    assert!(!std::path::Path::new(&s.path("vm.mem")).exists());
    // Once the guest has let go, create goes on to the engine (which saves nothing here).
    engine.unplugging.lock().unwrap().clear();
    let reply = s.put("/snapshot/create", &body).await;
    assert!(!reply.body.contains("unplugged"), "{}", reply.body);
}

#[tokio::test]
async fn vhost_user_drives_patch_and_snapshot_rules() {
    let s = start().await;
    let vhost = serde_json::json!({
        "drive_id": "vub", "is_root_device": false, "socket": s.path("vhost.sock"),
    });
    // As upstream, the backend is connected here: an absent one is refused at once.
    assert_fault(
        &s.put("/drives/vub", &vhost.to_string()).await,
        "Drive config error: Unable to create the virtio block device: Vhost user backend error: Vhost-user error: Failed to connect to UDS Unix stream: No such file or directory (os error 2)",
    );
    assert_eq!(s.vm_config().await["drives"], serde_json::json!([]));
    let backend = std::os::unix::net::UnixListener::bind(s.path("vhost.sock")).unwrap();
    assert_eq!(s.put("/drives/vub", &vhost.to_string()).await.status(), 204);
    let (_connection, _) = backend.accept().unwrap();
    let file = serde_json::json!({
        "drive_id": "file", "is_root_device": false, "path_on_host": s.disk.path(),
    });
    assert_eq!(s.put("/drives/file", &file.to_string()).await.status(), 204);
    s.boot().await;

    const DIFFERENT_BACKEND: &str = "Drive config error: Unable to patch the block device: Block: Running method expected different backend. Please verify the request arguments.";
    // Neither path nor limiter: upstream's vhost-user config refresh (QEMU's device does it).
    assert_eq!(
        s.patch("/drives/vub", r#"{"drive_id":"vub"}"#)
            .await
            .status(),
        204
    );
    let new_path = serde_json::json!({"drive_id": "vub", "path_on_host": s.disk.path()});
    assert_fault(
        &s.patch("/drives/vub", &new_path.to_string()).await,
        DIFFERENT_BACKEND,
    );
    assert_fault(
        &s.patch(
            "/drives/vub",
            r#"{"drive_id":"vub","rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#,
        )
        .await,
        DIFFERENT_BACKEND,
    );
    // The refresh is for vhost-user drives only.
    assert_fault(
        &s.patch("/drives/file", r#"{"drive_id":"file"}"#).await,
        DIFFERENT_BACKEND,
    );
    assert_eq!(
        s.vm_config().await["drives"][0]["socket"],
        s.path("vhost.sock")
    );

    assert_eq!(s.patch("/vm", r#"{"state":"Paused"}"#).await.status(), 204);
    let body = serde_json::json!({
        "snapshot_path": s.path("vm.state"),
        "mem_file_path": s.path("vm.mem"),
    })
    .to_string();
    assert_fault(
        &s.put("/snapshot/create", &body).await,
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: Devices without snapshot support are present: vhost-user-block(id: vub)",
    );
    assert!(!std::path::Path::new(&s.path("vm.state")).exists());
    assert!(!std::path::Path::new(&s.path("vm.mem")).exists());
}

fn mkfifo(path: &str) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// FIFOs (nobody writes to them) given as a kernel, a drive, a drive swapped in, a state file
/// or a memory file are refused at once: nothing waits on them, the API keeps answering.
#[tokio::test]
async fn fifos_are_refused_without_waiting() {
    let s = start().await;
    let fifo = s.path("fifo");
    mkfifo(&fifo);
    let reply = s
        .put(
            "/boot-source",
            &serde_json::json!({"kernel_image_path": fifo}).to_string(),
        )
        .await;
    assert_eq!(reply.status(), 400);
    assert!(reply.body.contains("not a regular file"), "{}", reply.body);
    for read_only in [true, false] {
        let body = serde_json::json!({
            "drive_id": "fifo", "path_on_host": fifo,
            "is_root_device": false, "is_read_only": read_only,
        });
        let reply = s.put("/drives/fifo", &body.to_string()).await;
        assert_eq!(reply.status(), 400);
        assert!(
            reply.body.contains("not a regular file or a block device"),
            "{}",
            reply.body
        );
    }
    let disk = s.path("disk");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let body = serde_json::json!({
        "drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true,
    });
    assert_eq!(s.put("/drives/data", &body.to_string()).await.status(), 204);
    s.boot().await;
    let reply = s
        .patch(
            "/drives/data",
            &serde_json::json!({"drive_id": "data", "path_on_host": fifo}).to_string(),
        )
        .await;
    assert_eq!(reply.status(), 400);
    assert!(
        reply.body.contains("not a regular file or a block device"),
        "{}",
        reply.body
    );
    assert_eq!(s.get("/").await.status(), 200);

    // Loads: a FIFO as the state file, then as the memory file (each load failure is fatal).
    use squib_vmm::snapshot_file::{StateHeader, encode};
    let s = start().await;
    let fifo = s.path("fifo");
    mkfifo(&fifo);
    let load = |state: &str, mem: &str| {
        serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
        })
        .to_string()
    };
    let reply = s
        .put("/snapshot/load", &load(&fifo, &s.path("vm.mem")))
        .await;
    assert_fault(
        &reply,
        &format!(
            "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: {fifo} is not a regular file: a snapshot state file must be one"
        ),
    );
    let s = start().await;
    let fifo = s.path("fifo");
    mkfifo(&fifo);
    let state = s.path("vm.state");
    let resources = StateHeader::from_resources(&squib_vmm::VmResources::default());
    std::fs::write(&state, encode(&resources, b"device state")).unwrap();
    let reply = s.put("/snapshot/load", &load(&state, &fifo)).await;
    assert_fault(
        &reply,
        &format!(
            "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: Error creating guest memory from file: the memory file {fifo} is not a regular file"
        ),
    );
}

/// Upstream's serde texts, pinned request by request: `PathBuf` fields, enum variant order,
/// `null` for a non-optional enum, custom CPU template parsers.
#[tokio::test]
async fn upstream_serde_texts_table() {
    const JSON: &str = "An error occurred when deserializing the json body of a request: ";
    let s = start().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "/logger",
            r#"{"log_path":5}"#,
            "invalid type: integer `5`, expected path string at line 1 column 13",
        ),
        (
            "/metrics",
            r#"{"metrics_path":[]}"#,
            "invalid type: sequence, expected path string at line 1 column 16",
        ),
        (
            "/serial",
            r#"{"serial_out_path":true}"#,
            "invalid type: boolean `true`, expected path string at line 1 column 23",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path":1,"mem_file_path":"m"}"#,
            "invalid type: integer `1`, expected path string at line 1 column 18",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_backend":{"backend_path":{},"backend_type":"File"}}"#,
            "invalid type: map, expected path string at line 1 column 51",
        ),
        (
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"X"}"#,
            "unknown variant `X`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A` at line 1 column 53",
        ),
        (
            "/mmds/config",
            r#"{"version":null,"network_interfaces":[]}"#,
            "expected value at line 1 column 12",
        ),
        (
            "/cpu-config",
            r#"{"kvm_capabilities":["!x"]}"#,
            "Failed to parse string [!x] as a kvm capability - can not convert to numeric: invalid digit found in string at line 1 column 26",
        ),
        (
            "/cpu-config",
            r#"{"msr_modifiers":[{"addr":"16","bitmap":"0"}]}"#,
            "No supported number system prefix found in value [16]. Make sure to prefix the number with '0x' for hexadecimal numbers or '0b' for binary numbers. at line 1 column 30",
        ),
    ];
    for (path, body, text) in cases {
        let reply = s.put(path, body).await;
        assert_eq!(reply.status(), 400, "{path} {body}: {}", reply.body);
        assert_eq!(reply.fault(), format!("{JSON}{text}."), "{path} {body}");
    }
    // Accepted as upstream: a short bitmap without its prefix.
    let reply = s
        .put(
            "/cpu-config",
            r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{"register":"eax","bitmap":"1x0"}]}]}"#,
        )
        .await;
    assert_eq!(reply.status(), 204, "{}", reply.body);
}

/// Which of several faults upstream reports when a request breaks more than one rule: its
/// checks run in a fixed order (root-device rules before the backing file is opened or the
/// backend connected), and the exact answer bytes follow from that order.
#[tokio::test]
async fn upstream_check_order_table() {
    let s = start().await;
    let disk = s.disk.path().to_str().unwrap().to_string();
    let drive = |id: &str, root: bool, path: &str| {
        serde_json::json!({"drive_id": id, "is_root_device": root, "path_on_host": path})
            .to_string()
    };
    assert_eq!(
        s.put("/drives/rootfs", &drive("rootfs", true, &disk))
            .await
            .status(),
        204
    );
    let cases: &[(&str, String, &str)] = &[
        // A second root whose file is missing: the root rule is reported, not the file.
        (
            "/drives/other",
            drive("other", true, "/nonexistent/disk"),
            r#"{"fault_message":"Drive config error: A root block device already exists!"}"#,
        ),
        // The same for a vhost-user root whose backend is absent.
        (
            "/drives/other",
            serde_json::json!({"drive_id": "other", "is_root_device": true, "socket": "/nonexistent/vu.sock"})
                .to_string(),
            r#"{"fault_message":"Drive config error: A root block device already exists!"}"#,
        ),
        // Replacing the root itself with a missing file reports the file.
        (
            "/drives/rootfs",
            drive("rootfs", true, "/nonexistent/disk"),
            r#"{"fault_message":"Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent/disk"}"#,
        ),
        // A root pmem device next to a root drive.
        (
            "/pmem/p",
            serde_json::json!({"id": "p", "path_on_host": "/nonexistent/pmem", "root_device": true})
                .to_string(),
            r#"{"fault_message":"Pmem config error: Attempt to add pmem as a root device while the root device defined as a block device"}"#,
        ),
    ];
    for (path, body, answer) in cases {
        let reply = s.put(path, body).await;
        assert_eq!(
            (reply.status(), reply.body.as_str()),
            (400, *answer),
            "{path} {body}"
        );
    }
    // Nothing changed.
    let drives = &s.vm_config().await["drives"];
    assert_eq!(drives.as_array().unwrap().len(), 1);
    assert_eq!(drives[0]["path_on_host"], disk);
}
