//! Fault injection with real guests (docs/reliability.md §7): the disk filling up during a
//! snapshot create, QEMU SIGKILLed in the middle of a snapshot create, while paused before
//! it ever ran (a restored VM that was never resumed) and while running. squib answers or
//! logs it, ends with exit code 1, and never leaves a half-written file; a failed create
//! leaves the previous pair of files as it was.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "squib-robust-full",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN), as the other e2e tests' TAPs do"
        );
        Self(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn create_body(dir: &Path, name: &str) -> String {
    serde_json::json!({
        "snapshot_path": dir.join(format!("{name}.state")),
        "mem_file_path": dir.join(format!("{name}.mem")),
    })
    .to_string()
}

fn load_body(dir: &Path, name: &str, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": dir.join(format!("{name}.state")),
        "mem_backend": {"backend_type": "File", "backend_path": dir.join(format!("{name}.mem"))},
        "resume_vm": resume,
    })
    .to_string()
}

/// Waits for squib to end after QEMU was killed: exit code 1 and the reason in its log.
fn ends_with_engine_failure(squib: &mut Squib) {
    let status = squib.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", squib.transcript());
    assert!(
        squib.log().contains("The VM engine stopped unexpectedly"),
        "{}",
        squib.transcript()
    );
}

#[test]
fn faults_are_reported_and_leave_no_half_written_file() {
    let guest = guest();
    let work = tempfile::tempdir().unwrap();
    let rootfs = rootfs_copy(&guest, work.path());
    let snaps = work.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();

    let mut squib = Squib::start(&["--id", "e2e-faults"]);
    boot_ticking(&squib, &guest, &rootfs, 2);
    squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);

    // 1. The disk fills up during create: upstream's error, the previous pair untouched.
    {
        let full = SmallDisk::mount(&work.path().join("full"), "8m");
        std::fs::write(full.0.join("vm.state"), b"previous state").unwrap();
        std::fs::write(full.0.join("vm.mem"), b"previous memory").unwrap();
        let (status, body) =
            squib.api("PUT", "/snapshot/create", Some(&create_body(&full.0, "vm")));
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("Create snapshot error: Cannot write memory file: No space left on device (os error 28)"),
            "{body}"
        );
        assert_eq!(
            std::fs::read(full.0.join("vm.state")).unwrap(),
            b"previous state"
        );
        assert_eq!(
            std::fs::read(full.0.join("vm.mem")).unwrap(),
            b"previous memory"
        );
        assert_eq!(
            names(&full.0),
            ["vm.mem", "vm.state"],
            "temporary files left behind"
        );
    }
    // The client can retry at once, still paused: a good snapshot for the loads below.
    squib.ok("PUT", "/snapshot/create", &create_body(&snaps, "good"));
    assert_eq!(squib.state(), "Paused");
    // The VM is still usable.
    squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    squib.wait_for_line("SQUIB-TICK 4", BOOT_TIMEOUT);
    squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);

    // 2. QEMU killed while a create is under way: squib ends with 1, and the pair is either
    // complete or absent, never half-written.
    let qemu = qemu_pid(&squib);
    let socket = squib.socket.clone();
    let body = create_body(&snaps, "mid");
    let client = std::thread::spawn(move || {
        let mut stream = UnixStream::connect(socket).unwrap();
        let request = format!(
            "PUT /snapshot/create HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    });
    std::thread::sleep(Duration::from_millis(100));
    kill9(qemu);
    ends_with_engine_failure(&mut squib);
    let reply = client.join().unwrap();
    eprintln!("create while QEMU was killed answered: {reply:?}");
    let listing = names(&snaps);
    let mid: Vec<&String> = listing.iter().filter(|n| n.starts_with("mid.")).collect();
    assert!(
        mid.is_empty() || mid == ["mid.mem", "mid.state"],
        "half a pair: {listing:?} ({reply})"
    );
    assert!(
        listing
            .iter()
            .all(|n| ["good.mem", "good.state", "mid.mem", "mid.state"].contains(&n.as_str())),
        "temporary files left behind: {listing:?}"
    );
    if !mid.is_empty() {
        let described = Command::new(env!("CARGO_BIN_EXE_squib"))
            .arg("--describe-snapshot")
            .arg(snaps.join("mid.state"))
            .output()
            .unwrap();
        assert!(described.status.success(), "{reply}");
    }

    // 3. QEMU killed while paused before it ever ran (restored, not resumed).
    let mut squib = Squib::start(&["--id", "e2e-faults-2"]);
    squib.ok("PUT", "/snapshot/load", &load_body(&snaps, "good", false));
    assert_eq!(squib.state(), "Paused");
    kill9(qemu_pid(&squib));
    ends_with_engine_failure(&mut squib);

    // 4. QEMU killed while running (restored and resumed).
    let mut squib = Squib::start(&["--id", "e2e-faults-3"]);
    squib.ok("PUT", "/snapshot/load", &load_body(&snaps, "good", true));
    squib.wait_for_line("SQUIB-TICK", BOOT_TIMEOUT);
    // Before that, the disk fills up during a create of the restored guest (saved from its
    // dirtied pages): upstream's error at once, no migration of all its memory to fail the
    // same way, nothing left behind, and the guest goes on.
    {
        let full = SmallDisk::mount(&work.path().join("full-restored"), "8m");
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        let (status, body) =
            squib.api("PUT", "/snapshot/create", Some(&create_body(&full.0, "vm")));
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("Create snapshot error: Cannot write memory file: No space left on device (os error 28)"),
            "{body}"
        );
        assert!(
            !squib.log().contains("saved through QEMU's migration"),
            "{}",
            squib.transcript()
        );
        assert!(names(&full.0).is_empty(), "temporary files left behind");
        assert_eq!(squib.state(), "Paused");
        let tick: u64 = last_value(&squib, "SQUIB-TICK ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        squib.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
        squib.wait_for_line(&format!("SQUIB-TICK {}", tick + 1), BOOT_TIMEOUT);
    }
    kill9(qemu_pid(&squib));
    ends_with_engine_failure(&mut squib);
    // The files it was restored from were never written.
    let described = Command::new(env!("CARGO_BIN_EXE_squib"))
        .arg("--describe-snapshot")
        .arg(snaps.join("good.state"))
        .output()
        .unwrap();
    assert!(described.status.success());
}
