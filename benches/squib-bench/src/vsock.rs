//! vsock: throughput both ways and 1-byte round-trip latency through squib's hybrid vsock
//! (host Unix socket → squib's vhost-user backend → QEMU's vhost-user-vsock → guest AF_VSOCK),
//! against a host Unix-socket pair with a thread at the other end as the floor, same run.
//!
//! One guest boot: the guest agent sends `bytes` to `<uds_path>_6000` `transfers` times (the
//! host reads until EOF: guest→host), then the host sends `bytes` to the guest's sink on port
//! 5001 (`CONNECT 5001`; the transfer ends when the guest closed: host→guest), then 1-byte
//! ping-pongs with the guest's echo on port 5000.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::Config;
use crate::process::{self, Proc};
use crate::report::Figure;
use crate::scenarios;
use crate::stats::median_f64;

const TIMEOUT: Duration = Duration::from_secs(180);
const FLOOR: &str =
    "a host Unix-socket pair (socketpair) with a thread at the other end, same process, same run";

fn mb_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

/// Writes `bytes`, half-closes, waits for the peer's EOF: the time until the peer had it all.
fn send_all(stream: &mut UnixStream, bytes: usize) -> anyhow::Result<Duration> {
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut buf = [0u8; 64];
    while stream.read(&mut buf)? > 0 {}
    Ok(started.elapsed())
}

/// Reads until EOF; returns how many bytes came and how long since the first call.
fn drain(stream: &mut UnixStream) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok((total, started.elapsed()));
        }
        total += n;
    }
}

/// Median microseconds of `rounds` 1-byte write/read round trips.
fn ping_pong(stream: &mut UnixStream, rounds: usize) -> anyhow::Result<f64> {
    let mut rtts = Vec::with_capacity(rounds);
    let mut byte = [7u8; 1];
    for _ in 0..rounds {
        let started = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        rtts.push(started.elapsed().as_secs_f64() * 1e6);
    }
    median_f64(&rtts).context("no round trips")
}

fn hybrid_connect(uds: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!(
            "no OK for CONNECT {port}: {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(stream)
}

struct Measured {
    g2h: Vec<f64>,
    h2g: Vec<f64>,
    rtt_us: f64,
}

fn floor(transfers: usize, bytes: usize, rounds: usize) -> anyhow::Result<Measured> {
    let mut g2h = Vec::new();
    let mut h2g = Vec::new();
    for _ in 0..transfers {
        // One direction per pair: a sender thread, the measuring reader here.
        let (mut a, mut b) = UnixStream::pair()?;
        let sender = std::thread::spawn(move || send_all(&mut b, bytes));
        let (got, took) = drain(&mut a)?;
        drop(a);
        let _ = sender.join();
        if got != bytes {
            bail!("floor: {got} of {bytes} bytes");
        }
        g2h.push(mb_s(bytes, took));
        let (mut a, mut b) = UnixStream::pair()?;
        let sink = std::thread::spawn(move || drain(&mut b).map(|_| ()));
        h2g.push(mb_s(bytes, send_all(&mut a, bytes)?));
        let _ = sink.join();
    }
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() && b.write_all(&byte).is_ok() {}
    });
    let rtt_us = ping_pong(&mut a, rounds)?;
    drop(a);
    let _ = echo.join();
    Ok(Measured { g2h, h2g, rtt_us })
}

