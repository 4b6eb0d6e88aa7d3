//! End-to-end networking: the real `squib` binary, inside a network namespace of the test's own,
//! boots the test guest with a virtio-net interface backed by a real TAP through squib's own
//! virtio-net device (vhost-user).
//! Ping and TCP both ways, the MMDS (V1, V2 tokens, IMDS vs JSON) from inside the guest, a tx
//! rate limiter (also PATCHed live), and bad configurations answered with upstream's texts.
//!
//! Needs root, /dev/net/tun and `ip`. Outside CI a missing prerequisite skips loudly; with
//! `CI=true` it fails. Nothing outside the namespace is touched: the TAP lives in it, squib runs
//! in it (`ip netns exec`), and the host side of every transfer runs in a thread that joined it.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const HOST_IP: &str = "10.0.0.1";
const HOST_CIDR: &str = "10.0.0.1/24";
const GUEST_CIDR: &str = "10.0.0.2/24";
const GUEST_IP: &str = "10.0.0.2";
const TAP: &str = "sqbtap0";
const SCRIPT_DONE: &str = "SQUIB-SCRIPT-DONE";
const STEP_TIMEOUT: Duration = Duration::from_secs(45);

/// A raw "disk" holding the guest script (`squib.script=/dev/vda`), NUL-padded to sectors.
fn script_drive(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("script.img");
    let mut bytes = format!("set -x\n{script}\n").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Boot source (initramfs only), the script drive and the interface; the TAP goes up after
/// squib opened it.
fn configure_net_guest(squib: &Squib, ns: &Netns, script: &str, iface_extra: &str) {
    configure_net_guest_in(squib, ns, squib.dir.path(), script, iface_extra);
}

/// [`configure_net_guest`] with the script drive in `dir`.
fn configure_net_guest_in(squib: &Squib, ns: &Netns, dir: &Path, script: &str, iface_extra: &str) {
    let guest = guest();
    let drive = script_drive(dir, script);
    squib.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": format!(
                "console=ttyS0 reboot=k panic=1 quiet squib.action=wait squib.ip={GUEST_CIDR} squib.script=/dev/vda"
            ),
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/drives/script",
        &serde_json::json!({
            "drive_id": "script",
            "path_on_host": drive,
            "is_root_device": false,
            "is_read_only": true,
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":256}"#,
    );
    squib.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(
            r#"{{"iface_id":"eth0","host_dev_name":"{TAP}","guest_mac":"06:00:0a:00:00:02"{iface_extra}}}"#
        ),
    );
    ns.link_up(TAP);
}

fn start(squib: &Squib) {
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line("SQUIB-NET eth0", BOOT_TIMEOUT);
}

/// The `key=value` fields of the first console line containing `needle` (the shell's `set -x`
/// trace of an `echo` quotes them: the quotes are dropped).
fn fields(squib: &Squib, needle: &str) -> HashMap<String, String> {
    squib.wait_for_line(needle, STEP_TIMEOUT);
    let console = squib.console();
    let line = console
        .lines()
        .find(|l| l.contains(needle))
        .expect("line seen");
    line[line.find(needle).unwrap() + needle.len()..]
        .split_whitespace()
        .filter_map(|w| w.trim_matches('\'').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unhex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// (status, content type, body) of the agent's `http` command tagged `tag`.
fn http_result(squib: &Squib, tag: &str) -> (u16, String, String) {
    let f = fields(squib, &format!("AGENT-HTTP {tag} "));
    (
        f["status"].parse().unwrap(),
        f["ctype"].clone(),
        unhex(&f["body"]),
    )
}

/// Every frame seen on the host side of `tap` (AF_PACKET, both directions) until `stop`.
fn capture(
    ns: &Netns,
    tap: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<Vec<Vec<u8>>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.thread(move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked and owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(tap).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {tap}");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval; pointer and length describe `timeout`.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0);
        ready_tx.send(()).unwrap();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is valid for writes of its length for the whole call.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    });
    ready_rx.recv_timeout(STEP_TIMEOUT).unwrap();
    handle
}

/// True for an ARP frame about, or an IPv4 packet to or from, `ip`.
fn mentions(frame: &[u8], ip: [u8; 4]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => frame.get(38..42) == Some(&ip) || frame.get(28..32) == Some(&ip),
        Some([0x08, 0x00]) => frame.get(26..30) == Some(&ip) || frame.get(30..34) == Some(&ip),
        _ => false,
    }
}

