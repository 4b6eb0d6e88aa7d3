//! End-to-end: each device the API configures exists in the real guest and behaves as a
//! Firecracker user expects. The guest runs a shell script from a raw "script disk"
//! (`squib.script=/dev/vdb`, baked into the test guest's init) and prints its findings on
//! the console.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SCRIPT_DONE: &str = "SQUIB-SCRIPT-DONE";
const MIB: usize = 1 << 20;

/// Boot args of every test here: the guest idles and runs the script disk.
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vdb";

/// A raw disk of `size` bytes starting with `text`.
fn data_disk(dir: &Path, name: &str, text: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(size, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Starts squib, configures the root drive, the script disk (vdb) and whatever `extra` adds
/// (drives added there are vdc, vdd…), then boots.
fn boot_with_script(script: &str, extra: impl FnOnce(&Squib)) -> Squib {
    let guest = guest();
    let squib = Squib::start(&[]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(&squib, &guest, &rootfs, BOOT_ARGS);
    let disk = script_disk(squib.dir.path(), script);
    put_drive(
        &squib,
        json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true}),
    );
    extra(&squib);
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib
}

fn put_drive(squib: &Squib, body: serde_json::Value) {
    let id = body["drive_id"].as_str().unwrap().to_string();
    squib.ok("PUT", &format!("/drives/{id}"), &body.to_string());
}

#[test]
fn read_only_drive_refuses_writes_inside_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_disk(dir.path(), "ro.img", "SQUIB-DATA-RO", MIB);
    let script = r#"
echo "RO-CONTENT $(head -c 13 /dev/vdc)"
echo "RO-FLAG $(cat /sys/block/vdc/ro)"
if echo overwrite | dd of=/dev/vdc bs=512 count=1 conv=sync 2>/dev/null; then echo RO-WRITE-ACCEPTED; else echo RO-WRITE-REFUSED; fi
"#;
    let squib = boot_with_script(script, |s| {
        put_drive(
            s,
            json!({"drive_id": "ro", "path_on_host": data, "is_root_device": false, "is_read_only": true}),
        );
    });
    squib.wait_for_line(SCRIPT_DONE, BOOT_TIMEOUT);
    let console = squib.console();
    assert!(console.contains("RO-CONTENT SQUIB-DATA-RO"), "{console}");
    assert!(console.contains("RO-FLAG 1"), "{console}");
    assert!(console.contains("RO-WRITE-REFUSED"), "{console}");
    assert!(std::fs::read(&data).unwrap().starts_with(b"SQUIB-DATA-RO"));
}

#[test]
fn second_drive_content_is_readable_with_async_io_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"SQUIB-DATA-2ND".to_vec();
    bytes.resize(MIB, 0);
    bytes.extend_from_slice(b"AT-ONE-MIB");
    bytes.resize(2 * MIB, 0);
    let data = dir.path().join("data.img");
    std::fs::write(&data, bytes).unwrap();
    let script = r#"
echo "DATA-HEAD $(head -c 14 /dev/vdc)"
echo "DATA-MID $(dd if=/dev/vdc bs=1 skip=1048576 count=10 2>/dev/null)"
echo "DATA-SIZE $(cat /sys/block/vdc/size)"
"#;
    let squib = boot_with_script(script, |s| {
        put_drive(
            s,
            json!({"drive_id": "data", "path_on_host": data, "is_root_device": false,
            "is_read_only": false, "io_engine": "Async", "cache_type": "Writeback"}),
        );
    });
    squib.wait_for_line(SCRIPT_DONE, BOOT_TIMEOUT);
    let console = squib.console();
    assert!(console.contains("DATA-HEAD SQUIB-DATA-2ND"), "{console}");
    assert!(console.contains("DATA-MID AT-ONE-MIB"), "{console}");
    assert!(console.contains("DATA-SIZE 4096"), "{console}");
    let config = get_json(&squib, "/vm/config");
    assert_eq!(config["drives"][2]["io_engine"], "Async");
}

