//! Firecracker's hybrid vsock end to end: squib's vhost-user vsock backend behind QEMU's
//! `vhost-user-vsock-device`, the test guest's agent on AF_VSOCK, host clients on `uds_path`.
//! One guest boot (with a network interface and a drive besides the vsock device) covers
//! host- and guest-initiated streams, 16 MiB both ways, 256 concurrent connections, the
//! no-listener cases on both sides, a Kata-agent-like start-up race and the metrics.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{BOOT_TIMEOUT, Squib, guest};

const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const ECHO_PORT: u32 = 5000;
const KATA_PORT: u32 = 1024;
const HOST_ECHO_PORT: u32 = 6000;
const HOST_ABSENT_PORT: u32 = 6001;
const BIG: u64 = 16 << 20;

/// The agent's test pattern (guest/agent/src/vsock.rs).
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7).wrapping_add(offset / 251) % 256) as u8
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn pattern_fnv(len: u64) -> u64 {
    let mut fnv = Fnv::new();
    let chunk: Vec<u8> = (0..len).map(pattern).collect();
    fnv.update(&chunk);
    fnv.0
}

/// A TAP in the host's namespace for the guest's interface, removed at the end.
struct Tap(String);

impl Tap {
    fn new() -> Option<Tap> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !Path::new("/dev/net/tun").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "e2e_vsock needs root and /dev/net/tun under CI"
            );
            return None;
        }
        let name = format!("sqvs{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let out = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip tuntap add: {out:?}");
        Some(Tap(name))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn script_drive(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("script.img");
    let mut bytes = format!("{script}\n").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Connects to `uds_path` and performs the hybrid handshake; `None` when squib closed the
/// socket instead of answering `OK` (no guest listener).
fn hybrid_connect(uds: &Path, port: u32) -> Option<(UnixStream, u32)> {
    let mut stream = UnixStream::connect(uds).expect("connect to uds_path");
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .expect("timeout");
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    let line = String::from_utf8(line).expect("utf-8 ack");
    let host_port = line
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("unexpected ack {line:?}"))
        .parse()
        .expect("host port");
    Some((stream, host_port))
}

/// Sends `len` pattern bytes, half-closes, and returns the FNV of everything read back.
fn echo_round(stream: UnixStream, len: u64) -> (u64, u64) {
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while sent < len {
            let n = (len - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            writer.write_all(&chunk[..n]).expect("write to the guest");
            sent += n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let (mut fnv, mut total, mut buf) = (Fnv::new(), 0u64, vec![0u8; 64 * 1024]);
    loop {
        let n = reader.read(&mut buf).expect("read the echo");
        if n == 0 {
            break;
        }
        fnv.update(&buf[..n]);
        total += n as u64;
    }
    sender.join().unwrap();
    (total, fnv.0)
}

/// Echo server on `<uds_path>_<port>` for one guest-initiated connection: returns the byte
/// count and FNV of what the guest sent.
fn host_echo_listener(uds: &Path, port: u32) -> JoinHandle<(u64, u64)> {
    let listener = UnixListener::bind(format!("{}_{port}", uds.display())).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the guest connects");
        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        let (mut fnv, mut total, mut buf) = (Fnv::new(), 0u64, vec![0u8; 64 * 1024]);
        loop {
            let n = stream.read(&mut buf).expect("read from the guest");
            if n == 0 {
                break;
            }
            fnv.update(&buf[..n]);
            total += n as u64;
            stream.write_all(&buf[..n]).expect("echo to the guest");
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        (total, fnv.0)
    })
}

/// Kata's agent dial: from right after InstanceStart, retry `CONNECT` until the guest
/// listens; then request/response round trips on the one connection.
fn kata_dial(uds: PathBuf) -> JoinHandle<(usize, Duration)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut attempts = 0;
        let (stream, _) = loop {
            attempts += 1;
            if let Some(conn) = hybrid_connect(&uds, KATA_PORT) {
                break conn;
            }
            assert!(
                started.elapsed() < BOOT_TIMEOUT,
                "the guest agent never listened"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        for i in 0..20 {
            let request = format!("request {i} {}\n", "x".repeat(i * 10));
            writer.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            reader.read_line(&mut reply).unwrap();
            assert_eq!(reply, request, "round trip {i}");
        }
        (attempts, started.elapsed())
    })
}

