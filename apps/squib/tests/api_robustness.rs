//! What a hostile client or a stuck file cannot do to squib's API (no guest needed): stall it
//! through a log or metrics FIFO nobody reads, or end it with a connection flood.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Squib;

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Fills a pipe through `path` until the kernel refuses more (its reader, if any, not reading).
fn fill_pipe(path: &Path) -> std::fs::File {
    let mut writer = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    let chunk = [b'x'; 4096];
    let mut total = 0usize;
    loop {
        match writer.write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    assert!(total >= 4096, "the pipe took only {total} bytes");
    writer
}

/// A log FIFO with no reader and a metrics FIFO whose reader stopped reading (full): every
/// request is still answered, and SIGTERM still ends squib at once (by that signal, as upstream).
#[test]
fn fifos_nobody_reads_never_stall_squib() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.fifo");
    let metrics = dir.path().join("metrics.fifo");
    mkfifo(&log);
    mkfifo(&metrics);
    // The stalled reader: opened, read from never.
    let _reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&metrics)
        .unwrap();
    let socket = dir.path().join("api.sock");
    let args: Vec<String> = [
        "--api-sock",
        socket.to_str().unwrap(),
        "--log-path",
        log.to_str().unwrap(),
        "--level",
        "Debug",
        "--metrics-path",
        metrics.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut squib = Squib::spawn(dir, socket, &args);
    let _full = fill_pipe(&metrics);
    // Each request logs two lines of ~100 bytes: 3000 of them are several times what a pipe
    // holds (64 KiB), so the log FIFO is full long before the end.
    for i in 0..3000 {
        let (status, body) = squib.api("GET", "/machine-config", None);
        assert_eq!(status, 200, "request {i}: {body}");
    }
    // Runtime logger changes still go through with a full target.
    squib.ok(
        "PUT",
        "/logger",
        &serde_json::json!({"log_path": log, "level": "Info"}).to_string(),
    );
    let (status, _) = squib.api("GET", "/", None);
    assert_eq!(status, 200);
    signal(squib.child.id(), "TERM");
    let exit = squib.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(libc::SIGTERM),
        "{}",
        squib.transcript()
    );
}

/// Starts squib with its descriptor limit set to `nofile` (soft and hard).
fn squib_with_nofile(nofile: u32) -> Squib {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let args = vec![
        "--api-sock".to_string(),
        socket.to_str().unwrap().to_string(),
    ];
    let limit = format!("--nofile={nofile}:{nofile}");
    Squib::spawn_wrapped(&["prlimit", &limit, "--"], dir, socket, &args)
}

const SERVER_FULL: &str = "HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\nContent-Length: 40\r\n\r\n{ \"error\": \"Too many open connections\" }";

