//! End-to-end: the real `squib` binary boots the real test guest under QEMU through
//! Firecracker's API (and through `--config-file --no-api`), pauses, resumes and ends it.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn getting_started_flow_boots_pauses_resumes_and_powers_off() {
    let guest = guest();
    let mut squib = Squib::start(&["--id", "e2e-boot", "--level", "debug"]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(&squib, &guest, &rootfs, TICKING_BOOT_ARGS);
    assert_eq!(squib.state(), "Not started");
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(squib.state(), "Running");
    squib.wait_for_line(GUEST_MARKER, BOOT_TIMEOUT);
    // The test guest's kernel is an ELF: its segments' pages were allocated while QEMU started.
    let log = squib.log();
    let preallocated = log
        .lines()
        .find_map(|l| {
            l.split("guest RAM pre-allocated for the kernel bytes=")
                .nth(1)
        })
        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok());
    assert!(
        preallocated.is_some_and(|bytes| bytes > 0 && bytes % 4096 == 0),
        "{preallocated:?}\n{log}"
    );
    squib.wait_for_line(ROOTFS_MARKER, BOOT_TIMEOUT);
    squib.wait_for_line("SQUIB-TICK 2", BOOT_TIMEOUT);

    squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(squib.state(), "Paused");
    // Give an in-flight console write time to land, then the guest must make no progress.
    std::thread::sleep(Duration::from_millis(500));
    let ticks_paused = squib.count_lines("SQUIB-TICK");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        squib.count_lines("SQUIB-TICK"),
        ticks_paused,
        "the guest ran while paused"
    );

    squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(squib.state(), "Running");
    squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_paused + 2), BOOT_TIMEOUT);

    // Post-boot configuration is refused with upstream's text.
    let (status, body) = squib.api(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("not supported after starting the microVM"),
        "{body}"
    );

    // Ctrl-Alt-Del makes busybox init reboot; with no reboot in a microVM, squib ends with 0.
    squib.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    let status = squib.wait_exit(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", squib.console());
}

#[test]
fn guest_power_off_ends_squib_with_zero() {
    let guest = guest();
    let mut squib = Squib::start(&[]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=poweroff",
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    let status = squib.wait_exit(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", squib.console());
    let console = squib.console();
    assert!(console.contains(GUEST_MARKER), "{console}");
    assert!(console.contains("SQUIB-ACTION poweroff"), "{console}");
}

#[test]
fn config_file_without_api_boots_the_same_guest() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = rootfs_copy(&guest, dir.path());
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 squib.action=poweroff",
        },
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
    });
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let socket = dir.path().join("unused.sock");
    let args = [
        "--config-file".to_string(),
        config_path.to_str().unwrap().to_string(),
        "--no-api".to_string(),
    ];
    let mut squib = Squib::spawn(dir, socket.clone(), &args);
    let status = squib.wait_exit(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", squib.console());
    let console = squib.console();
    assert!(
        console.contains(GUEST_MARKER) && console.contains(ROOTFS_MARKER),
        "{console}"
    );
    assert!(!socket.exists(), "--no-api must not create a socket");
}

/// With `--config-file` and the API, the socket exists at once but, as upstream's requests
/// wait behind the config boot, the first `GET /` answers `Running`, never `Not started`.
#[test]
fn config_file_with_api_answers_once_booted() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = rootfs_copy(&guest, dir.path());
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 squib.action=wait",
        },
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
    });
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let socket = dir.path().join("api.sock");
    let args = [
        "--config-file".to_string(),
        config_path.to_str().unwrap().to_string(),
        "--api-sock".to_string(),
        socket.to_str().unwrap().to_string(),
    ];
    let mut squib = Squib::spawn(dir, socket, &args);
    assert_eq!(squib.state(), "Running");
    squib.wait_for_line(GUEST_MARKER, BOOT_TIMEOUT);
    squib.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    assert_eq!(squib.wait_exit(BOOT_TIMEOUT).code(), Some(0));
}

#[test]
fn qemu_dying_on_its_own_ends_squib_with_an_error() {
    let mut squib = boot_idle_guest(&guest());
    let qemu = qemu_pid(&squib);
    let status = std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = squib.wait_exit(BOOT_TIMEOUT);
    assert_ne!(
        status.code(),
        Some(0),
        "a crashed engine must not look like a clean shutdown"
    );
    assert!(
        squib.log().contains("stopped unexpectedly"),
        "{}",
        squib.transcript()
    );
}

#[test]
fn terminating_squib_never_leaves_qemu_behind() {
    let mut squib = boot_idle_guest(&guest());
    let qemu = qemu_pid(&squib);
    assert!(process_alive(qemu));
    std::process::Command::new("kill")
        .args(["-TERM", &squib.child.id().to_string()])
        .status()
        .unwrap();
    // Like upstream (which installs no SIGTERM handler), squib dies by the signal, after it
    // stopped QEMU and wrote its metrics.
    let status = squib.wait_exit(Duration::from_secs(20));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM),
        "{status}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process_alive(qemu) {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {} outlived squib",
            qemu
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