fn pattern_sum(len: usize) -> u32 {
    (0..len).fold(0u32, |s, i| s.wrapping_add(((i % 65536) % 251) as u32))
}

#[test]
fn ping_and_tcp_both_ways_through_the_device() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    const UP: usize = 2 << 20;
    const DOWN: usize = 2 << 20;
    let ns = Netns::new("tcp");
    ns.add_tap(TAP, HOST_CIDR);
    // Host side, inside the namespace: one listener per direction, bound before the guest runs.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let host = ns.thread(move || {
        let up = TcpListener::bind((HOST_IP, 5001)).unwrap();
        let down = TcpListener::bind((HOST_IP, 5002)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = up.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let (mut got, mut sum) = (0usize, 0u32);
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
            sum = buf[..n]
                .iter()
                .fold(sum, |a, &b| a.wrapping_add(u32::from(b)));
        }
        drop(s);
        let (mut s, _) = down.accept().unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < DOWN {
            let n = chunk.len().min(DOWN - sent);
            s.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        (got, sum)
    });
    ready_rx.recv_timeout(STEP_TIMEOUT).unwrap();

    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-tcp"]);
    configure_net_guest(
        &squib,
        &ns,
        &format!(
            "echo VIRTIO-FEATURES net=$(cat /sys/class/net/eth0/device/features) \
             blk=$(cat /sys/block/vda/device/features)\n\
             ping -c 3 -W 5 {HOST_IP} && echo GUEST-PING-OK\n\
             squib-agent tcp-send up {HOST_IP}:5001 {UP}\n\
             squib-agent tcp-recv down {HOST_IP}:5002"
        ),
        "",
    );
    let metrics_path = squib.dir.path().join("metrics.json");
    squib.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({ "metrics_path": metrics_path }).to_string(),
    );
    start(&squib);

    // The guest's drivers negotiated VIRTIO_F_VERSION_1 (bit 32 of the features the guest
    // lists, one character per bit): microVM transports are modern, as Firecracker's devices.
    let features = fields(&squib, "VIRTIO-FEATURES ");
    for device in ["net", "blk"] {
        assert_eq!(
            features.get(device).and_then(|f| f.as_bytes().get(32)),
            Some(&b'1'),
            "{device}: {features:?}"
        );
    }
    squib.wait_for_line("GUEST-PING-OK", STEP_TIMEOUT);
    let ping = ns.exec(&["busybox", "ping", "-c", "3", "-W", "5", GUEST_IP]);
    assert!(
        ping.status.success(),
        "host → guest ping failed: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        squib.console()
    );

    let sent = fields(&squib, "AGENT-TCP-SENT up ");
    assert_eq!(sent["bytes"], UP.to_string());
    let down = fields(&squib, "AGENT-TCP-RECV down ");
    assert_eq!(down["bytes"], DOWN.to_string(), "{}", squib.console());
    assert_eq!(down["sum"], pattern_sum(DOWN).to_string());
    let (got, sum) = host.join().unwrap();
    assert_eq!(got, UP);
    assert_eq!(sum, pattern_sum(UP));
    squib.wait_for_line(&format!("{SCRIPT_DONE} rc=0"), STEP_TIMEOUT);

    // The device's counters reach the metrics: every line carries deltas, so they add up to at
    // least what crossed (frames carry headers on top of the payload).
    squib.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics_path).unwrap();
    let total = |section: &str, key: &str| -> u64 {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v[section][key].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(total("net_eth0", "tx_bytes_count") >= UP as u64, "{text}");
    assert!(total("net_eth0", "rx_bytes_count") >= DOWN as u64, "{text}");
    assert!(total("net", "tx_packets_count") > 0, "{text}");
    drop(squib);
}

const MMDS_DATA: &str = r#"{"latest":{"meta-data":{"ami-id":"ami-123","reservation-id":"r-1"}}}"#;

