//! End-to-end: the default kernel arguments of real Firecracker launchers boot under squib.
//!
//! `noapic` (firecracker-go-sdk, firectl, firecracker-containerd) and `acpi=off` (Kata) make
//! the guest route interrupts without ACPI's tables, so squib runs microvm without ACPI and the
//! guest learns its devices from `virtio_mmio.device=` on its command line, as under
//! Firecracker. The test guest's Debian kernel cannot bind such devices itself
//! (`VIRTIO_MMIO_CMDLINE_DEVICES` is off), so its init reads what answers at each announced
//! address instead. The getting-started arguments (`console=ttyS0 reboot=k panic=1 pci=off`)
//! keep ACPI and are booted by every other e2e test.

mod common;

use common::*;

/// Boots the guest with `boot_args` (plus `squib.action=reboot`), a root drive, a second drive
/// and an entropy device; returns the console once the guest rebooted (squib exits 0).
fn boot_with(id: &str, boot_args: &str) -> String {
    let guest = guest();
    let mut squib = Squib::start(&["--id", id]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(
        &squib,
        &guest,
        &rootfs,
        &format!("{boot_args} squib.action=reboot"),
    );
    let data = squib.dir.path().join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    squib.ok(
        "PUT",
        "/drives/data",
        &serde_json::json!({
            "drive_id": "data", "path_on_host": data,
            "is_root_device": false, "is_read_only": true,
        })
        .to_string(),
    );
    squib.ok("PUT", "/entropy", "{}");
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    let status = squib.wait_exit(BOOT_TIMEOUT);
    let console = squib.console();
    assert_eq!(status.code(), Some(0), "{console}");
    console
}

/// Each device is announced once, at a distinct address where a virtio-mmio device answers:
/// the two drives (virtio id 2) and the entropy device (id 4).
fn assert_devices_announced_once(console: &str) {
    assert!(console.contains(GUEST_MARKER), "{console}");
    assert!(console.contains("SQUIB-ACTION reboot"), "{console}");
    for fault in ["divide error", "Kernel panic", "Oops"] {
        assert!(!console.contains(fault), "{fault}: {console}");
    }
    let devices: Vec<(&str, &str, &str)> = console
        .lines()
        .filter_map(|l| l.strip_prefix("SQUIB-VIRTIO-MMIO "))
        .map(|l| {
            let mut words = l.split(' ');
            let addr = words.next().unwrap();
            let magic = words.nth(1).unwrap();
            let id = words.next().unwrap();
            (addr, magic, id)
        })
        .collect();
    assert_eq!(devices.len(), 3, "{console}");
    let mut addrs: Vec<&str> = devices.iter().map(|d| d.0).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 3, "{console}");
    assert!(
        devices.iter().all(|d| d.1 == "magic=0x74726976"),
        "{console}"
    );
    let mut ids: Vec<&str> = devices.iter().map(|d| d.2).collect();
    ids.sort();
    assert_eq!(ids, ["id=0x00000002", "id=0x00000002", "id=0x00000004"]);
}

/// firecracker-go-sdk's and firectl's default kernel arguments, with firecracker-containerd's
/// additions (its `init=/sbin/overlay-init` left out: the test guest has its own init).
#[test]
fn go_sdk_and_containerd_noapic_args_boot_with_each_device_announced_once() {
    let console = boot_with(
        "e2e-launcher-noapic",
        "ro console=ttyS0 noapic reboot=k panic=1 pci=off nomodules \
         systemd.unified_cgroup_hierarchy=0 systemd.journald.forward_to_console \
         systemd.log_color=false systemd.unit=firecracker.target",
    );
    assert_devices_announced_once(&console);
}

/// Kata's (Go runtime) Firecracker kernel arguments (its `8250.nr_uarts=0` left out: the test
/// reads the serial console), with the i8042 flags of Firecracker's own default command line
/// (flintlock's and many guides').
#[test]
fn kata_acpi_off_args_boot_with_each_device_announced_once() {
    let console = boot_with(
        "e2e-launcher-kata",
        "console=ttyS0 rootflags=data=ordered,errors=remount-ro rootfstype=ext4 pci=off \
         reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off \
         i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd",
    );
    assert_devices_announced_once(&console);
}