fn console_fields(squib: &Squib, needle: &str) -> Vec<(String, String)> {
    squib.wait_for_line(needle, STEP_TIMEOUT);
    let console = squib.console();
    let line = console.lines().find(|l| l.contains(needle)).unwrap();
    line[line.find(needle).unwrap() + needle.len()..]
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(fields: &[(String, String)], key: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

#[test]
fn hybrid_vsock_end_to_end() {
    let Some(tap) = Tap::new() else {
        eprintln!("SKIPPED: e2e_vsock needs root and /dev/net/tun");
        return;
    };
    let guest = guest();
    let mut squib = Squib::start(&["--id", "e2e-vsock"]);
    let dir = squib.dir.path().to_path_buf();
    let uds = dir.join("v.sock");
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, "").unwrap();

    // The guest: the Kata-like agent listens late; the echo server at once; then the
    // guest-initiated transfers.
    let script = format!(
        "(sleep 3; squib-agent vsock-listen kata {KATA_PORT}) &\n\
         squib-agent vsock-listen echo {ECHO_PORT} &\n\
         squib-agent vsock-connect g2h {HOST_ECHO_PORT} {BIG}\n\
         squib-agent vsock-connect absent {HOST_ABSENT_PORT} 10\n"
    );
    let drive = script_drive(&dir, &script);
    squib.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 quiet squib.action=wait squib.script=/dev/vda",
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/drives/script",
        &serde_json::json!({"drive_id":"script","path_on_host":drive,"is_root_device":false,"is_read_only":true}).to_string(),
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
            r#"{{"iface_id":"eth0","host_dev_name":"{}","guest_mac":"06:00:0a:00:00:02"}}"#,
            tap.0
        ),
    );
    squib.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    squib.ok(
        "PUT",
        "/vsock",
        &serde_json::json!({"guest_cid": 3, "uds_path": uds}).to_string(),
    );
    let g2h = host_echo_listener(&uds, HOST_ECHO_PORT);
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
    }));
    assert!(started.is_ok(), "InstanceStart:\n{}", squib.transcript());
    let kata = kata_dial(uds.clone());

    // Host-initiated: 16 MiB echoed back, checksummed.
    squib.wait_for_line("AGENT-VSOCK-LISTEN echo", BOOT_TIMEOUT);
    let (stream, host_port) = hybrid_connect(&uds, ECHO_PORT)
        .unwrap_or_else(|| panic!("the guest echo listens:\n{}", squib.transcript()));
    assert!(host_port >= 1 << 30, "host port {host_port}");
    let (echoed, fnv) = echo_round(stream, BIG);
    assert_eq!(echoed, BIG);
    assert_eq!(fnv, pattern_fnv(BIG), "16 MiB host→guest→host");

    // Guest-initiated: 16 MiB to <uds_path>_6000 and back.
    let (host_got, host_fnv) = g2h.join().unwrap();
    assert_eq!(host_got, BIG);
    assert_eq!(
        host_fnv,
        pattern_fnv(BIG),
        "what the host listener received"
    );
    let g2h_line = console_fields(&squib, "AGENT-VSOCK-CONN g2h");
    assert_eq!(field(&g2h_line, "sent"), BIG.to_string());
    assert_eq!(field(&g2h_line, "recv"), BIG.to_string());
    assert_eq!(
        field(&g2h_line, "fnv"),
        format!("{:016x}", pattern_fnv(BIG))
    );

    // No listener on the host side: the guest's connect is reset.
    squib.wait_for_line("AGENT-ERROR absent", STEP_TIMEOUT);
    let console = squib.console();
    let absent = console
        .lines()
        .find(|l| l.contains("AGENT-ERROR absent"))
        .unwrap();
    assert!(
        absent.contains("connect: Connection reset by peer"),
        "{absent}"
    );

    // No listener on the guest side: squib closes the host client's socket without an OK.
    assert!(
        hybrid_connect(&uds, 5999).is_none(),
        "CONNECT to a closed guest port"
    );

    // 256 concurrent connections, all open at once, each with its own data.
    let conns: Vec<UnixStream> = (0..256)
        .map(|i| {
            hybrid_connect(&uds, ECHO_PORT)
                .unwrap_or_else(|| panic!("concurrent connection {i} refused"))
                .0
        })
        .collect();
    for (i, mut c) in conns.iter().enumerate() {
        c.write_all(&vec![i as u8; 4096]).unwrap();
    }
    for (i, mut c) in conns.iter().enumerate() {
        let mut back = vec![0u8; 4096];
        c.read_exact(&mut back).unwrap();
        assert!(
            back.iter().all(|&b| b == i as u8),
            "connection {i} got another's bytes"
        );
    }
    drop(conns);

    // The Kata-like dial got through once the late listener came up.
    let (attempts, took) = kata.join().unwrap();
    assert!(
        attempts > 1,
        "the agent listened late, so the first dials failed"
    );
    eprintln!("kata-like dial: {attempts} attempts, {took:?}");

    // The vsock metrics section counts what happened.
    assert!(
        squib.child.try_wait().unwrap().is_none(),
        "squib ended:\n{}",
        squib.transcript()
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    // Counters are deltas since the previous flush, and the periodic flush (every 60 s) may
    // have written lines while a slow guest ran: sum over every line.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!lines.is_empty(), "a metrics line");
    let vsock = &lines.last().unwrap()["vsock"];
    let count = |key: &str| -> u64 {
        lines
            .iter()
            .map(|line| {
                line["vsock"][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("vsock.{key} in {line}"))
            })
            .sum()
    };
    assert!(count("conns_added") >= 256 + 3, "{vsock}");
    assert!(count("rx_bytes_count") >= 2 * BIG, "{vsock}");
    assert!(count("tx_bytes_count") >= 2 * BIG, "{vsock}");
    assert!(
        count("rx_packets_count") > 0 && count("tx_packets_count") > 0,
        "{vsock}"
    );
    assert!(count("tx_queue_event_count") > 0, "{vsock}");
}

#[test]
fn an_existing_uds_path_fails_with_upstreams_text_and_drops_the_device() {
    let squib = Squib::start(&["--id", "e2e-vsock-bind"]);
    let dir = squib.dir.path();
    let uds = dir.join("v.sock");
    squib.ok(
        "PUT",
        "/vsock",
        &serde_json::json!({"guest_cid": 3, "uds_path": uds}).to_string(),
    );
    // The API socket's path exists: binding there fails as upstream does.
    let (status, body) = squib.api(
        "PUT",
        "/vsock",
        Some(&serde_json::json!({"guest_cid": 4, "uds_path": dir.join("api.sock")}).to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)"),
        "{body}"
    );
    // As upstream: the configured device was dropped (and its socket file removed) before
    // the new one was refused.
    let (_, config) = squib.api("GET", "/vm/config", None);
    assert!(config.contains(r#""vsock":null"#), "{config}");
    assert!(!uds.exists());
}