/// A `qemu-storage-daemon` exporting a raw image as a vhost-user-blk backend; killed on drop.
struct VhostUserBlkDaemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl VhostUserBlkDaemon {
    fn start(image: &Path, socket: &Path) -> Self {
        let blockdev = format!(
            "driver=file,node-name=f,filename={}",
            image.to_str().unwrap().replace(',', ",,")
        );
        let export = format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
            socket.to_str().unwrap().replace(',', ",,")
        );
        let child = std::process::Command::new("qemu-storage-daemon")
            .args(["--blockdev", &blockdev, "--export", &export])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (package qemu-system-common) must be installed");
        let mut daemon = Self {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.socket.exists() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("qemu-storage-daemon exited early: {status}");
            }
            assert!(Instant::now() < deadline, "no vhost-user socket after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for VhostUserBlkDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vhost_user_drive_is_served_by_an_external_backend() {
    let dir = tempfile::tempdir().unwrap();
    let image = data_disk(dir.path(), "vhost.img", "SQUIB-VHOST-USER-BLK", 2 * MIB);
    let daemon = VhostUserBlkDaemon::start(&image, &dir.path().join("vub.sock"));
    let script = r#"
echo "VUB-CONTENT $(head -c 20 /dev/vdc)"
echo "VUB-SIZE $(cat /sys/block/vdc/size)"
"#;
    let squib = boot_with_script(script, |s| {
        put_drive(
            s,
            json!({"drive_id": "vub", "socket": daemon.socket, "is_root_device": false}),
        );
    });
    squib.wait_for_line(SCRIPT_DONE, BOOT_TIMEOUT);
    let console = squib.console();
    assert!(
        console.contains("VUB-CONTENT SQUIB-VHOST-USER-BLK"),
        "{console}"
    );
    // 2 MiB in 512-byte sectors.
    assert!(console.contains("VUB-SIZE 4096"), "{console}");
    let config = get_json(&squib, "/vm/config");
    assert_eq!(config["drives"][2]["socket"], json!(daemon.socket));
    // Upstream's config refresh: QEMU's device handles the backend's config changes itself.
    let (status, body) = squib.api("PATCH", "/drives/vub", Some(r#"{"drive_id":"vub"}"#));
    assert_eq!(status, 204, "{body}");
    squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let snapshot = json!({
        "snapshot_path": dir.path().join("vm.state"),
        "mem_file_path": dir.path().join("vm.mem"),
    });
    let (status, body) = squib.api("PUT", "/snapshot/create", Some(&snapshot.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Operation not allowed: Devices without snapshot support are present: vhost-user-block(id: vub)"),
        "{body}"
    );
    drop(squib);
    drop(daemon);
}

/// What a swap must never change about a backing file: content, size, mtime, mode.
fn fingerprint(path: &Path) -> (Vec<u8>, u64, std::time::SystemTime, u32) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap();
    (
        std::fs::read(path).unwrap(),
        meta.len(),
        meta.modified().unwrap(),
        meta.permissions().mode(),
    )
}

#[test]
fn patched_drive_shows_new_content_and_never_touches_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let old = data_disk(dir.path(), "old.img", "OLD-CONTENT", MIB);
    let new = data_disk(dir.path(), "new.img", "NEW-CONTENT", 3 * MIB);
    let before = [fingerprint(&old), fingerprint(&new)];
    // Waits (up to 60 s) for the content to change, then reports size and content.
    let script = r#"
echo "SIZE-BEFORE $(cat /sys/block/vdc/size) $(head -c 11 /dev/vdc)"
echo SWAP-READY
i=0
while [ "$(head -c 11 /dev/vdc)" != NEW-CONTENT ] && [ $i -lt 600 ]; do
  i=$((i + 1)); sleep 0.1; echo 3 > /proc/sys/vm/drop_caches
done
echo "SIZE-AFTER $(cat /sys/block/vdc/size) $(head -c 11 /dev/vdc)"
"#;
    let squib = boot_with_script(script, |s| {
        put_drive(
            s,
            json!({"drive_id": "swap", "path_on_host": old, "is_root_device": false, "is_read_only": true}),
        );
    });
    squib.wait_for_line("SWAP-READY", BOOT_TIMEOUT);
    assert!(
        squib.console().contains("SIZE-BEFORE 2048 OLD-CONTENT"),
        "{}",
        squib.console()
    );

    // Unknown drive: upstream's text.
    let (status, body) = squib.api(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id":"nope","path_on_host":"/x"}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains(
            "Unable to patch the block device: Failed perform action on device: Device not found"
        ),
        "{body}"
    );

    squib.ok(
        "PATCH",
        "/drives/swap",
        &json!({"drive_id": "swap", "path_on_host": new}).to_string(),
    );
    squib.wait_for_line("SIZE-AFTER", Duration::from_secs(70));
    let after = last_value(&squib, "SIZE-AFTER ").unwrap();
    // The new size is not announced: squib never resizes (truncates) a file to tell the
    // guest (docs/deviations.md).
    assert_eq!(after, "2048 NEW-CONTENT", "{}", squib.console());
    // Neither the file the drive left nor the one it now reads, given read-only, changed.
    let after = [fingerprint(&old), fingerprint(&new)];
    for (name, (b, a)) in ["old", "new"].iter().zip(before.iter().zip(after.iter())) {
        assert!(b.0 == a.0, "{name}: content changed");
        assert_eq!(
            (b.1, b.2, b.3),
            (a.1, a.2, a.3),
            "{name}: size, mtime or mode changed"
        );
    }

    // Rate limiter only, then both; the read-back shows the merged limiter and the new path.
    squib.ok(
        "PATCH",
        "/drives/swap",
        r#"{"drive_id":"swap","rate_limiter":{"ops":{"size":1000,"refill_time":1000}}}"#,
    );
    let config = get_json(&squib, "/vm/config");
    let drive = &config["drives"][2];
    assert_eq!(drive["path_on_host"], new.to_str().unwrap());
    assert_eq!(drive["rate_limiter"]["ops"]["size"], 1000);
    assert_eq!(drive["is_read_only"], true);
}

#[test]
fn rate_limited_drive_reads_slower_than_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_disk(dir.path(), "slow.img", "SLOW", 4 * MIB);
    let script = r#"
echo RL-START
dd if=/dev/vdc of=/dev/null bs=65536 2>/dev/null
echo "RL-END $?"
"#;
    // 1 MiB per second: reading 4 MiB takes at least ~3 s (the bucket starts full).
    let squib = boot_with_script(script, |s| {
        put_drive(
            s,
            json!({"drive_id": "slow", "path_on_host": data, "is_root_device": false, "is_read_only": true,
            "rate_limiter": {"bandwidth": {"size": MIB, "refill_time": 1000}}}),
        );
    });
    squib.wait_for_line("RL-START", BOOT_TIMEOUT);
    let started = Instant::now();
    squib.wait_for_line("RL-END", Duration::from_secs(60));
    let took = started.elapsed();
    assert!(squib.console().contains("RL-END 0"), "{}", squib.console());
    assert!(
        took >= Duration::from_millis(2500),
        "4 MiB at 1 MiB/s took only {took:?}"
    );
}

