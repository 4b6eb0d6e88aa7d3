//! Seccomp outside the jail: a custom filter in upstream's binary format that forbids a
//! syscall squib makes ends squib with upstream's code 148 and its log lines; `--no-seccomp`
//! leaves squib's threads and QEMU unfiltered; a bad filter file is refused at start.
//! (The default filters on every thread of a jailed squib and of QEMU: `e2e_jailer`.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Squib, qemu_pid, seccomp_modes};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// A program that traps `syscalls` and allows everything else.
fn trapping(syscalls: &[i64]) -> Vec<u64> {
    let rules = syscalls.iter().map(|nr| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trap,
        TargetArch::x86_64,
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    program
        .iter()
        .map(|i| {
            u64::from(i.code)
                | (u64::from(i.jt) << 16)
                | (u64::from(i.jf) << 24)
                | (u64::from(i.k) << 32)
        })
        .collect()
}

/// Upstream's filter file: a bitcode map from thread category to instructions.
fn filter_file(dir: &std::path::Path, api: Vec<u64>) -> std::path::PathBuf {
    let map = BTreeMap::from([
        ("vmm".to_string(), trapping(&[libc::SYS_kexec_load])),
        ("api".to_string(), api),
        ("vcpu".to_string(), vec![]),
    ]);
    let path = dir.join("narrow.bpf");
    std::fs::write(&path, bitcode::serialize(&map).unwrap()).unwrap();
    path
}

#[test]
fn a_narrow_custom_filter_ends_squib_with_upstreams_code() {
    let dir = tempfile::tempdir().unwrap();
    // The API thread may not accept a connection: the harness's first connect trips it.
    let filter = filter_file(dir.path(), trapping(&[libc::SYS_accept4]));
    let metrics = dir.path().join("metrics.json");
    let mut squib = Squib::start(&[
        "--seccomp-filter",
        filter.to_str().unwrap(),
        "--metrics-path",
        metrics.to_str().unwrap(),
    ]);
    let status = squib.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(148), "{}", squib.transcript());
    let log = squib.log();
    assert!(
        log.contains("Shutting down VM after intercepting signal 31, code 1."),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "Shutting down VM after intercepting a bad syscall ({}).",
            libc::SYS_accept4
        )),
        "{log}"
    );
    let last = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(last.lines().last().expect("a metrics line")).unwrap();
    assert_eq!(last["seccomp"]["num_faults"], 1, "{last}");
}

#[test]
fn bad_filter_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.bpf");
    std::fs::write(&garbage, b"{\"vmm\": {}}").unwrap();
    for (file, text) in [
        (
            dir.path().join("missing.bpf"),
            "Seccomp error: Filter file open error: No such file or directory (os error 2)",
        ),
        (
            garbage,
            "Seccomp error: Filter deserialization failed: Bitcode deserialization failed",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_squib"))
            .args([
                "--no-api",
                "--config-file",
                "/nonexistent",
                "--seccomp-filter",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(all.contains(text), "{all}");
    }
}

#[test]
fn no_seccomp_leaves_squib_and_qemu_unfiltered() {
    let guest = common::guest();
    let squib = Squib::start(&["--no-seccomp"]);
    let rootfs = common::rootfs_copy(&guest, squib.dir.path());
    common::configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait",
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line(common::GUEST_MARKER, common::BOOT_TIMEOUT);
    let pid = squib.child.id();
    let qemu = qemu_pid(&squib);
    for pid in [pid, qemu] {
        let modes = seccomp_modes(pid);
        assert!(
            modes.iter().all(|(_, mode)| mode == "0"),
            "{pid}: {modes:?}"
        );
    }
    let cmdline = std::fs::read_to_string(format!("/proc/{qemu}/cmdline")).unwrap();
    assert!(!cmdline.contains("-sandbox"), "{cmdline:?}");
}
