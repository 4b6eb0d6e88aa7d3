//! End-to-end snapshots: a guest printing `SQUIB-TICK n` every second is paused and
//! snapshotted by one squib, then restored by new squib processes; its tick counter goes on
//! from where it was. Error paths answer upstream's texts (and a failed load ends squib).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The highest `SQUIB-TICK n` printed so far.
fn last_tick(squib: &Squib) -> u64 {
    squib
        .console()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SQUIB-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The lowest tick printed (the first one after a restore).
fn first_tick(squib: &Squib) -> u64 {
    squib
        .console()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SQUIB-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .min()
        .unwrap_or(0)
}

/// squib's log line for a snapshot of a restored guest saved from its dirtied pages.
const DIRTIED_SAVE: &str = "of dirtied pages over the memory file";

fn load_body(dir: &Path, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": dir.join("vm.state"),
        "mem_backend": {"backend_type": "File", "backend_path": dir.join("vm.mem")},
        "resume_vm": resume,
    })
    .to_string()
}

#[test]
fn snapshot_create_then_restore_in_new_processes() {
    let guest = guest();
    let snap = tempfile::tempdir().unwrap();
    let rootfs = rootfs_copy(&guest, snap.path());
    let create_body = serde_json::json!({
        "snapshot_path": snap.path().join("vm.state"),
        "mem_file_path": snap.path().join("vm.mem"),
    })
    .to_string();

    // Boot, then snapshot.
    let ticks_at_snapshot;
    {
        let squib = Squib::start(&["--id", "e2e-snap"]);
        boot_ticking(&squib, &guest, &rootfs, 3);

        let (status, body) = squib.api("PUT", "/snapshot/create", Some(&create_body));
        assert_eq!(status, 400);
        assert!(
            body.contains("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"),
            "{body}"
        );
        let diff = create_body.replace('}', r#","snapshot_type":"Diff"}"#);
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        let (status, body) = squib.api("PUT", "/snapshot/create", Some(&diff));
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Diff snapshots are not supported"), "{body}");

        std::thread::sleep(Duration::from_millis(300));
        ticks_at_snapshot = last_tick(&squib);
        let started = Instant::now();
        squib.ok("PUT", "/snapshot/create", &create_body);
        eprintln!("create took {:?}", started.elapsed());
        assert_eq!(squib.state(), "Paused");
        let mem = std::fs::metadata(snap.path().join("vm.mem")).unwrap();
        assert_eq!(mem.len(), 256 << 20);
        let version = std::process::Command::new(env!("CARGO_BIN_EXE_squib"))
            .arg("--describe-snapshot")
            .arg(snap.path().join("vm.state"))
            .output()
            .unwrap();
        assert!(version.status.success());
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "v1.1.0");

        // The snapshotted VM is still usable.
        squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
        squib.wait_for_line(
            &format!("SQUIB-TICK {}", ticks_at_snapshot + 1),
            BOOT_TIMEOUT,
        );
        // Dropping squib kills it and its QEMU.
    }
    let mem_before = std::fs::read(snap.path().join("vm.mem")).unwrap();
    let snap2 = tempfile::tempdir().unwrap();
    let ticks_at_second;

    // A new squib restores and resumes at once: the ticks go on from the snapshot's count.
    {
        let squib = Squib::start(&["--id", "e2e-snap-2"]);
        let started = Instant::now();
        squib.ok("PUT", "/snapshot/load", &load_body(snap.path(), true));
        eprintln!("load took {:?}", started.elapsed());
        assert_eq!(squib.state(), "Running");
        let (_, config) = squib.api("GET", "/machine-config", None);
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["mem_size_mib"], 256);
        assert_eq!(config["vcpu_count"], 1);
        let (_, vm) = squib.api("GET", "/vm/config", None);
        let vm: serde_json::Value = serde_json::from_str(&vm).unwrap();
        assert_eq!(vm["boot-source"]["kernel_image_path"], "");
        assert_eq!(vm["drives"][0]["drive_id"], "rootfs");
        squib.wait_for_line(
            &format!("SQUIB-TICK {}", ticks_at_snapshot + 3),
            BOOT_TIMEOUT,
        );
        assert!(
            first_tick(&squib) > ticks_at_snapshot,
            "the restored guest restarted its count:\n{}",
            squib.console()
        );
        assert!(
            !squib.console().contains(GUEST_MARKER),
            "the guest booted again"
        );
        // The restored guest maps the memory file copy-on-write; its own snapshot must still
        // hold all of its memory (second generation, restored below).
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        ticks_at_second = last_tick(&squib);
        let second = serde_json::json!({
            "snapshot_path": snap2.path().join("vm.state"),
            "mem_file_path": snap2.path().join("vm.mem"),
        })
        .to_string();
        let started = Instant::now();
        squib.ok("PUT", "/snapshot/create", &second);
        eprintln!("create of a restored guest took {:?}", started.elapsed());
        assert_eq!(
            std::fs::metadata(snap2.path().join("vm.mem"))
                .unwrap()
                .len(),
            256 << 20
        );
        // Saved from the pages the guest dirtied, not through a migration of all its RAM.
        assert_eq!(
            squib.log().matches(DIRTIED_SAVE).count(),
            1,
            "{}",
            squib.transcript()
        );
        assert_eq!(squib.state(), "Paused");
    }
    // The restored guest ran, yet the user's memory file is untouched.
    assert!(
        std::fs::read(snap.path().join("vm.mem")).unwrap() == mem_before,
        "the memory file was modified"
    );

    // The second-generation snapshot (QEMU's devices behind the first one's RAM part, the
    // dirtied pages over the first memory file) goes on from where the restored guest was
    // paused: the tick counter it wrote after its restore is there.
    let mem2_before = std::fs::read(snap2.path().join("vm.mem")).unwrap();
    let snap3 = tempfile::tempdir().unwrap();
    let ticks_at_third;
    {
        let squib = Squib::start(&["--id", "e2e-snap-3"]);
        squib.ok("PUT", "/snapshot/load", &load_body(snap2.path(), true));
        assert_eq!(squib.state(), "Running");
        squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_at_second + 2), BOOT_TIMEOUT);
        assert!(first_tick(&squib) > ticks_at_second, "{}", squib.console());
        // A third generation splices the second's stream in turn.
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        ticks_at_third = last_tick(&squib);
        let third = serde_json::json!({
            "snapshot_path": snap3.path().join("vm.state"),
            "mem_file_path": snap3.path().join("vm.mem"),
        })
        .to_string();
        squib.ok("PUT", "/snapshot/create", &third);
        assert_eq!(
            squib.log().matches(DIRTIED_SAVE).count(),
            1,
            "{}",
            squib.transcript()
        );
        // The guest is still usable after such a save.
        squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
        squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_at_third + 1), BOOT_TIMEOUT);
    }
    assert!(
        std::fs::read(snap2.path().join("vm.mem")).unwrap() == mem2_before,
        "the second memory file was modified"
    );
    // QEMU's devices-only state records the guest as running; a load without resume_vm
    // still waits, paused.
    {
        let squib = Squib::start(&[]);
        squib.ok("PUT", "/snapshot/load", &load_body(snap3.path(), false));
        assert_eq!(squib.state(), "Paused");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(last_tick(&squib), 0, "the guest ran while paused");
        squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
        assert_eq!(squib.state(), "Running");
        squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_at_third + 2), BOOT_TIMEOUT);
        assert!(first_tick(&squib) > ticks_at_third, "{}", squib.console());
        // The splice keeps the description of the sections QEMU's loader reads after them.
        assert!(
            !squib.console().contains("Expected vmdescription"),
            "{}",
            squib.console()
        );
    }

    // Without resume_vm, the restored guest waits, paused, for PATCH /vm.
    {
        let squib = Squib::start(&[]);
        squib.ok("PUT", "/snapshot/load", &load_body(snap.path(), false));
        assert_eq!(squib.state(), "Paused");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(last_tick(&squib), 0, "the guest ran while paused");
        squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
        assert_eq!(squib.state(), "Running");
        squib.wait_for_line(
            &format!("SQUIB-TICK {}", ticks_at_snapshot + 2),
            BOOT_TIMEOUT,
        );
        assert!(
            first_tick(&squib) > ticks_at_snapshot,
            "{}",
            squib.console()
        );
    }

    // An override for an interface the snapshot does not have fails the load, fatally.
    {
        let mut squib = Squib::start(&[]);
        let mut body: serde_json::Value =
            serde_json::from_str(&load_body(snap.path(), false)).unwrap();
        body["network_overrides"] =
            serde_json::json!([{"iface_id": "eth9", "host_dev_name": "tap9"}]);
        let (status, reply) = squib.api("PUT", "/snapshot/load", Some(&body.to_string()));
        assert_eq!(status, 400);
        assert!(
            reply.contains("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Unknown Network Device."),
            "{reply}"
        );
        assert_eq!(squib.wait_exit(Duration::from_secs(10)).code(), Some(1));
    }
}