#[test]
fn balloon_inflates_and_reports_guest_statistics() {
    let script = r#"
n=0
while [ $n -lt 60 ]; do
  echo "MEMAVAIL $(grep MemAvailable /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
  n=$((n + 1)); sleep 1
done
"#;
    let squib = boot_with_script(script, |s| {
        s.ok(
            "PUT",
            "/balloon",
            r#"{"amount_mib":0,"deflate_on_oom":false,"stats_polling_interval_s":1}"#,
        );
    });
    squib.wait_for_line("MEMAVAIL ", BOOT_TIMEOUT);
    let before: u64 = last_value(&squib, "MEMAVAIL ").unwrap().parse().unwrap();

    let (status, body) = squib.api("PATCH", "/balloon", Some(r#"{"amount_mib":1000}"#));
    assert_eq!(status, 400);
    assert!(
        body.contains("Balloon: Requested memory should be less than 1000MiB"),
        "{body}"
    );
    squib.ok("PATCH", "/balloon", r#"{"amount_mib":128}"#);
    assert_eq!(get_json(&squib, "/balloon")["amount_mib"], 128);

    // The guest's available memory drops by most of the 128 MiB.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now: u64 = last_value(&squib, "MEMAVAIL ").unwrap().parse().unwrap();
        if now + 96 * 1024 < before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MemAvailable went from {before} kB to only {now} kB"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Statistics: the balloon's size and the guest's own numbers, in upstream's key order.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = get_json(&squib, "/balloon/statistics");
        if stats["actual_mib"].as_u64() >= Some(120) && stats.get("available_memory").is_some() {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "statistics never caught up: {stats}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(stats["target_mib"], 128);
    assert_eq!(stats["target_pages"], 128 * 256);
    let total = stats["total_memory"].as_u64().unwrap();
    assert!(
        total > 64 * MIB as u64 && total < 256 * MIB as u64,
        "{stats}"
    );
    // Key order as on the wire (serde_json's map here is sorted, so read the raw body).
    let (_, raw) = squib.api("GET", "/balloon/statistics", None);
    let order = [
        "target_pages",
        "actual_pages",
        "target_mib",
        "actual_mib",
        "swap_in",
        "swap_out",
        "major_faults",
        "minor_faults",
        "free_memory",
        "total_memory",
        "available_memory",
        "disk_caches",
    ];
    let positions: Vec<usize> = order
        .iter()
        .filter_map(|k| raw.find(&format!("\"{k}\":")))
        .collect();
    assert!(positions.len() >= 8, "{raw}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");

    squib.ok(
        "PATCH",
        "/balloon/statistics",
        r#"{"stats_polling_interval_s":2}"#,
    );
    let (status, body) = squib.api(
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s":0}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("Statistics cannot be enabled/disabled after activation"),
        "{body}"
    );
}

#[test]
fn entropy_device_gives_bytes_on_dev_hwrng() {
    let script = r#"
echo "RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
echo "HWRNG-BYTES $(head -c 64 /dev/hwrng | wc -c)"
"#;
    let squib = boot_with_script(script, |s| {
        s.ok(
            "PUT",
            "/entropy",
            r#"{"rate_limiter":{"bandwidth":{"size":10000,"refill_time":100}}}"#,
        );
    });
    squib.wait_for_line(SCRIPT_DONE, BOOT_TIMEOUT);
    let console = squib.console();
    assert!(console.contains("RNG-CURRENT virtio_rng"), "{console}");
    assert!(console.contains("HWRNG-BYTES 64"), "{console}");
}

/// The serial output file gets the console, and the serial rate limiter bounds it: a guest
/// writing 256 KiB to its console cannot make the file grow faster than the bucket allows
/// (upstream drops the bytes it has no token for); output after the bucket refilled passes.
#[test]
fn serial_out_path_holds_the_console_within_its_rate_limit() {
    const SIZE: u64 = 16 * 1024;
    const REFILL_MS: u64 = 10_000;
    const FLOOD: u64 = 256 * 1024;
    let serial = std::cell::RefCell::new(PathBuf::new());
    let started = std::time::Instant::now();
    let mut squib = boot_with_script(
        &format!(
            "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | head -c {FLOOD}\nsleep 12\necho SERIAL-FLOOD-OVER\nsync\npoweroff -f"
        ),
        |s| {
            let path = s.dir.path().join("serial.log");
            s.ok(
                "PUT",
                "/serial",
                &json!({"serial_out_path": path, "rate_limiter": {"size": SIZE, "refill_time": REFILL_MS}})
                    .to_string(),
            );
            *serial.borrow_mut() = path;
        },
    );
    let status = squib.wait_exit(BOOT_TIMEOUT * 2);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert_eq!(status.code(), Some(0), "{}", squib.transcript());
    let log = std::fs::read(&*serial.borrow()).unwrap();
    let text = String::from_utf8_lossy(&log);
    // Written after the bucket had 12 s to refill.
    assert!(text.contains("SERIAL-FLOOD-OVER"), "{text}");
    // The bucket's size, plus its refill over the whole run (and one refill of slack).
    let bound = SIZE + SIZE * (elapsed_ms + REFILL_MS) / REFILL_MS;
    assert!(
        (log.len() as u64) <= bound,
        "{} bytes in {elapsed_ms} ms, bucket bound {bound}",
        log.len()
    );
    assert!((log.len() as u64) < FLOOD, "{} bytes", log.len());
    assert!(
        !squib.console().contains("SERIAL-FLOOD-OVER"),
        "the console went to stdout too"
    );
}

#[test]
fn ctrl_alt_del_ends_the_vm() {
    let mut squib = boot_idle_guest(&guest());
    squib.wait_for_line("SQUIB-ACTION wait", BOOT_TIMEOUT);
    squib.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    let status = squib.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", squib.console());
}