fn configure_mmds(squib: &Squib, version: &str) {
    squib.ok("PUT", "/mmds", MMDS_DATA);
    squib.ok(
        "PUT",
        "/mmds/config",
        &format!(r#"{{"network_interfaces":["eth0"],"version":"{version}"}}"#),
    );
}

#[test]
fn mmds_v1_from_inside_the_guest() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    let ns = Netns::new("mmds1");
    ns.add_tap(TAP, HOST_CIDR);
    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-mmds1"]);
    let m = "169.254.169.254";
    configure_net_guest(
        &squib,
        &ns,
        &format!(
            "ping -c 1 -W 5 {HOST_IP}\n\
             ip route add {m} dev eth0\n\
             squib-agent http imds GET {m} /latest/meta-data/\n\
             squib-agent http json GET {m} /latest/meta-data/ 'Accept: application/json'\n\
             squib-agent http leaf GET {m} /latest/meta-data/ami-id\n\
             squib-agent http missing GET {m} /latest/nothing\n\
             echo WGET-$(wget -q -O - http://{m}/latest/meta-data/ami-id)\n\
             i=0; while [ $i -lt 200 ]; do\n\
               [ \"$(wget -q -O - http://{m}/latest/meta-data/ami-id)\" = ami-456 ] && echo GUEST-SAW-PATCH && break\n\
               i=$((i + 1)); sleep 0.2\n\
             done"
        ),
        "",
    );
    configure_mmds(&squib, "V1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let frames = capture(&ns, TAP, stop.clone());
    start(&squib);

    assert_eq!(
        http_result(&squib, "imds"),
        (200, "text/plain".into(), "ami-id\nreservation-id".into())
    );
    assert_eq!(
        http_result(&squib, "json"),
        (
            200,
            "application/json".into(),
            r#"{"ami-id":"ami-123","reservation-id":"r-1"}"#.into()
        )
    );
    assert_eq!(http_result(&squib, "leaf").2, "ami-123");
    assert_eq!(
        http_result(&squib, "missing"),
        (
            404,
            "text/plain".into(),
            "Resource not found: /latest/nothing.".into()
        )
    );
    squib.wait_for_line("WGET-ami-123", STEP_TIMEOUT);
    // The store is published to the guest live.
    squib.ok(
        "PATCH",
        "/mmds",
        r#"{"latest":{"meta-data":{"ami-id":"ami-456"}}}"#,
    );
    squib.wait_for_line("GUEST-SAW-PATCH", STEP_TIMEOUT);

    // Nothing for the MMDS reached the TAP, while the guest's other traffic did.
    stop.store(true, Ordering::Relaxed);
    let frames = frames.join().unwrap();
    assert!(
        frames.iter().any(|f| mentions(f, [10, 0, 0, 2])),
        "the capture saw none of the guest's traffic ({} frames)",
        frames.len()
    );
    let leaked: Vec<_> = frames
        .iter()
        .filter(|f| mentions(f, [169, 254, 169, 254]))
        .collect();
    assert!(
        leaked.is_empty(),
        "MMDS frames reached the TAP: {leaked:x?}"
    );
}

#[test]
fn mmds_v2_tokens_from_inside_the_guest() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    let ns = Netns::new("mmds2");
    ns.add_tap(TAP, HOST_CIDR);
    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-mmds2"]);
    let m = "169.254.169.254";
    let path = "/latest/meta-data/ami-id";
    configure_net_guest(
        &squib,
        &ns,
        &format!(
            "ip route add {m} dev eth0\n\
             squib-agent http notoken GET {m} {path}\n\
             squib-agent http token PUT {m} /latest/api/token --save /tmp/tok 'X-metadata-token-ttl-seconds: 1'\n\
             squib-agent http good GET {m} {path} 'X-metadata-token: @/tmp/tok'\n\
             squib-agent http wrong GET {m} {path} 'X-metadata-token: bm90LWEtdG9rZW4='\n\
             sleep 2\n\
             squib-agent http expired GET {m} {path} 'X-metadata-token: @/tmp/tok'"
        ),
        "",
    );
    configure_mmds(&squib, "V2");
    start(&squib);

    assert_eq!(
        http_result(&squib, "notoken"),
        (
            401,
            "text/plain".into(),
            "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.".into()
        )
    );
    let (status, _, token) = http_result(&squib, "token");
    assert_eq!(status, 200);
    assert_eq!(token.len(), 48, "{token:?}");
    assert_eq!(
        http_result(&squib, "good"),
        (200, "text/plain".into(), "ami-123".into())
    );
    let invalid = (401, "text/plain".into(), "MMDS token not valid.".into());
    assert_eq!(http_result(&squib, "wrong"), invalid);
    assert_eq!(http_result(&squib, "expired"), invalid);
}

