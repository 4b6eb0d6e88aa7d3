//! End-to-end: device hot-plug on a running `--enable-pci` guest. A drive, a network interface
//! (a real TAP in a network namespace of the test's own) and a pmem device `PUT` after boot
//! appear in the guest without a PCI rescan and work (a file read, a ping, a DAX mount);
//! `DELETE` takes the drive and the card out of the guest again (QEMU cannot unplug pmem).
//! Refusals answer with upstream's texts.
//!
//! Needs root, /dev/net/tun and `ip`. Outside CI a missing prerequisite skips loudly; with
//! `CI=true` it fails. The TAP lives in the namespace, which is deleted at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const HOST_IP: &str = "10.0.7.1";
const TAP: &str = "sqbhp0";
const STEP: Duration = Duration::from_secs(90);

/// True when the prerequisites are there; panics under `CI=true` when they are not.
fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if root && tun && ip {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "e2e_hotplug prerequisites missing under CI: root {root}, /dev/net/tun {tun}, ip {ip}"
    );
    eprintln!("SKIPPED: e2e_hotplug needs root, /dev/net/tun and ip");
    false
}

/// A network namespace of the test's own, holding the TAP; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("sqb-hp-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns(name);
        ns.ip(&["netns", "add", &ns.0], false);
        ns.ip(&["link", "set", "lo", "up"], true);
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"], true);
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP], true);
        ns
    }

    fn ip(&self, args: &[&str], inside: bool) {
        let mut cmd = Command::new("ip");
        if inside {
            cmd.args(["-n", &self.0]);
        }
        let out = cmd.args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A raw disk holding `script` (NUL padding, stripped by the guest's init).
fn script_disk(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("script.img");
    let mut bytes = format!("{script}\nexit 0\n").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A 4 MiB ext4 image with one file `hello` holding `text`.
fn ext4_image(dir: &Path, name: &str, text: &str) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), format!("{text}\n")).unwrap();
    let image = dir.join(name);
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("4M")
        .status()
        .expect("run mke2fs");
    assert!(made.success());
    image
}

/// The value after `prefix` on the last console line that has it.
fn last_value(squib: &Squib, prefix: &str) -> Option<String> {
    squib
        .console()
        .lines()
        .filter_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .next_back()
}