/// A restored guest whose RAM blocks may have changed since the load (a PCI machine: devices
/// plugged since could bring option ROMs) is saved through QEMU's migration of all its
/// memory, which squib splits into the two files; that snapshot restores as well.
#[test]
fn a_restored_pci_guest_is_saved_through_a_full_migration() {
    let guest = guest();
    let snap = tempfile::tempdir().unwrap();
    let rootfs = rootfs_copy(&guest, snap.path());
    let ticks_at_first;
    let body = |dir: &Path| {
        serde_json::json!({
            "snapshot_path": dir.join("vm.state"),
            "mem_file_path": dir.join("vm.mem"),
        })
        .to_string()
    };
    {
        let squib = Squib::start(&["--enable-pci"]);
        boot_ticking(&squib, &guest, &rootfs, 2);
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        std::thread::sleep(Duration::from_millis(300));
        ticks_at_first = last_tick(&squib);
        squib.ok("PUT", "/snapshot/create", &body(snap.path()));
    }
    let snap2 = tempfile::tempdir().unwrap();
    let ticks_at_second;
    {
        let squib = Squib::start(&[]);
        squib.ok("PUT", "/snapshot/load", &load_body(snap.path(), true));
        squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_at_first + 2), BOOT_TIMEOUT);
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        ticks_at_second = last_tick(&squib);
        squib.ok("PUT", "/snapshot/create", &body(snap2.path()));
        let log = squib.log();
        assert!(
            log.contains("saved through QEMU's migration of all its memory: a PCI machine"),
            "{}",
            squib.transcript()
        );
        assert!(!log.contains(DIRTIED_SAVE), "{}", squib.transcript());
    }
    {
        let squib = Squib::start(&[]);
        squib.ok("PUT", "/snapshot/load", &load_body(snap2.path(), true));
        squib.wait_for_line(&format!("SQUIB-TICK {}", ticks_at_second + 2), BOOT_TIMEOUT);
        assert!(first_tick(&squib) > ticks_at_second, "{}", squib.console());
    }
}