#[test]
fn tx_rate_limiter_bounds_a_transfer_and_patch_changes_it_live() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    // 1 MB/s, then 250 kB/s after the PATCH. Both buckets hold more than the largest
    // segmentation-offloaded frame (64 KiB): a frame larger than its bucket passes and only
    // blocks for the part the bucket could not pay (upstream's overconsumption), so a smaller
    // bucket would let TSO traffic through faster than its nominal rate, as upstream does.
    const FIRST: usize = 1_000_000;
    const SECOND: usize = 500_000;
    let ns = Netns::new("limit");
    ns.add_tap(TAP, HOST_CIDR);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let (first_ms_tx, first_ms_rx) = std::sync::mpsc::channel::<u64>();
    let host = ns.thread(move || {
        let data = TcpListener::bind((HOST_IP, 5001)).unwrap();
        let gate = TcpListener::bind((HOST_IP, 5003)).unwrap();
        ready_tx.send(()).unwrap();
        // Timed on the host's clock (a TCG guest's clock may lag on a loaded host), from before
        // the guest can start sending: the kernel may queue data before `accept` returns.
        let drain = |l: &TcpListener, started: Option<std::time::Instant>| {
            let (mut s, _) = l.accept().unwrap();
            let started = started.unwrap_or_else(std::time::Instant::now);
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).unwrap();
            (sink.len(), started.elapsed().as_millis() as u64)
        };
        // This thread already waits in `accept` when the first transfer connects.
        let (first, first_ms) = drain(&data, None);
        first_ms_tx.send(first_ms).unwrap();
        // The guest waits on the gate until the test has PATCHed the limiter.
        gate_rx.recv().unwrap();
        let (g, _) = gate.accept().unwrap();
        let released = std::time::Instant::now();
        drop(g);
        let (second, second_ms) = drain(&data, Some(released));
        (first, second, second_ms)
    });
    ready_rx.recv_timeout(STEP_TIMEOUT).unwrap();
    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-limit"]);
    configure_net_guest(
        &squib,
        &ns,
        &format!(
            "squib-agent tcp-send first {HOST_IP}:5001 {FIRST}\n\
             squib-agent tcp-recv gate {HOST_IP}:5003\n\
             squib-agent tcp-send second {HOST_IP}:5001 {SECOND}"
        ),
        r#","tx_rate_limiter":{"bandwidth":{"size":100000,"refill_time":100}}"#,
    );
    start(&squib);

    fields(&squib, "AGENT-TCP-SENT first ");
    let ms = first_ms_rx.recv_timeout(STEP_TIMEOUT).unwrap();
    // Frames carry headers too, so the payload alone bounds the time from below:
    // everything beyond the initial (full) bucket at 1 MB/s.
    assert!(ms >= 900 * 9 / 10, "1 MB at 1 MB/s took only {ms} ms");

    let (status, body) = squib.api(
        "PATCH",
        "/network-interfaces/eth9",
        Some(r#"{"iface_id":"eth9","tx_rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("Network config error: Unable to update the net device: Failed perform action on device: Device not found"),
        "{body}"
    );
    squib.ok(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":100000,"refill_time":400}}}"#,
    );
    let (_, config) = squib.api("GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"],
        100000
    );
    gate_tx.send(()).unwrap();
    fields(&squib, "AGENT-TCP-SENT second ");
    let (first, second, ms) = host.join().unwrap();
    assert_eq!((first, second), (FIRST, SECOND));
    // The PATCHed bucket starts full, and, as upstream's, a full bucket keeps the refill time
    // that passes until it first runs dry: after its 100 kB it grants the tokens of up to
    // another refill period (400 ms, 100 kB) spent idle between the PATCH and the transfer. So
    // (500 kB − 2 × 100 kB) at 250 kB/s = 1.2 s at least; at the old 1 MB/s it would be 0.3 s.
    assert!(ms >= 1200 * 9 / 10, "500 kB at 250 kB/s took only {ms} ms");
}