fn squib_run(
    config: &Config,
    transfers: usize,
    bytes: usize,
    rounds: usize,
) -> anyhow::Result<Measured> {
    let guest = scenarios::guest()?;
    let dir = tempfile::Builder::new()
        .prefix("squib-bench-vsock-")
        .tempdir()?;
    let uds = dir.path().join("v.sock");
    let script = dir.path().join("script.img");
    let mut text = String::from(
        "squib-agent vsock-listen echo 5000 &\nsquib-agent vsock-listen sink 5001 sink &\n",
    );
    for i in 0..transfers {
        text.push_str(&format!("squib-agent vsock-connect g2h{i} 6000 {bytes}\n"));
    }
    let mut raw = text.into_bytes();
    raw.resize(raw.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&script, raw)?;
    // The host sink for the guest's transfers, listening before the guest boots.
    let listener = UnixListener::bind(format!("{}_6000", uds.display()))?;
    let host_sink = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for _ in 0..transfers {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let (got, took) = drain(&mut stream)?;
            if got != bytes {
                bail!("guest→host: {got} of {bytes} bytes");
            }
            out.push(mb_s(bytes, took));
        }
        Ok(out)
    });

    let socket = dir.path().join("api.sock");
    let command = scenarios::squib_command(config, &socket, "bench-vsock");
    let mut squib = Proc::spawn(command)?;
    process::wait_answering(&socket, Duration::from_secs(10))?;
    let put =
        |path: &str, body: String| process::api_expect(&socket, "PUT", path, Some(&body), 204);
    put(
        "/boot-source",
        json!({"kernel_image_path": guest.kernel, "initrd_path": guest.initrd,
               "boot_args": "console=ttyS0 reboot=k panic=1 quiet squib.action=wait squib.script=/dev/vda"})
        .to_string(),
    )?;
    put(
        "/drives/script",
        json!({"drive_id":"script","path_on_host":script,"is_root_device":false,"is_read_only":true}).to_string(),
    )?;
    put(
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":256}"#.to_string(),
    )?;
    put(
        "/vsock",
        json!({"guest_cid": 3, "uds_path": uds}).to_string(),
    )?;
    put("/actions", r#"{"action_type":"InstanceStart"}"#.to_string())?;
    let result = (|| {
        squib.wait_for_line(&format!("AGENT-VSOCK-CONN g2h{}", transfers - 1), TIMEOUT)?;
        let g2h = host_sink
            .join()
            .map_err(|_| anyhow::anyhow!("host sink panicked"))??;
        let mut h2g = Vec::new();
        for _ in 0..transfers {
            let mut stream = hybrid_connect(&uds, 5001)?;
            h2g.push(mb_s(bytes, send_all(&mut stream, bytes)?));
        }
        let mut echo = hybrid_connect(&uds, 5000)?;
        let rtt_us = ping_pong(&mut echo, rounds)?;
        Ok(Measured { g2h, h2g, rtt_us })
    })();
    squib.stop(Duration::from_secs(5));
    result
}

pub fn vsock(config: &Config) -> anyhow::Result<Vec<Figure>> {
    let transfers = if config.quick { 2 } else { 5 };
    let bytes: usize = if config.quick { 4 << 20 } else { 16 << 20 };
    let rounds = if config.quick { 200 } else { 2000 };
    let squib = squib_run(config, transfers, bytes, rounds)?;
    let base = floor(transfers, bytes, rounds)?;
    eprintln!(
        "vsock: squib g2h MB/s {:.1?}, h2g MB/s {:.1?}, rtt {:.1} µs; unix pair g2h {:.1?}, h2g {:.1?}, rtt {:.1} µs",
        squib.g2h, squib.h2g, squib.rtt_us, base.g2h, base.h2g, base.rtt_us
    );
    let extra = json!({
        "bytes_per_transfer": bytes, "transfers": transfers, "rtt_rounds": rounds,
        "squib_g2h_mb_s": squib.g2h, "squib_h2g_mb_s": squib.h2g,
        "floor_g2h_mb_s": base.g2h, "floor_h2g_mb_s": base.h2g,
    });
    Ok(vec![
        Figure::new(
            "vsock_g2h_throughput",
            "guest→host vsock throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.g2h),
            median_f64(&base.g2h),
            FLOOR,
        )
        .with_extra(extra),
        Figure::new(
            "vsock_h2g_throughput",
            "host→guest vsock throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.h2g),
            median_f64(&base.h2g),
            FLOOR,
        ),
        Figure::new(
            "vsock_rtt_1b",
            "1-byte vsock round trip, median (lower is better)",
            "µs",
            Some(squib.rtt_us),
            Some(base.rtt_us),
            FLOOR,
        ),
    ])
}
