//! Network: guest→host and host→guest TCP throughput and the 64-byte UDP packet rate through
//! squib's virtio-net device (QEMU's virtio-net on `-netdev vhost-user` → squib's device → TAP
//! with offloads) against QEMU's own `-netdev tap` (vhost=off, as QEMU must run here), same
//! guest, same argv otherwise (squib's, read from /proc), same run.
//!
//! Each side boots once in a network namespace of its own holding one TAP (10.0.0.1/24 on the
//! host side); the guest agent sends `bytes` to a sink on the host side `transfers` times, then
//! receives `bytes` from the host `transfers` times, printing how long each took, then sends
//! 64-byte datagrams as fast as it can for 3 s, which the host counts. Needs root,
//! /dev/net/tun and `ip`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::Config;
use crate::process::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, GuestPaths};
use crate::stats::median_f64;

const HOST_IP: &str = "10.0.0.1";
const TAP: &str = "sqbbench0";
const PORT: u16 = 5001;
const RX_PORT: u16 = 5002;
const UDP_PORT: u16 = 5003;
const UDP_SIZE: usize = 64;
const UDP_MS: u64 = 3000;
const TIMEOUT: Duration = Duration::from_secs(180);
const RAW_TAP: &str = "raw QEMU with squib's argv, `-netdev vhost-user` replaced by `-netdev tap,vhost=off` (offloads on) on the same kind of TAP, same guest and agent";

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> anyhow::Result<Netns> {
        let name = format!("sqbbench-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["-n", &self.0]).args(args))
    }

    /// The host side, in threads that joined the namespace: a sink for `count` guest→host
    /// connections, a source of `bytes` for `count` host→guest ones, and a UDP counter whose
    /// result (datagrams, seconds from the first to the last) comes on the returned channel.
    fn serve(
        &self,
        count: usize,
        bytes: usize,
    ) -> anyhow::Result<std::sync::mpsc::Receiver<(u64, f64)>> {
        let ns = File::open(format!("/run/netns/{}", self.0)).context("open the netns")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (udp_tx, udp_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on an open network-namespace descriptor; it moves this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let bound = (|| {
                Ok::<_, std::io::Error>((
                    TcpListener::bind((HOST_IP, PORT))?,
                    TcpListener::bind((HOST_IP, RX_PORT))?,
                    std::net::UdpSocket::bind((HOST_IP, UDP_PORT))?,
                ))
            })();
            let (sink, source, udp) = match bound {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 1 << 16];
                for _ in 0..count {
                    let Ok((mut s, _)) = source.accept() else {
                        return;
                    };
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                        left -= n;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let (mut packets, mut first, mut last) = (0u64, None, None);
                let _ = udp.set_read_timeout(Some(TIMEOUT));
                while udp.recv(&mut buf).is_ok() {
                    let now = std::time::Instant::now();
                    packets += 1;
                    first.get_or_insert(now);
                    last = Some(now);
                    // The sender stops after UDP_MS: two idle seconds end the count.
                    let _ = udp.set_read_timeout(Some(Duration::from_secs(2)));
                }
                let secs = match (first, last) {
                    (Some(f), Some(l)) => (l - f).as_secs_f64(),
                    _ => 0.0,
                };
                let _ = udp_tx.send((packets, secs));
            });
            let mut buf = vec![0u8; 1 << 16];
            for _ in 0..count {
                let Ok((mut s, _)) = sink.accept() else {
                    return;
                };
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("host threads")?
            .context("host sockets in the netns")?;
        Ok(udp_rx)
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// What one run measured: MB/s of each guest→host and host→guest transfer, and the rate of
/// 64-byte datagrams the host received.
struct Measured {
    tx: Vec<f64>,
    rx: Vec<f64>,
    udp_pps: f64,
}

fn measure(
    proc: &Proc,
    transfers: usize,
    bytes: usize,
    udp: &std::sync::mpsc::Receiver<(u64, f64)>,
) -> anyhow::Result<Measured> {
    proc.wait_for_line("SQUIB-SCRIPT-DONE", TIMEOUT)?;
    let text = proc.tail(10_000);
    if let Some(err) = text.lines().find(|l| l.contains("AGENT-ERROR")) {
        bail!("guest agent: {err}");
    }
    let rates = |marker: &str| -> anyhow::Result<Vec<f64>> {
        let out: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split(marker).nth(1))
            .filter_map(|rest| rest.split_whitespace().find_map(|w| w.strip_prefix("ms=")))
            .filter_map(|ms| ms.parse::<f64>().ok())
            .map(|ms| bytes as f64 / 1e6 / (ms.max(1.0) / 1000.0))
            .collect();
        if out.len() != transfers {
            bail!(
                "expected {transfers} {marker}lines, got {}:\n{}",
                out.len(),
                proc.tail(20)
            );
        }
        Ok(out)
    };
    let (packets, secs) = udp.recv_timeout(TIMEOUT).context("the host's UDP count")?;
    Ok(Measured {
        tx: rates("AGENT-TCP-SENT ")?,
        rx: rates("AGENT-TCP-RECV ")?,
        udp_pps: if secs > 0.0 {
            packets as f64 / secs
        } else {
            0.0
        },
    })
}

fn boot_args(script_drive: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 quiet squib.action=wait squib.ip=10.0.0.2/24 squib.script={script_drive}"
    )
}

fn squib_run(
    config: &Config,
    guest: &GuestPaths,
    dir: &Path,
    script: &Path,
    transfers: usize,
    bytes: usize,
) -> anyhow::Result<(Measured, Vec<String>)> {
    let ns = Netns::new("squib")?;
    let udp = ns.serve(transfers, bytes)?;
    let socket = dir.join("api.sock");
    let mut command = ns.exec();
    command
        .arg(&config.squib)
        .arg("--api-sock")
        .arg(&socket)
        .arg("--log-path")
        .arg(dir.join("squib.log"))
        .args(["--id", "bench-net"]);
    if std::env::var_os("SQUIB_ACCEL").is_none() {
        command.env("SQUIB_ACCEL", "tcg");
    }
    let mut squib = Proc::spawn(command)?;
    process::wait_answering(&socket, Duration::from_secs(10))?;
    let put =
        |path: &str, body: String| process::api_expect(&socket, "PUT", path, Some(&body), 204);
    put(
        "/boot-source",
        json!({"kernel_image_path": guest.kernel, "initrd_path": guest.initrd, "boot_args": boot_args("/dev/vda")})
            .to_string(),
    )?;
    put(
        "/drives/script",
        json!({"drive_id":"script","path_on_host":script,"is_root_device":false,"is_read_only":true})
            .to_string(),
    )?;
    put(
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":256}"#.to_string(),
    )?;
    put(
        "/network-interfaces/eth0",
        json!({"iface_id":"eth0","host_dev_name":TAP,"guest_mac":"06:00:0a:00:00:02"}).to_string(),
    )?;
    ns.ip(&["link", "set", TAP, "up"])?;
    put("/actions", r#"{"action_type":"InstanceStart"}"#.to_string())?;
    let qemu = match process::children(squib.pid()).as_slice() {
        [pid] => *pid,
        other => bail!("expected one QEMU child of squib, found {other:?}"),
    };
    let argv = process::cmdline(qemu)?;
    let result = measure(&squib, transfers, bytes, &udp);
    squib.stop(Duration::from_secs(5));
    Ok((result?, argv))
}

/// squib's argv with its vhost-user netdev (and the socket chardev to squib's device) swapped for
/// QEMU's own tap backend, with or without the virtio-net header that carries offloads.
fn tap_argv(argv: &[String], qmp: &Path, offloads: bool) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(argv.len());
    let mut args = argv.iter();
    let mut swapped = false;
    while let Some(arg) = args.next() {
        let next = args.as_slice().first();
        if arg == "-chardev" && next.is_some_and(|v| v.starts_with("socket,id=net0chr,")) {
            args.next();
            continue;
        }
        if arg == "-netdev" && next.is_some_and(|v| v.starts_with("vhost-user,id=net0,")) {
            args.next();
            let vnet_hdr = if offloads { "on" } else { "off" };
            out.push(arg.clone());
            out.push(format!(
                "tap,id=net0,ifname={TAP},script=no,downscript=no,vhost=off,vnet_hdr={vnet_hdr}"
            ));
            swapped = true;
            continue;
        }
        out.push(arg.clone());
    }
    if !swapped {
        bail!("squib's QEMU argv has no vhost-user netdev net0");
    }
    scenarios::raw_argv(&out, qmp)
}

fn raw_run(
    argv: &[String],
    dir: &Path,
    transfers: usize,
    bytes: usize,
    offloads: bool,
) -> anyhow::Result<Measured> {
    let ns = Netns::new(if offloads { "raw" } else { "rawnv" })?;
    let udp = ns.serve(transfers, bytes)?;
    let argv = tap_argv(argv, &dir.join("raw-qmp.sock"), offloads)?;
    ns.ip(&["link", "set", TAP, "up"])?;
    let mut command = ns.exec();
    command.args(&argv);
    let mut qemu = Proc::spawn(command)?;
    let result = measure(&qemu, transfers, bytes, &udp);
    qemu.stop(Duration::from_secs(5));
    result
}

pub fn net(config: &Config) -> anyhow::Result<Vec<Figure>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
        bail!("the net section needs root and /dev/net/tun");
    }
    let transfers = if config.quick { 2 } else { 5 };
    let bytes: usize = if config.quick { 4 << 20 } else { 16 << 20 };
    let guest = scenarios::guest()?;
    let dir = tempfile::Builder::new()
        .prefix("squib-bench-net-")
        .tempdir()?;
    let script = dir.path().join("script.img");
    let mut text = String::new();
    for i in 0..transfers {
        text.push_str(&format!(
            "squib-agent tcp-send t{i} {HOST_IP}:{PORT} {bytes}\n"
        ));
    }
    for i in 0..transfers {
        text.push_str(&format!("squib-agent tcp-recv r{i} {HOST_IP}:{RX_PORT}\n"));
    }
    text.push_str(&format!(
        "squib-agent udp-send u {HOST_IP}:{UDP_PORT} {UDP_SIZE} {UDP_MS}\n"
    ));
    let mut raw = text.into_bytes();
    raw.resize(raw.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&script, raw)?;

    let (squib, argv) = squib_run(config, &guest, dir.path(), &script, transfers, bytes)?;
    let qemu = raw_run(&argv, dir.path(), transfers, bytes, true)?;
    eprintln!(
        "net: squib tx MB/s {:.1?} rx MB/s {:.1?} udp pps {:.0}; raw QEMU tap tx MB/s {:.1?} rx MB/s {:.1?} udp pps {:.0}",
        squib.tx, squib.rx, squib.udp_pps, qemu.tx, qemu.rx, qemu.udp_pps
    );
    Ok(vec![
        Figure::new(
            "net_tx_throughput",
            "guest→host TCP throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.tx),
            median_f64(&qemu.tx),
            RAW_TAP,
        )
        .with_extra(json!({
            "bytes_per_transfer": bytes,
            "transfers": transfers,
            "squib_mb_s": squib.tx,
            "raw_tap_mb_s": qemu.tx,
        })),
        Figure::new(
            "net_rx_throughput",
            "host→guest TCP throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.rx),
            median_f64(&qemu.rx),
            RAW_TAP,
        )
        .with_extra(json!({ "squib_mb_s": squib.rx, "raw_tap_mb_s": qemu.rx })),
        Figure::new(
            "net_udp_small_pps",
            "guest→host 64-byte UDP datagrams received by the host, per second (higher is better)",
            "packets/s",
            Some(squib.udp_pps),
            Some(qemu.udp_pps),
            RAW_TAP,
        )
        .with_extra(json!({ "size": UDP_SIZE, "send_ms": UDP_MS })),
    ])
}