/// Everything the peer sends until it closes (or `limit` passes: then what came so far).
fn read_until_closed(stream: &mut UnixStream, limit: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // Closed with requests of ours still unread on squib's side.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// One GET on an open connection; true when a 200 came back.
fn get_ok(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    if stream
        .write_all(b"GET /machine-config HTTP/1.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"HTTP/1.1 200"),
        Err(_) => false,
    }
}

/// More connections than the cap: the extra ones get upstream's exact 503 and are closed, the
/// others keep working, and once the flood is gone the API answers as before.
#[test]
fn connections_over_the_cap_get_upstreams_503() {
    // 1024 descriptors: the cap is squib's default of 256.
    let squib = squib_with_nofile(1024);
    let mut held: Vec<UnixStream> = (0..256)
        .map(|_| UnixStream::connect(&squib.socket).unwrap())
        .collect();
    // Every held connection is accepted and served.
    for stream in held.iter_mut().step_by(17) {
        assert!(get_ok(stream), "{}", squib.transcript());
    }
    for _ in 0..20 {
        let mut extra = UnixStream::connect(&squib.socket).unwrap();
        let (reply, closed) = read_until_closed(&mut extra, Duration::from_secs(10));
        assert_eq!(String::from_utf8_lossy(&reply), SERVER_FULL);
        assert!(closed);
    }
    assert!(get_ok(&mut held[255]));
    held.clear();
    // The slots come back as the connections close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = UnixStream::connect(&squib.socket).unwrap();
        if get_ok(&mut stream) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            squib.transcript()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With so few descriptors that `accept` fails (`EMFILE`) before the cap is reached, squib
/// backs off instead of ending its API server: the queued connections are served as soon as
/// descriptors come free, and squib is still there afterwards.
#[test]
fn out_of_descriptors_only_pauses_the_api() {
    // squib holds about fifteen descriptors of its own (the API has a runtime of its own):
    // with 18, `accept` fails after two or three connections, below the cap (4 at this limit).
    let squib = squib_with_nofile(18);
    let mut flood: Vec<UnixStream> = (0..40)
        .filter_map(|_| UnixStream::connect(&squib.socket).ok())
        .collect();
    assert!(
        flood.len() > 20,
        "the listen backlog took only {}",
        flood.len()
    );
    // Give squib time to run into EMFILE on the queued connections.
    std::thread::sleep(Duration::from_secs(1));
    assert!(common::process_alive(squib.child.id()));
    flood.clear();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = UnixStream::connect(&squib.socket).unwrap();
        if get_ok(&mut stream) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API never came back:\n{}",
            squib.transcript()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(common::process_alive(squib.child.id()));
    let log = squib.log();
    assert!(
        log.contains("The API server cannot accept a connection: Too many open files"),
        "{log}"
    );
}

/// Half-sent heads and bodies, idle connections and a client that never reads its answers
/// are closed after the documented time-outs (docs/reliability.md §2); meanwhile the API
/// answers everyone else.
#[test]
fn stuck_connections_time_out() {
    let squib = Squib::start(&[]);
    let connect = || UnixStream::connect(&squib.socket).unwrap();
    let mut idle = connect();
    let mut half_head = connect();
    half_head
        .write_all(b"GET /machine-config HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = connect();
    half_body
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu")
        .unwrap();
    // A client that pipelines requests and never reads an answer.
    let mut deaf = connect();
    deaf.set_nonblocking(true).unwrap();
    let request = b"GET /machine-config HTTP/1.1\r\n\r\n";
    let mut sent = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        match deaf.write(request) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    deaf.set_nonblocking(false).unwrap();
    assert!(sent > 100, "only {sent} requests went out");
    // Meanwhile everyone else is served.
    let (status, _) = squib.api("GET", "/", None);
    assert_eq!(status, 200);

    // The half-sent body gets a 400 after 10 s, then the connection closes.
    let (reply, closed) = read_until_closed(&mut half_body, Duration::from_secs(20));
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.contains("Request body not received within 10 seconds."),
        "{reply}"
    );
    assert!(closed, "{reply}");
    // The others are closed without an answer after 30 s.
    for (name, stream) in [("idle", &mut idle), ("half head", &mut half_head)] {
        let (reply, closed) = read_until_closed(stream, Duration::from_secs(40));
        assert!(closed && reply.is_empty(), "{name}: {reply:?}");
    }
    // The deaf client: squib stops writing once nobody reads; the connection is closed
    // after 30 s without progress (a reset: requests of ours were still unread), with
    // requests left unanswered.
    if let Some(rest) =
        (started + Duration::from_secs(40)).checked_duration_since(std::time::Instant::now())
    {
        std::thread::sleep(rest);
    }
    let (reply, closed) = read_until_closed(&mut deaf, Duration::from_secs(5));
    assert!(closed, "the deaf connection was never closed");
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let answers = String::from_utf8_lossy(&reply)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answers < sent, "{answers} answers to {sent} requests");
    let (status, _) = squib.api("GET", "/", None);
    assert_eq!(status, 200);
}
