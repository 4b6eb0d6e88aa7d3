//! The jailer run as a Firecracker user runs it: daemonized, an unprivileged uid, a chroot
//! base of the test's own, the API socket inside the chroot; a real guest booted through it,
//! then `/proc` read for the uid, capabilities and root of squib and QEMU.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BOOT_TIMEOUT, GUEST_MARKER, api_at, process_alive, seccomp_modes};

const JAILER: &str = env!("CARGO_BIN_EXE_jailer");
const SQUIB: &str = env!("CARGO_BIN_EXE_squib");
/// Unprivileged ids no account on the machine uses.
const JAIL_UID: u32 = 47_311;
const OTHER_UID: u32 = 47_312;

/// A chroot base the jail's user can traverse (the jail root itself is 0700, the user's).
fn chroot_base() -> tempfile::TempDir {
    let base = tempfile::Builder::new()
        .prefix("security-jail-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

fn jailer(base: &Path, id: &str, extra: &[&str], squib_args: &[&str]) -> Output {
    let uid = JAIL_UID.to_string();
    let mut args = vec![
        "--id",
        id,
        "--exec-file",
        SQUIB,
        "--uid",
        &uid,
        "--gid",
        &uid,
        "--chroot-base-dir",
        base.to_str().unwrap(),
    ];
    args.extend(extra);
    args.push("--");
    args.extend(squib_args);
    Command::new(JAILER).args(&args).output().unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Children of any of the process's threads (QEMU is spawned from a runtime worker).
fn children(pid: u32) -> Vec<u32> {
    tasks(pid)
        .into_iter()
        .flat_map(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn tasks(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// Mount points as the process sees them, with the mount's and the superblock's options.
fn mounts(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let super_options = f.last().unwrap_or(&"");
            (f[4].to_string(), format!("{},{super_options}", f[5]))
        })
        .collect()
}

/// Whether `uid` can reach the API socket at `socket` (curl run as that user).
fn can_connect_as(uid: u32, socket: &Path) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/")
        .uid(uid)
        .gid(uid)
        .status()
        .expect("run curl")
        .success()
}

struct Jailed {
    root: PathBuf,
    pid: u32,
}

impl Jailed {
    fn socket(&self) -> PathBuf {
        self.root.join("run/api.sock")
    }

    fn api(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = api_at(&self.socket(), method, path, Some(body));
        assert_eq!(status, 204, "{method} {path} {body} → {status} {reply}");
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        // SAFETY: kill takes no pointers; the pid is the squib this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
    }
}

fn start(base: &Path, id: &str, extra: &[&str], squib_args: &[&str]) -> Jailed {
    let out = jailer(base, id, extra, squib_args);
    assert!(
        out.status.success(),
        "jailer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = base.join("squib").join(id).join("root");
    let pid_file = root.join("squib.pid");
    // The file is created, then written: wait for a whole number.
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    wait_for("the pid file", Duration::from_secs(10), || {
        read_pid().is_some()
    });
    let pid = read_pid().unwrap();
    let jailed = Jailed { root, pid };
    let socket = jailed.socket();
    wait_for("the API socket", Duration::from_secs(20), || {
        socket.exists()
    });
    jailed
}

/// Puts a guest file into the jail (a hard link when the file system allows, else a copy),
/// owned by the jail's user.
fn expose(src: &Path, root: &Path, name: &str) {
    let dst = root.join(name);
    if std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst).unwrap();
    }
    std::os::unix::fs::chown(&dst, Some(JAIL_UID), Some(JAIL_UID)).unwrap();
}

#[test]
fn a_guest_boots_in_the_jail_as_an_unprivileged_user() {
    let guest = common::guest();
    let base = chroot_base();
    let jailed = start(
        base.path(),
        "security-boot",
        &["--daemonize"],
        &["--api-sock", "/run/api.sock", "--accel", "tcg"],
    );
    let root = &jailed.root;
    expose(&guest.kernel, root, "vmlinux");
    expose(&guest.initrd, root, "initrd.img");
    std::fs::copy(&guest.rootfs, root.join("rootfs.ext4")).unwrap();
    std::os::unix::fs::chown(root.join("rootfs.ext4"), Some(JAIL_UID), Some(JAIL_UID)).unwrap();
    jailed.api(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"/vmlinux","initrd_path":"/initrd.img",
            "boot_args":"console=ttyS0 reboot=k panic=1 squib.action=wait"}"#,
    );
    jailed.api(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"/rootfs.ext4","is_root_device":true,"is_read_only":false}"#,
    );
    jailed.api("PUT", "/serial", r#"{"serial_out_path":"/serial.log"}"#);
    jailed.api(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    jailed.api("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    let serial = root.join("serial.log");
    wait_for(
        "the guest's marker on the serial file",
        BOOT_TIMEOUT,
        || std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(GUEST_MARKER)),
    );

    // squib and QEMU run as the jail's user, without capabilities.
    let qemu = children(jailed.pid);
    assert_eq!(qemu.len(), 1, "one QEMU child: {qemu:?}");
    let qemu = qemu[0];
    let ids = format!("{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}");
    for pid in [jailed.pid, qemu] {
        assert_eq!(status_field(pid, "Uid"), ids, "uid of {pid}");
        assert_eq!(status_field(pid, "Gid"), ids, "gid of {pid}");
        assert_eq!(status_field(pid, "Groups"), "", "groups of {pid}");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    }

    // Nothing of the host outside the chroot is visible: the root is the jail, the only
    // other mounts are the jail's /proc and QEMU's files, read-only.
    for pid in [jailed.pid, qemu] {
        let seen = PathBuf::from(format!("/proc/{pid}/root"));
        assert!(seen.join("squib").is_file(), "{pid} sees its jail");
        for host_only in ["etc", "home", "work", "root", "srv", "bin"] {
            assert!(!seen.join(host_only).exists(), "{pid} sees /{host_only}");
        }
        // Of /sys, at most the hardware KVM module's directory (for `--accel auto`).
        if let Ok(entries) = std::fs::read_dir(seen.join("sys/module")) {
            for entry in entries {
                let name = entry.unwrap().file_name();
                assert!(
                    matches!(name.to_str(), Some("kvm_intel" | "kvm_amd")),
                    "{name:?}"
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(seen.join("sys")) {
            let names: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["module"], "{pid}: /sys");
        }
        let usr_bin: Vec<_> = std::fs::read_dir(seen.join("usr/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(usr_bin, ["qemu-system-x86_64"], "{pid}: /usr/bin");
        for (point, options) in mounts(pid) {
            match point.as_str() {
                "/" => {}
                // No process of another user is visible in the jail's /proc.
                "/proc" => assert!(
                    options.contains("nosuid")
                        && (options.contains("hidepid=invisible") || options.contains("hidepid=2")),
                    "{options}"
                ),
                _ => assert!(
                    options.split(',').any(|o| o == "ro") && options.contains("nosuid"),
                    "{pid}: {point} is mounted {options}"
                ),
            }
        }
    }

    // Every thread of squib and of QEMU is under a seccomp filter (squib's own per thread
    // kind; QEMU inherits the VMM filter and adds its sandbox).
    for pid in [jailed.pid, qemu] {
        let modes = seccomp_modes(pid);
        assert!(modes.len() > 1, "{modes:?}");
        assert!(
            modes.iter().all(|(_, mode)| mode == "2"),
            "{pid}: {modes:?}"
        );
    }
    let names: Vec<String> = seccomp_modes(jailed.pid)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n == "fc_api"), "{names:?}");
    assert!(names.iter().any(|n| n == "fc_vmm"), "{names:?}");
    let cmdline = std::fs::read_to_string(format!("/proc/{qemu}/cmdline")).unwrap();
    assert!(
        cmdline.contains(
            "-sandbox\0on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny\0"
        ),
        "{cmdline:?}"
    );

    // A snapshot works inside the jail and under QEMU's sandbox (no shell to spawn).
    jailed.api("PATCH", "/vm", r#"{"state":"Paused"}"#);
    jailed.api(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_type":"Full","snapshot_path":"/vm.state","mem_file_path":"/vm.mem"}"#,
    );
    assert!(std::fs::metadata(root.join("vm.state")).unwrap().len() > 0);
    assert_eq!(
        std::fs::metadata(root.join("vm.mem")).unwrap().len(),
        128 << 20
    );
    jailed.api("PATCH", "/vm", r#"{"state":"Resumed"}"#);

    // A guest restored in a jail is saved from the pages it dirtied: the jail's /proc shows
    // squib its QEMU, whose memory it may read.
    let restored = start(
        base.path(),
        "security-restore",
        &["--daemonize"],
        &[
            "--api-sock",
            "/run/api.sock",
            "--accel",
            "tcg",
            "--log-path",
            "/squib.log",
        ],
    );
    for name in ["vm.state", "vm.mem", "rootfs.ext4"] {
        let copy = restored.root.join(name);
        std::fs::copy(root.join(name), &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(JAIL_UID), Some(JAIL_UID)).unwrap();
    }
    restored.api(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/vm.state","mem_backend":{"backend_type":"File","backend_path":"/vm.mem"},"resume_vm":true}"#,
    );
    restored.api("PATCH", "/vm", r#"{"state":"Paused"}"#);
    restored.api(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path":"/vm2.state","mem_file_path":"/vm2.mem"}"#,
    );
    let log = std::fs::read_to_string(restored.root.join("squib.log")).unwrap();
    assert!(
        log.contains("MiB of dirtied pages over the memory file"),
        "{log}"
    );
    drop(restored);

    // Only the jail's user (and root) can use the API socket.
    assert!(can_connect_as(JAIL_UID, &jailed.socket()));
    assert!(!can_connect_as(OTHER_UID, &jailed.socket()));

    // squib ends on SIGTERM and takes QEMU with it.
    // SAFETY: kill takes no pointers; the pid is the squib this test started.
    unsafe { libc::kill(jailed.pid as i32, libc::SIGTERM) };
    wait_for("squib and QEMU to exit", Duration::from_secs(20), || {
        !process_alive(jailed.pid) && !process_alive(qemu)
    });
}

/// The cgroup arguments firecracker-go-sdk passes for `NumaNode: 0` on a cgroup v1 host
/// (cpuset), or a v2 equivalent where the host only has the unified hierarchy; with the
/// cgroup's directory, and the line `/proc/<pid>/cgroup` must show.
fn cgroup_args(id: &str) -> (Vec<String>, PathBuf, String) {
    const PARENT: &str = "security-e2e";
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let v1_cpuset = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&"cgroup")
            && f.get(3)
                .is_some_and(|o| o.split(',').any(|o| o == "cpuset")))
        .then(|| PathBuf::from(f[1]))
    });
    if let Some(mount) = v1_cpuset {
        let cpus = std::fs::read_to_string("/sys/devices/system/node/node0/cpulist")
            .unwrap_or_else(|_| "0".into());
        let args = vec![
            "--cgroup".into(),
            "cpuset.mems=0".into(),
            "--cgroup".into(),
            format!("cpuset.cpus={}", cpus.trim()),
            "--parent-cgroup".into(),
            PARENT.into(),
        ];
        return (args, mount.join(PARENT), format!("cpuset:/{PARENT}/{id}"));
    }
    let unified = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup v1 cpuset or a cgroup v2 hierarchy");
    let args = vec![
        "--cgroup-version".into(),
        "2".into(),
        "--cgroup".into(),
        "pids.max=512".into(),
        "--parent-cgroup".into(),
        PARENT.into(),
    ];
    (args, unified.join(PARENT), format!("0::/{PARENT}/{id}"))
}

#[test]
fn new_pid_ns_cgroups_and_limits_as_the_go_sdk_asks() {
    let base = chroot_base();
    let id = "security-pidns";
    let (cgroup, cgroup_dir, cgroup_line) = cgroup_args(id);
    let mut extra: Vec<&str> = cgroup.iter().map(String::as_str).collect();
    extra.extend([
        "--resource-limit",
        "no-file=1024",
        "--new-pid-ns",
        "--daemonize",
    ]);
    let jailed = start(base.path(), id, &extra, &["--api-sock", "/run/api.sock"]);
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", jailed.pid)).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", jailed.pid)).unwrap();
    // SAFETY: kill takes no pointers; the pid is the squib this test started.
    unsafe { libc::kill(jailed.pid as i32, libc::SIGKILL) };
    wait_for("squib to exit", Duration::from_secs(10), || {
        !process_alive(jailed.pid)
    });
    let _ = std::fs::remove_dir(cgroup_dir.join(id));
    let _ = std::fs::remove_dir(&cgroup_dir);
    assert!(
        cgroups.lines().any(|l| l.ends_with(&cgroup_line)),
        "{cgroup_line} in {cgroups}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );
}

#[test]
fn new_pid_ns_runs_squib_as_init_and_records_its_pid() {
    let base = chroot_base();
    let jailed = start(
        base.path(),
        "security-pidns1",
        &["--new-pid-ns", "--daemonize"],
        &["--api-sock", "/run/api.sock"],
    );
    let nspid = status_field(jailed.pid, "NSpid");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "squib is PID 1 of its namespace: {nspid}"
    );
    assert!(can_connect_as(JAIL_UID, &jailed.socket()));
    let exec_copy = jailed.root.join("squib");
    let meta = std::fs::metadata(&exec_copy).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), JAIL_UID);
    assert_eq!(
        std::fs::read(&exec_copy).unwrap().len(),
        std::fs::metadata(SQUIB).unwrap().len() as usize
    );
    for (dev, kind) in [
        ("dev/kvm", (10, 232)),
        ("dev/net/tun", (10, 200)),
        ("dev/urandom", (1, 9)),
    ] {
        let meta = std::fs::metadata(jailed.root.join(dev)).unwrap();
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        assert_eq!(
            (libc::major(rdev), libc::minor(rdev)),
            kind,
            "{dev} is the host's device"
        );
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), JAIL_UID);
    }
}

#[test]
fn jailer_errors_use_upstream_texts_and_exit_codes() {
    let base = chroot_base();
    let run = |args: &[&str]| {
        let out = Command::new(JAILER).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    assert_eq!(
        run(&["--id", "x"]),
        (
            Some(1),
            "Failed to parse arguments: Argument 'exec-file' required, but not found.".into()
        )
    );
    let missing = base.path().join("nope");
    let (code, text) = run(&[
        "--id",
        "x",
        "--exec-file",
        SQUIB,
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        format!(
            "Failed to canonicalize path {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let out = jailer(base.path(), "bad_id", &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Invalid instance ID: Invalid char (_) at position 3"
    );
    let out = jailer(base.path(), "x", &["--cgroup-version", "x"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "x is an invalid cgroup version specifier"
    );
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(help.is_empty());
}
