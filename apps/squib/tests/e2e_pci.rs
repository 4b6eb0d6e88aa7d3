//! End-to-end: `--enable-pci` (a q35 machine with virtio-*-pci devices in PCIe root ports),
//! with the same guest-visible behaviour as microvm: the root drive is `/dev/vda`, the boot
//! arguments reach the guest, and a guest reboot ends squib with exit code 0.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SCRIPT_DONE: &str = "SQUIB-SCRIPT-DONE";

#[test]
fn enable_pci_boots_virtio_pci_devices_and_reboot_ends_squib() {
    let guest = guest();
    let mut squib = Squib::start(&["--enable-pci"]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vdb",
    );
    let script = r#"
echo "PCI-VIRTIO $(ls /sys/bus/pci/drivers/virtio-pci | grep -c '^0000:')"
echo "PCI-ROOT $(grep ' / ' /proc/mounts | cut -d' ' -f1)"
echo "PCI-RNG $(cat /sys/class/misc/hw_random/rng_current)"
echo "PCI-BALLOON $(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)"
echo "PCI-ROOTFS $(cat /etc/squib-rootfs)"
"#;
    let disk = script_disk(squib.dir.path(), script);
    squib.ok(
        "PUT",
        "/drives/script",
        &json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    squib.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib":0,"deflate_on_oom":false}"#,
    );
    squib.ok("PUT", "/entropy", "{}");
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line(SCRIPT_DONE, Duration::from_secs(120));

    // Four virtio devices, each a virtio-pci function: two drives, the balloon, entropy.
    assert_eq!(last_value(&squib, "PCI-VIRTIO ").as_deref(), Some("4"));
    assert_eq!(last_value(&squib, "PCI-ROOT ").as_deref(), Some("/dev/vda"));
    assert_eq!(
        last_value(&squib, "PCI-ROOTFS ").as_deref(),
        Some("squib test rootfs v1")
    );
    assert!(
        last_value(&squib, "PCI-RNG ").is_some_and(|v| v.starts_with("virtio_rng")),
        "{}",
        squib.console()
    );
    assert_eq!(last_value(&squib, "PCI-BALLOON ").as_deref(), Some("1"));
    let cmdline = squib
        .console()
        .lines()
        .find(|l| l.contains("Kernel command line:"))
        .unwrap_or_default()
        .to_string();
    assert!(cmdline.contains("root=/dev/vda rw"), "{cmdline}");

    // Ctrl-Alt-Del makes the test guest reboot: squib ends with 0, as on microvm.
    squib.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    let status = squib.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", squib.transcript());
}

/// `MemTotal` in KiB on the last `MEM-TOTAL` console line.
fn mem_total_kib(squib: &Squib) -> Option<u64> {
    last_value(squib, "MEM-TOTAL ").and_then(|v| v.parse().ok())
}

