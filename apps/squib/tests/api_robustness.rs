//! What a hostile client or a stuck file cannot do to squib's API (no guest needed): stall it
//! through a log or metrics FIFO nobody reads, or end it with a connection flood.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
/// request is still answered, and SIGTERM still ends squib with 143 at once.
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
    assert_eq!(exit.code(), Some(143), "{}", squib.transcript());
}