#[test]
fn bad_network_configurations_answer_upstream_texts_and_change_nothing() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    let ns = Netns::new("bad");
    ns.add_tap(TAP, HOST_CIDR);
    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-bad"]);
    squib.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(
            r#"{{"iface_id":"eth0","host_dev_name":"{TAP}","guest_mac":"06:00:0a:00:00:02"}}"#
        ),
    );
    let config = || squib.api("GET", "/vm/config", None).1;
    let before = config();
    let fault = |path: &str, body: &str, expected: &str| {
        let (status, reply) = squib.api("PUT", path, Some(body));
        assert_eq!(status, 400, "{path} {body} → {reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["fault_message"], expected, "{path} {body}");
    };
    // `lo` exists in the namespace but is no TAP: TUNSETIFF refuses it.
    fault(
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"lo"}"#,
        "Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by lo. Check our documentation on setting up the network devices.",
    );
    // The TAP squib already holds for eth0 is busy for another interface.
    fault(
        "/network-interfaces/eth1",
        &format!(r#"{{"iface_id":"eth1","host_dev_name":"{TAP}"}}"#),
        &format!(
            "Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Resource busy (os error 16). Invalid TUN/TAP Backend provided by {TAP}. Check our documentation on setting up the network devices."
        ),
    );
    fault(
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"sqbtap1","guest_mac":"06:00:0a:00:00:02"}"#,
        "Network config error: The MAC address is already in use: 06:00:0a:00:00:02",
    );
    fault(
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"sqbtap1","mtu":67}"#,
        "Network config error: Could not create the network device: MTU 67 is out of range [68, 65535]",
    );
    fault(
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"a-name-too-long-x"}"#,
        "Network config error: Could not create the network device: Open tap device failed: Invalid interface name",
    );
    fault(
        "/mmds/config",
        r#"{"network_interfaces":["eth0","eth7"],"version":"V2"}"#,
        "MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.",
    );
    assert_eq!(config(), before);
    // No transient TAP was left behind by the refused requests.
    let links = String::from_utf8(ns.ip(&["-o", "link"]).stdout).unwrap();
    assert!(!links.contains("sqbtap1"), "{links}");
}

#[test]
fn a_snapshot_with_an_interface_restores_onto_the_overriding_tap() {
    if !tap_prerequisites("e2e_net") {
        return;
    }
    const OTHER_TAP: &str = "sqbnet1";
    const HOST_MAC: &str = "02:00:0a:00:00:01";
    let ns = Netns::new("snap");
    ns.add_tap(TAP, HOST_CIDR);
    // The replacement TAP answers for the same address with the same MAC, as a host moving a VM
    // to a new TAP would arrange: the guest's ARP cache stays right.
    ns.ip(&["link", "set", "dev", TAP, "address", HOST_MAC]);
    let snap = tempfile::tempdir().unwrap();
    // The guest pings the host once a second and says which rounds got an answer.
    let script = format!(
        "set +x\ni=0\nwhile true; do i=$((i+1)); ping -c 1 -W 1 {HOST_IP} >/dev/null 2>&1 && echo NETPING-OK $i; sleep 1; done"
    );
    let last_before;
    {
        let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-snap"]);
        configure_net_guest_in(&squib, &ns, snap.path(), &script, "");
        start(&squib);
        squib.wait_for_line("NETPING-OK", STEP_TIMEOUT);
        squib.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
        squib.ok(
            "PUT",
            "/snapshot/create",
            &serde_json::json!({
                "snapshot_path": snap.path().join("vm.state"),
                "mem_file_path": snap.path().join("vm.mem"),
            })
            .to_string(),
        );
        last_before = squib.console().matches("NETPING-OK").count();
    }
    ns.ip(&["link", "del", TAP]);
    ns.add_tap(OTHER_TAP, HOST_CIDR);
    ns.ip(&["link", "set", "dev", OTHER_TAP, "address", HOST_MAC]);

    let squib = Squib::start_in_netns(&ns.0, &["--id", "e2e-net-snap-2"]);
    squib.ok(
        "PUT",
        "/snapshot/load",
        &serde_json::json!({
            "snapshot_path": snap.path().join("vm.state"),
            "mem_backend": {"backend_type": "File", "backend_path": snap.path().join("vm.mem")},
            "resume_vm": true,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": OTHER_TAP}],
        })
        .to_string(),
    );
    ns.link_up(OTHER_TAP);
    // The restored guest's pings get answers again, through the other TAP.
    squib.wait_for_line("NETPING-OK", STEP_TIMEOUT);
    assert!(last_before > 0);
    let (_, config) = squib.api("GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], OTHER_TAP,
        "{config}"
    );
}