fn hotplug_status(squib: &Squib) -> serde_json::Value {
    let (status, body) = squib.api("GET", "/hotplug/memory", None);
    assert_eq!(status, 200, "GET /hotplug/memory → {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the guest reports `MemTotal` equal to `want` KiB and the API reports `plugged`.
fn wait_for_memory(squib: &Squib, want_kib: u64, plugged_mib: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = hotplug_status(squib);
        let total = mem_total_kib(squib);
        if total == Some(want_kib) && status["plugged_size_mib"] == plugged_mib {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MemTotal {total:?} KiB (want {want_kib}), status {status}\n{}",
            squib.transcript()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// virtio-mem: the guest's MemTotal grows by what `PATCH /hotplug/memory` requests and
/// shrinks back after an unplug request; `GET` reports QEMU's plugged size.
#[test]
fn memory_hotplug_grows_and_shrinks_the_guest() {
    let guest = guest();
    let squib = Squib::start(&[]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(
        &squib,
        &guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vdb memhp_default_state=online_movable",
    );
    let script = r#"
last=""
i=0
while [ $i -lt 1200 ]; do
  t=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
  if [ "$t" != "$last" ]; then echo "MEM-TOTAL $t"; last=$t; fi
  i=$((i + 1)); sleep 0.2
done
"#;
    let disk = script_disk(squib.dir.path(), script);
    squib.ok(
        "PUT",
        "/drives/script",
        &json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    squib.ok("PUT", "/hotplug/memory", r#"{"total_size_mib":256}"#);
    let metrics = squib.dir.path().join("metrics.json");
    std::fs::write(&metrics, b"").unwrap();
    squib.ok(
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics}).to_string(),
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line("MEM-TOTAL ", Duration::from_secs(120));
    let base = mem_total_kib(&squib).unwrap();
    assert_eq!(
        hotplug_status(&squib),
        json!({"block_size_mib":2,"total_size_mib":256,"slot_size_mib":128,"plugged_size_mib":0,"requested_size_mib":0})
    );

    // Refusals with upstream's texts: a size that is not a multiple of the block size or
    // beyond the total, and the pre-boot-only PUT.
    let (status, body) = squib.api(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib":3}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("Memory hotplug update error: Size 3145728 is invalid: it must be a multiple of block size and less than the total size"), "{body}");
    let (status, _) = squib.api(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib":512}"#),
    );
    assert_eq!(status, 400);
    let (status, body) = squib.api("PUT", "/hotplug/memory", Some(r#"{"total_size_mib":256}"#));
    assert_eq!(status, 400);
    assert!(
        body.contains("The requested operation is not supported after starting the microVM."),
        "{body}"
    );

    squib.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib":128}"#);
    wait_for_memory(&squib, base + 128 * 1024, 128);
    assert_eq!(hotplug_status(&squib)["requested_size_mib"], 128);

    squib.ok("PATCH", "/hotplug/memory", r#"{"requested_size_mib":0}"#);
    wait_for_memory(&squib, base, 0);

    // Upstream's `memory_hotplug` section counts what QEMU reported plugged and unplugged
    // (counters are deltas: summed over the lines).
    squib.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let sum = |key: &str| -> u64 {
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["memory_hotplug"][key].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("plug_bytes"), 128 << 20, "{lines}");
    assert_eq!(sum("unplug_bytes"), 128 << 20, "{lines}");
    assert!(sum("plug_count") >= 1, "{lines}");
    assert!(sum("unplug_count") >= 1, "{lines}");
    assert_eq!(sum("plug_fails"), 0, "{lines}");
}

/// virtio-pmem: the root file system on a pmem device (`root=/dev/pmem0`, as upstream), and
/// a read-only pmem image mounted with DAX shows its content; the image is never written.
#[test]
fn pmem_boots_as_root_and_mounts_a_read_only_image() {
    let guest = guest();
    let squib = Squib::start(&[]);
    let dir = squib.dir.path();
    let rootfs = rootfs_copy(&guest, dir);
    let image = ext4_image(dir, "data.ext4", "SQUIB-PMEM-CONTENT");
    let before = std::fs::read(&image).unwrap();

    squib.ok(
        "PUT",
        "/boot-source",
        &json!({
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vda",
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":256}"#,
    );
    let script = r#"
echo "PMEM-ROOT $(grep ' / ' /proc/mounts | cut -d' ' -f1,4 | cut -d, -f1)"
echo "PMEM-ROOTFS $(cat /etc/squib-rootfs)"
mkdir -p /mnt/p
mount -t ext4 -o ro,dax /dev/pmem1 /mnt/p && echo "PMEM-DAX $(grep -c ' /mnt/p .*dax' /proc/mounts)"
echo "PMEM-DATA $(cat /mnt/p/hello)"
"#;
    let disk = script_disk(dir, script);
    squib.ok(
        "PUT",
        "/drives/script",
        &json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    squib.ok(
        "PUT",
        "/pmem/root",
        &json!({"id": "root", "path_on_host": rootfs, "root_device": true}).to_string(),
    );
    squib.ok(
        "PUT",
        "/pmem/data",
        &json!({"id": "data", "path_on_host": image, "read_only": true}).to_string(),
    );
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, b"").unwrap();
    squib.ok(
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics}).to_string(),
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line(SCRIPT_DONE, Duration::from_secs(120));
    // A `pmem_⟨id⟩` section per device, then the `pmem` aggregate, between `entropy` and
    // `interrupts`, with upstream's keys (docs/metrics.md: QEMU keeps no pmem counters).
    squib.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line = text.lines().last().unwrap();
    let at = |key: &str| {
        line.find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert!(at("entropy") < at("pmem_data"), "{line}");
    assert!(at("pmem_data") < at("pmem_root"), "{line}");
    assert!(at("pmem_root") < at("pmem"), "{line}");
    assert!(at("pmem") < at("interrupts"), "{line}");
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    for key in [
        "activate_fails",
        "cfg_fails",
        "event_fails",
        "queue_event_count",
    ] {
        assert_eq!(value["pmem_root"][key], 0, "{line}");
        assert_eq!(value["pmem"][key], 0, "{line}");
    }
    assert_eq!(
        last_value(&squib, "PMEM-ROOT ").as_deref(),
        Some("/dev/pmem0 rw"),
        "{}",
        squib.transcript()
    );
    assert_eq!(
        last_value(&squib, "PMEM-ROOTFS ").as_deref(),
        Some("squib test rootfs v1")
    );
    assert_eq!(last_value(&squib, "PMEM-DAX ").as_deref(), Some("1"));
    assert_eq!(
        last_value(&squib, "PMEM-DATA ").as_deref(),
        Some("SQUIB-PMEM-CONTENT")
    );
    assert_eq!(std::fs::read(&image).unwrap(), before);
}