/// Asserts a 400 whose fault message is exactly `fault`.
fn refused(squib: &Squib, method: &str, path: &str, body: Option<&str>, fault: &str) {
    let (status, answer) = squib.api(method, path, body);
    assert_eq!(status, 400, "{method} {path} → {status} {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["fault_message"], fault, "{method} {path}");
}

/// A PUT that must succeed; the failure shows the whole transcript (QEMU's last words).
fn put(squib: &Squib, path: &str, body: &str) {
    let (status, answer) = squib.api("PUT", path, Some(body));
    assert_eq!(
        status,
        204,
        "PUT {path} → {status} {answer}\n{}",
        squib.transcript()
    );
}

fn unplug(squib: &Squib, path: &str) {
    let (status, body) = squib.api("DELETE", path, None);
    assert_eq!(status, 204, "DELETE {path} → {status} {body}");
}

fn vm_config(squib: &Squib) -> serde_json::Value {
    let (status, body) = squib.api("GET", "/vm/config", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn ids(config: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    config[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn drive_nic_and_pmem_hot_plug_work_in_the_guest_and_unplug() {
    if !prerequisites() {
        return;
    }
    let guest = guest();
    let ns = Netns::new();
    let squib = Squib::start_in_netns(&ns.0, &["--enable-pci"]);
    let dir = squib.dir.path();
    let rootfs = rootfs_copy(&guest, dir);
    configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vdb",
    );
    // The guest waits for each device to appear (no rescan), uses it, and waits for it to go.
    let script = format!(
        r#"
wait_for() {{ i=0; while ! [ "$@" ] && [ $i -lt 1500 ]; do i=$((i + 1)); sleep 0.2; done; }}
echo "HP-PCI-BEFORE $(ls /sys/bus/pci/devices | wc -l)"
echo HP-BOOTED
wait_for -b /dev/vdc
mkdir -p /mnt/d /mnt/p
mount -t ext4 -o ro /dev/vdc /mnt/d && echo "HP-DRIVE $(cat /mnt/d/hello)" && umount /mnt/d
wait_for -e /sys/class/net/eth0
ip addr add 10.0.7.2/24 dev eth0
ip link set eth0 up
ping -c 3 -W 5 {HOST_IP} > /dev/null && echo "HP-PING ok"
ip link set eth0 down
wait_for -b /dev/pmem0
mount -t ext4 -o ro,dax /dev/pmem0 /mnt/p && echo "HP-PMEM $(cat /mnt/p/hello) $(grep -c ' /mnt/p .*dax' /proc/mounts)" && umount /mnt/p
echo "HP-PCI-PLUGGED $(ls /sys/bus/pci/devices | wc -l)"
echo HP-RELEASED
wait_for ! -b /dev/vdc
wait_for ! -e /sys/class/net/eth0
i=0; while [ $(ls /sys/block | grep -c "^vd") -gt 2 ] && [ $i -lt 1500 ]; do i=$((i + 1)); sleep 0.2; done
echo "HP-GONE $(ls /dev/vdc /sys/class/net/eth0 2>/dev/null | wc -l)"
echo "HP-PCI-AFTER $(ls /sys/bus/pci/devices | wc -l)"
"#
    );
    let disk = script_disk(dir, &script);
    squib.ok(
        "PUT",
        "/drives/script",
        &json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line("HP-BOOTED", BOOT_TIMEOUT);
    ns.ip(&["link", "set", TAP, "up"], true);

    let data = ext4_image(dir, "data.ext4", "SQUIB-HOTPLUG-DRIVE");
    let pmem = ext4_image(dir, "pmem.ext4", "SQUIB-HOTPLUG-PMEM");
    let data_before = std::fs::read(&data).unwrap();
    put(
        &squib,
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    put(
        &squib,
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": TAP, "guest_mac": "06:00:0a:00:07:02"})
            .to_string(),
    );
    put(
        &squib,
        "/pmem/p0",
        &json!({"id": "p0", "path_on_host": pmem, "read_only": true}).to_string(),
    );
    let config = vm_config(&squib);
    assert_eq!(
        ids(&config, "drives", "drive_id"),
        ["rootfs", "script", "data"]
    );
    assert_eq!(ids(&config, "network-interfaces", "iface_id"), ["eth0"]);
    assert_eq!(ids(&config, "pmem", "id"), ["p0"]);

    // Upstream's refusals: a taken id, a second root, a missing file, an unknown or root
    // device to unplug, a root pmem next to a root drive.
    let drive = |id: &str, root: bool, path: &Path| {
        json!({"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": true})
            .to_string()
    };
    refused(
        &squib,
        "PUT",
        "/drives/data",
        Some(&drive("data", false, &data)),
        "Device ID in use",
    );
    refused(
        &squib,
        "PUT",
        "/drives/root2",
        Some(&drive("root2", true, &data)),
        "Drive config error: A root block device already exists!",
    );
    refused(
        &squib,
        "PUT",
        "/drives/bad",
        Some(&drive("bad", false, Path::new("/nonexistent"))),
        "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent",
    );
    refused(&squib, "DELETE", "/drives/nope", None, "Device not found");
    refused(
        &squib,
        "DELETE",
        "/drives/rootfs",
        None,
        "Cannot unplug root device",
    );
    refused(
        &squib,
        "PUT",
        "/pmem/proot",
        Some(&json!({"id": "proot", "path_on_host": pmem, "root_device": true}).to_string()),
        "Pmem config error: Attempt to add pmem as a root device while the root device defined as a block device",
    );
    refused(
        &squib,
        "PUT",
        "/network-interfaces/eth0",
        Some(&json!({"iface_id": "eth0", "host_dev_name": TAP}).to_string()),
        "Device ID in use",
    );
    refused(
        &squib,
        "PUT",
        "/network-interfaces/eth1",
        Some(&json!({"iface_id": "eth1", "host_dev_name": "sqbhp1", "guest_mac": "06:00:0a:00:07:02"}).to_string()),
        "Network config error: The MAC address is already in use: 06:00:0a:00:07:02",
    );

    squib.wait_for_line("HP-RELEASED", STEP);
    assert_eq!(
        last_value(&squib, "HP-DRIVE ").as_deref(),
        Some("SQUIB-HOTPLUG-DRIVE"),
        "{}",
        squib.transcript()
    );
    assert_eq!(
        last_value(&squib, "HP-PING ").as_deref(),
        Some("ok"),
        "{}",
        squib.transcript()
    );
    assert_eq!(
        last_value(&squib, "HP-PMEM ").as_deref(),
        Some("SQUIB-HOTPLUG-PMEM 1"),
        "{}",
        squib.transcript()
    );
    let before: usize = last_value(&squib, "HP-PCI-BEFORE ")
        .unwrap()
        .parse()
        .unwrap();
    let plugged: usize = last_value(&squib, "HP-PCI-PLUGGED ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(plugged, before + 3);

    // Every free root port taken (8 at boot, 3 used above): the next plug is refused.
    for n in 0..5 {
        let id = format!("fill{n}");
        put(&squib, &format!("/drives/{id}"), &drive(&id, false, &data));
    }
    refused(
        &squib,
        "PUT",
        "/drives/fill5",
        Some(&drive("fill5", false, &data)),
        "PCI manager error: PCI root error: Could not find an available device slot on the PCI bus.",
    );
    for n in 0..5 {
        unplug(&squib, &format!("/drives/fill{n}"));
    }

    unplug(&squib, "/drives/data");
    unplug(&squib, "/network-interfaces/eth0");
    // QEMU cannot unplug virtio-pmem (docs/deviations.md): an honest refusal, and the
    // device stays.
    refused(
        &squib,
        "DELETE",
        "/pmem/p0",
        None,
        "PCI manager error: QEMU cannot unplug virtio-pmem devices",
    );
    refused(&squib, "DELETE", "/drives/data", None, "Device not found");
    let config = vm_config(&squib);
    assert_eq!(ids(&config, "drives", "drive_id"), ["rootfs", "script"]);
    assert!(ids(&config, "network-interfaces", "iface_id").is_empty());
    assert_eq!(ids(&config, "pmem", "id"), ["p0"]);

    squib.wait_for_line("HP-PCI-AFTER", STEP);
    assert_eq!(last_value(&squib, "HP-GONE ").as_deref(), Some("0"));
    let after: usize = last_value(&squib, "HP-PCI-AFTER ")
        .unwrap()
        .parse()
        .unwrap();
    // The pmem device stays.
    assert_eq!(after, before + 1, "{}", squib.transcript());
    assert_eq!(std::fs::read(&data).unwrap(), data_before);
}