#[test]
fn failed_loads_answer_upstream_texts_and_end_squib() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("vm.mem");
    std::fs::write(&mem, vec![0u8; 4096]).unwrap();

    // A corrupt state file.
    let state = dir.path().join("vm.state");
    std::fs::write(&state, b"this is not a squib snapshot state file").unwrap();
    // Sent with a GET pipelined behind it: as upstream, the load is answered, then squib exits
    // and nothing after it is answered.
    let mut squib = Squib::start(&[]);
    let load = load_body(dir.path(), false);
    let mut conn = std::os::unix::net::UnixStream::connect(&squib.socket).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "PUT /snapshot/load HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{load}GET / HTTP/1.1\r\n\r\n",
            load.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut replies = String::new();
    std::io::Read::read_to_string(&mut conn, &mut replies).unwrap();
    assert_eq!(replies.matches("HTTP/1.1 ").count(), 1, "{replies}");
    assert!(replies.starts_with("HTTP/1.1 400 "), "{replies}");
    assert!(
        // Upstream's text for a file its decoder cannot read.
        replies.contains("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to load snapshot state from file: An error occurred during bitcode serialization: bitcode error"),
        "{replies}"
    );
    assert_eq!(squib.wait_exit(Duration::from_secs(10)).code(), Some(1));

    // A missing one.
    std::fs::remove_file(&state).unwrap();
    let mut squib = Squib::start(&[]);
    let (status, body) = squib.api("PUT", "/snapshot/load", Some(&load_body(dir.path(), false)));
    assert_eq!(status, 400);
    assert!(
        body.contains("Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)"),
        "{body}"
    );
    assert_eq!(squib.wait_exit(Duration::from_secs(10)).code(), Some(1));

    // The Uffd backend is refused, but as upstream only once the state file is read: a
    // missing one is reported first.
    let mut squib = Squib::start(&[]);
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": "/nonexistent.sock"},
    })
    .to_string();
    let (status, body) = squib.api("PUT", "/snapshot/load", Some(&body));
    assert_eq!(status, 400);
    assert!(
        body.contains("Failed to open snapshot file: No such file or directory (os error 2)"),
        "{body}"
    );
    assert_eq!(squib.wait_exit(Duration::from_secs(10)).code(), Some(1));

    // --snapshot-version prints squib's own state-file format version.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_squib"))
        .arg("--snapshot-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1.1.0");
}
