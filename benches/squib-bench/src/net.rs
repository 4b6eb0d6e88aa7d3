//! Network: guest→host and host→guest TCP throughput and the 64-byte UDP packet rate through
//! squib's virtio-net device (QEMU's virtio-net on `-netdev vhost-user` → squib's device → TAP
//! with offloads) against QEMU's own `-netdev tap` (vhost=off, as QEMU must run here, with
//! `vnet_hdr=on`: the same offloads), same guest, same argv otherwise (squib's, read from /proc).
//!
//! Both guests run at once, each in a network namespace of its own holding one TAP (10.0.0.1/24
//! on the host side), and take turns: transfer i of one, then transfer i of the other, the first
//! of a pair alternating from round to round (squib first in even rounds, raw QEMU in odd ones),
//! so that both sides see the same machine (other processes, page cache, CPU frequency) and
//! neither always goes first. The guest agent runs the same script in both: before each transfer
//! it waits at a gate (`squib-agent wait`, a connection the host closes when that guest's turn
//! comes), so a guest waiting for its turn sends nothing and the other one runs alone. The host
//! times each transfer itself, from accepting the connection to its end (its EOF guest→host; the
//! guest's close after reading everything host→guest), and checks the byte count. The UDP turn
//! counts the 64-byte datagrams the host receives from the first to the last; the guest's
//! next gate connection marks the end of its sending. Each figure's ratio is the median of the
//! rounds' squib / raw QEMU ratios (a pair shares its moment of the machine; the two sides'
//! own medians, also reported, may come from different moments). Around each turn both sides' scheduler
//! totals (squib and its QEMU; raw QEMU) are read: the CPU a turn costs each, how long its
//! threads waited for a CPU the machine's other load held, how often they were woken per MB
//! (squib's path has one more thread per notification), the rate per CPU second (steadier than
//! the rate when the machine is loaded: it leaves out how much CPU the rest of the machine left
//! a side), the same per thread name (squib's device worker apart from QEMU), and that the side
//! waiting for its turn stays idle. Needs root, /dev/net/tun and `ip`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::Config;
use crate::process::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{self, GuestPaths};
use crate::stats::median_f64;

const HOST_IP: &str = "10.0.0.1";
const TAP: &str = "sqbbench0";
const GATE_PORT: u16 = 5000;
const PORT: u16 = 5001;
const RX_PORT: u16 = 5002;
const UDP_PORT: u16 = 5003;
const UDP_SIZE: usize = 64;
/// Both guests booting (at once, under TCG on a busy machine) until the first gate.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// One turn: a transfer that has not finished by then failed.
const TURN_TIMEOUT: Duration = Duration::from_secs(60);
const RAW_TAP: &str = "raw QEMU with squib's argv, `-netdev vhost-user` replaced by `-netdev tap,vhost=off,vnet_hdr=on` (offloads on) on the same kind of TAP, same guest and agent; both guests run at once and take turns, transfer by transfer";

/// How much each turn moves.
struct Plan {
    /// Rounds of each TCP direction (one turn of each side per round).
    rounds: usize,
    /// Transfers of each direction before those, not counted: the first ones through a fresh
    /// device run colder (TCP windows, caches) on both sides.
    warmup: usize,
    bytes: usize,
    udp_rounds: usize,
    udp_ms: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 6,
                warmup: 1,
                bytes: 32 << 20,
                udp_rounds: 4,
                udp_ms: 1000,
            }
        } else {
            Plan {
                rounds: 16,
                warmup: 1,
                bytes: 32 << 20,
                udp_rounds: 8,
                udp_ms: 1500,
            }
        }
    }

    /// The guest's script, the same for both sides: each transfer behind a gate, and a last
    /// gate so that the end of the last UDP turn is seen like the others.
    /// Transfers of each direction, warm-up included.
    fn transfers(&self) -> usize {
        self.warmup + self.rounds
    }

    fn script(&self) -> String {
        let gate = |text: &mut String, tag: &str| {
            text.push_str(&format!(
                "squib-agent wait {tag} {HOST_IP}:{GATE_PORT} >/dev/null\n"
            ))
        };
        // What the guest's driver negotiated, to compare the two sides' offloads.
        let mut text =
            "echo \"NET-FEATURES $(cat /sys/class/net/eth0/device/features)\"\n".to_string();
        for i in 0..self.transfers() {
            gate(&mut text, &format!("gt{i}"));
            text.push_str(&format!(
                "squib-agent tcp-send t{i} {HOST_IP}:{PORT} {}\n",
                self.bytes
            ));
        }
        for i in 0..self.transfers() {
            gate(&mut text, &format!("gr{i}"));
            text.push_str(&format!("squib-agent tcp-recv r{i} {HOST_IP}:{RX_PORT}\n"));
        }
        for i in 0..self.udp_rounds {
            gate(&mut text, &format!("gu{i}"));
            text.push_str(&format!(
                "squib-agent udp-send u{i} {HOST_IP}:{UDP_PORT} {UDP_SIZE} {}\n",
                self.udp_ms
            ));
        }
        gate(&mut text, "end");
        text
    }
}

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

    /// The host side's sockets, bound in the namespace (by a thread that joined it: a socket
    /// stays in the namespace it was made in, whichever thread uses it later).
    fn bind(&self) -> anyhow::Result<Host> {
        let ns = File::open(format!("/run/netns/{}", self.0)).context("open the netns")?;
        std::thread::spawn(move || {
            // SAFETY: setns on an open network-namespace descriptor; it moves this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(Host {
                gate: TcpListener::bind((HOST_IP, GATE_PORT))?,
                sink: TcpListener::bind((HOST_IP, PORT))?,
                source: TcpListener::bind((HOST_IP, RX_PORT))?,
                udp: UdpSocket::bind((HOST_IP, UDP_PORT))?,
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        .context("host sockets in the netns")
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

/// Waits until one of `fds` is readable; which ones are. Empty after `timeout`.
fn readable<const N: usize>(
    fds: [std::os::fd::BorrowedFd<'_>; N],
    timeout: Duration,
) -> anyhow::Result<[bool; N]> {
    let mut polls = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `polls` is a valid array of N pollfd for the call's duration.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), N as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(polls.map(|p| p.revents != 0));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err).context("poll");
        }
    }
}

fn accept(listener: &TcpListener, timeout: Duration, what: &str) -> anyhow::Result<TcpStream> {
    if !readable([listener.as_fd()], timeout)?[0] {
        bail!("no {what} connection from the guest within {timeout:?}");
    }
    let (stream, _) = listener
        .accept()
        .with_context(|| format!("accept {what}"))?;
    stream.set_read_timeout(Some(TURN_TIMEOUT))?;
    stream.set_write_timeout(Some(TURN_TIMEOUT))?;
    Ok(stream)
}

/// One side's host end: the gate the guest waits at, a sink for guest→host transfers, a source
/// for host→guest ones and a UDP counter.
struct Host {
    gate: TcpListener,
    sink: TcpListener,
    source: TcpListener,
    udp: UdpSocket,
}

impl Host {
    /// Lets the guest run its next command: closes the connection it waits on.
    fn open_gate(&self) -> anyhow::Result<()> {
        drop(accept(&self.gate, TURN_TIMEOUT, "gate")?);
        Ok(())
    }

    /// A guest→host transfer of `bytes`, MB/s from accepting the connection to its EOF.
    fn guest_to_host(&self, bytes: usize) -> anyhow::Result<f64> {
        self.open_gate()?;
        let mut s = accept(&self.sink, TURN_TIMEOUT, "guest→host")?;
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context(format!("guest→host after {got} bytes")),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if got != bytes {
            bail!("guest→host: {got} bytes arrived, {bytes} were sent");
        }
        // Closing (the drop) lets the guest's tcp-send end.
        Ok(bytes as f64 / 1e6 / secs)
    }

    /// A host→guest transfer of `bytes`, MB/s from accepting the connection to the guest's
    /// close, which comes once it has read everything (its count is checked in `check_guest`).
    fn host_to_guest(&self, bytes: usize) -> anyhow::Result<f64> {
        self.open_gate()?;
        let mut s = accept(&self.source, TURN_TIMEOUT, "host→guest")?;
        let started = Instant::now();
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])
                .with_context(|| format!("host→guest after {} bytes", bytes - left))?;
            left -= n;
        }
        s.shutdown(Shutdown::Write)?;
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => bail!("host→guest: the guest sent data"),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("host→guest: waiting for the guest's close"),
            }
        }
        Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
    }

    /// A UDP turn: 64-byte datagrams received per second, from the first to the last. The
    /// guest's next gate connection (after its sender ended) ends the count; the datagrams it
    /// sent before are queued by then (same TAP, same order).
    fn udp_rate(&self) -> anyhow::Result<f64> {
        self.open_gate()?;
        let mut buf = [0u8; 2048];
        let (mut packets, mut first, mut last) = (0u64, None, Instant::now());
        self.udp.set_nonblocking(true)?;
        let mut drain = |packets: &mut u64, first: &mut Option<Instant>, last: &mut Instant| loop {
            match self.udp.recv(&mut buf) {
                Ok(_) => {
                    let now = Instant::now();
                    *packets += 1;
                    first.get_or_insert(now);
                    *last = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("UDP receive"),
            }
        };
        loop {
            let [udp, gate] = readable([self.udp.as_fd(), self.gate.as_fd()], TURN_TIMEOUT)?;
            if !udp && !gate {
                bail!("UDP: nothing from the guest within {TURN_TIMEOUT:?}");
            }
            drain(&mut packets, &mut first, &mut last)?;
            if gate {
                break;
            }
        }
        match first {
            Some(first) if packets > 1 && last > first => {
                Ok((packets - 1) as f64 / (last - first).as_secs_f64())
            }
            _ => bail!("UDP: {packets} datagrams arrived"),
        }
    }
}

/// One side of the comparison: its namespace, host end, VMM process and figures.
struct Side {
    name: &'static str,
    host: Host,
    proc: Proc,
    tx: Vec<f64>,
    rx: Vec<f64>,
    udp: Vec<f64>,
    /// The processes whose CPU time counts for this side, with their role: squib and its
    /// QEMU, or raw QEMU.
    procs: Vec<(&'static str, u32)>,
    /// Per thread name, the scheduler totals of all this side's own turns, per `Kind`; and
    /// those turns' wall time and units moved (MB, or 1,000 datagrams).
    threads: [BTreeMap<String, Sched>; 3],
    turn_wall: [f64; 3],
    turn_units: [f64; 3],
    /// What this side's processes did with the scheduler in each of its own turns, per `Kind`.
    busy: [Vec<Usage>; 3],
    /// CPU (cores) this side's processes used in each of the other side's turns, per `Kind`.
    idle: [Vec<f64>; 3],
    /// The virtio feature bits the guest's driver negotiated (sysfs `features`).
    features: String,
    // Last: the namespace goes after the process in it.
    _ns: Netns,
}

/// Scheduler totals of processes, every thread (`/proc/PID/task/TID/schedstat`, nanoseconds):
/// time on a CPU, time runnable but waiting for one, times put on a CPU.
#[derive(Clone, Copy, Debug, Default)]
struct Sched {
    run: f64,
    wait: f64,
    slices: f64,
}

impl Sched {
    /// Every thread of `procs` (a role and a PID each), by "role/thread name" (threads of one
    /// name summed: QEMU's vCPU thread is `CPU 0/TCG`, its main loop the program's name).
    fn threads(procs: &[(&'static str, u32)]) -> BTreeMap<String, Sched> {
        let mut out: BTreeMap<String, Sched> = BTreeMap::new();
        for (role, pid) in procs {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let v: Vec<f64> = text
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if let [run, wait, slices] = v[..] {
                    let entry = out.entry(format!("{role}/{}", comm.trim())).or_default();
                    entry.run += run / 1e9;
                    entry.wait += wait / 1e9;
                    entry.slices += slices;
                }
            }
        }
        out
    }

    fn total(threads: &BTreeMap<String, Sched>) -> Sched {
        threads.values().fold(Sched::default(), |a, b| Sched {
            run: a.run + b.run,
            wait: a.wait + b.wait,
            slices: a.slices + b.slices,
        })
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            run: self.run - before.run,
            wait: self.wait - before.wait,
            slices: self.slices - before.slices,
        }
    }
}

/// One side's own turn, as the scheduler saw it.
#[derive(Clone, Copy)]
struct Usage {
    /// CPU seconds per second of the turn.
    cores: f64,
    /// Seconds runnable but not running (other processes had the CPUs), per second.
    waiting: f64,
    /// The turn's rate per CPU second: what the side gets out of the CPU it was given,
    /// whatever the rest of the machine left it (TCG guests are CPU-bound).
    per_cpu: f64,
    /// Times a thread was put on a CPU (each wake-up at least), per MB moved (TCP) or per
    /// 1,000 datagrams received (UDP).
    switches: f64,
}

/// What a turn measures.
#[derive(Clone, Copy)]
enum Kind {
    GuestToHost,
    HostToGuest,
    Udp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::GuestToHost => "guest→host",
            Kind::HostToGuest => "host→guest",
            Kind::Udp => "UDP",
        }
    }
}

impl Side {
    fn new(
        name: &'static str,
        host: Host,
        proc: Proc,
        procs: Vec<(&'static str, u32)>,
        ns: Netns,
    ) -> Side {
        Side {
            name,
            host,
            proc,
            tx: Vec::new(),
            rx: Vec::new(),
            udp: Vec::new(),
            procs,
            threads: Default::default(),
            turn_wall: [0.0; 3],
            turn_units: [0.0; 3],
            busy: Default::default(),
            idle: Default::default(),
            features: String::new(),
            _ns: ns,
        }
    }

    /// What the guest printed agrees with the host: no agent error, every host→guest transfer
    /// read whole (bytes and byte sum of the host's 0x5a pattern).
    fn check_guest(&mut self, plan: &Plan) -> anyhow::Result<()> {
        self.proc
            .wait_for_line("SQUIB-SCRIPT-DONE", TURN_TIMEOUT)
            .with_context(|| format!("{}: the guest's script", self.name))?;
        let text = self.proc.tail(100_000);
        if let Some(err) = text.lines().find(|l| l.contains("AGENT-ERROR")) {
            bail!("{}: guest agent: {err}", self.name);
        }
        self.features = text
            .lines()
            .find_map(|l| l.split("NET-FEATURES ").nth(1))
            .map(|f| f.trim().to_string())
            .with_context(|| format!("{}: the guest printed no NET-FEATURES", self.name))?;
        let want_sum = (plan.bytes as u64 * 0x5a) as u32;
        let recv: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("AGENT-TCP-RECV "))
            .collect();
        let whole = recv
            .iter()
            .filter(|l| {
                l.contains(&format!(" bytes={} ", plan.bytes))
                    && l.contains(&format!(" sum={want_sum} "))
            })
            .count();
        let sent = text
            .lines()
            .filter(|l| {
                l.contains("AGENT-TCP-SENT ") && l.contains(&format!(" bytes={} ", plan.bytes))
            })
            .count();
        if whole != plan.transfers() || sent != plan.transfers() {
            bail!(
                "{}: the guest reports {sent} whole guest→host and {whole} whole host→guest transfers of {}, expected {}:\n{}",
                self.name,
                plan.bytes,
                plan.transfers(),
                recv.join("\n")
            );
        }
        Ok(())
    }
}

fn boot_args(script_drive: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 quiet squib.action=wait squib.ip=10.0.0.2/24 squib.script={script_drive}"
    )
}

/// squib in its namespace, its guest started; and the argv it gave QEMU.
fn squib_side(
    config: &Config,
    guest: &GuestPaths,
    dir: &Path,
    script: &Path,
) -> anyhow::Result<(Side, Vec<String>)> {
    let ns = Netns::new("squib")?;
    let host = ns.bind()?;
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
    let squib = Proc::spawn(command)?;
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
    let procs = vec![("squib", squib.pid()), ("QEMU", qemu)];
    Ok((Side::new("squib", host, squib, procs, ns), argv))
}

/// squib's argv with its vhost-user netdev (and the socket chardev to squib's device) swapped for
/// QEMU's own tap backend with the virtio-net header that carries offloads.
fn tap_argv(argv: &[String], qmp: &Path) -> anyhow::Result<Vec<String>> {
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
            out.push(arg.clone());
            out.push(format!(
                "tap,id=net0,ifname={TAP},script=no,downscript=no,vhost=off,vnet_hdr=on"
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

/// Raw QEMU in a namespace of its own, started with squib's argv but QEMU's tap.
fn raw_side(argv: &[String], dir: &Path) -> anyhow::Result<Side> {
    let ns = Netns::new("raw")?;
    let host = ns.bind()?;
    let argv = tap_argv(argv, &dir.join("raw-qmp.sock"))?;
    ns.ip(&["link", "set", TAP, "up"])?;
    let mut command = ns.exec();
    command.args(&argv);
    let qemu = Proc::spawn(command)?;
    // `ip netns exec` execs QEMU in place: the child is QEMU.
    let procs = vec![("QEMU", qemu.pid())];
    Ok(Side::new("raw QEMU", host, qemu, procs, ns))
}

/// The pair's order in round `i`: squib first in even rounds, raw QEMU first in odd ones.
fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// All turns, interleaved; per-transfer figures (warm-up first) land in each side.
fn measure(sides: &mut [Side; 2], plan: &Plan) -> anyhow::Result<()> {
    // Both booted and idle at their first gate: neither's first turn runs beside a boot.
    for side in sides.iter() {
        if !readable([side.host.gate.as_fd()], BOOT_TIMEOUT)?[0] {
            bail!(
                "{}: the guest did not reach its first gate within {BOOT_TIMEOUT:?}:\n{}",
                side.name,
                side.proc.tail(15)
            );
        }
    }
    for (kind, count) in [
        (Kind::GuestToHost, plan.transfers()),
        (Kind::HostToGuest, plan.transfers()),
        (Kind::Udp, plan.udp_rounds),
    ] {
        for i in 0..count {
            for k in order(i) {
                turn(sides, k, kind, plan.bytes)
                    .with_context(|| format!("{}: {} turn {i}", sides[k].name, kind.name()))?;
            }
        }
    }
    for side in sides.iter_mut() {
        side.host.open_gate()?;
        side.check_guest(plan)?;
    }
    Ok(())
}

/// Side `k`'s turn of `kind`; both sides' CPU use around it.
fn turn(sides: &mut [Side; 2], k: usize, kind: Kind, bytes: usize) -> anyhow::Result<()> {
    let before = [
        Sched::threads(&sides[0].procs),
        Sched::threads(&sides[1].procs),
    ];
    let started = Instant::now();
    let host = &sides[k].host;
    let rate = match kind {
        Kind::GuestToHost => host.guest_to_host(bytes)?,
        Kind::HostToGuest => host.host_to_guest(bytes)?,
        Kind::Udp => host.udp_rate()?,
    };
    let wall = started.elapsed().as_secs_f64();
    let after = [
        Sched::threads(&sides[0].procs),
        Sched::threads(&sides[1].procs),
    ];
    let own = Sched::total(&after[k]).since(Sched::total(&before[k]));
    let per = match kind {
        Kind::Udp => rate * wall / 1000.0,
        _ => bytes as f64 / 1e6,
    };
    let usage = Usage {
        cores: own.run / wall,
        waiting: own.wait / wall,
        switches: own.slices / per,
        per_cpu: rate / (own.run / wall),
    };
    let side = &mut sides[k];
    match kind {
        Kind::GuestToHost => side.tx.push(rate),
        Kind::HostToGuest => side.rx.push(rate),
        Kind::Udp => side.udp.push(rate),
    }
    side.busy[kind as usize].push(usage);
    for (name, now) in &after[k] {
        let then = before[k].get(name).copied().unwrap_or_default();
        let d = now.since(then);
        let sum = side.threads[kind as usize].entry(name.clone()).or_default();
        sum.run += d.run;
        sum.wait += d.wait;
        sum.slices += d.slices;
    }
    side.turn_wall[kind as usize] += wall;
    side.turn_units[kind as usize] += per;
    let other = Sched::total(&after[1 - k]).since(Sched::total(&before[1 - k]));
    sides[1 - k].idle[kind as usize].push(other.run / wall);
    Ok(())
}

/// squib / raw QEMU of each round's pair.
fn pair_ratios(squib: &[f64], raw: &[f64]) -> Vec<f64> {
    squib.iter().zip(raw).map(|(s, r)| s / r).collect()
}

fn ratio_of_medians(squib: &[f64], raw: &[f64]) -> Option<f64> {
    Some(median_f64(squib)? / median_f64(raw)?)
}

fn round2(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

pub fn net(config: &Config) -> anyhow::Result<Vec<Figure>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
        bail!("the net section needs root and /dev/net/tun");
    }
    let plan = Plan::new(config.quick);
    let guest = scenarios::guest()?;
    let dir = tempfile::Builder::new()
        .prefix("squib-bench-net-")
        .tempdir()?;
    let script = dir.path().join("script.img");
    let mut raw = plan.script().into_bytes();
    raw.resize(raw.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&script, raw)?;

    // Both boot now, one right after the other; the turns start when both wait at a gate.
    let (squib, argv) = squib_side(config, &guest, dir.path(), &script)?;
    let qemu = raw_side(&argv, dir.path())?;
    let mut sides = [squib, qemu];
    let measured = measure(&mut sides, &plan);
    for side in &mut sides {
        side.proc.stop(Duration::from_secs(5));
    }
    measured?;
    let [squib, qemu] = &sides;
    let w = plan.warmup;
    eprintln!(
        "net: {w} warm-up + {} rounds of {} MiB each way, {} UDP turns of {} ms; each round one turn of each, squib first in even rounds, raw QEMU first in odd ones",
        plan.rounds,
        plan.bytes >> 20,
        plan.udp_rounds,
        plan.udp_ms
    );
    for (what, s, r) in [
        ("guest→host MB/s", &squib.tx[w..], &qemu.tx[w..]),
        ("host→guest MB/s", &squib.rx[w..], &qemu.rx[w..]),
        ("UDP 64 B packets/s", &squib.udp[..], &qemu.udp[..]),
    ] {
        eprintln!(
            "net: {what}: squib {:.1?}, raw QEMU tap {:.1?}; per-round squib/raw {:.2?}, median {:.2}",
            s,
            r,
            pair_ratios(s, r),
            median_f64(&pair_ratios(s, r)).unwrap_or(f64::NAN)
        );
    }
    eprintln!(
        "net: warm-up (not counted): guest→host squib {:.1?} raw {:.1?}, host→guest squib {:.1?} raw {:.1?}",
        &squib.tx[..w],
        &qemu.tx[..w],
        &squib.rx[..w],
        &qemu.rx[..w]
    );
    let skip = |kind: Kind| if matches!(kind, Kind::Udp) { 0 } else { w };
    let cpu = |kind: Kind| {
        let i = kind as usize;
        let m = |v: &[f64]| median_f64(&v[skip(kind)..]).unwrap_or(f64::NAN);
        let own =
            |side: &Side, f: fn(&Usage) -> f64| m(&side.busy[i].iter().map(f).collect::<Vec<_>>());
        let field = |f: fn(&Usage) -> f64| [own(squib, f), own(qemu, f)];
        (
            field(|u| u.cores),
            field(|u| u.waiting),
            field(|u| u.switches),
            [m(&squib.idle[i]), m(&qemu.idle[i])],
            field(|u| u.per_cpu),
        )
    };
    for kind in [Kind::GuestToHost, Kind::HostToGuest, Kind::Udp] {
        let (cores, waiting, switches, idle, per_cpu) = cpu(kind);
        let (unit, rate) = if matches!(kind, Kind::Udp) {
            ("1,000 datagrams", "datagrams")
        } else {
            ("MB", "MB")
        };
        eprintln!(
            "net: {} (medians, squib+QEMU vs raw QEMU): {:.0} vs {:.0} {rate} per CPU second; own turns use {:.2} vs {:.2} cores, wait {:.2} vs {:.2} s/s for a CPU, are put on a CPU {:.0} vs {:.0} times per {unit}; the other's turns {:.2} vs {:.2} cores",
            kind.name(),
            per_cpu[0],
            per_cpu[1],
            cores[0],
            cores[1],
            waiting[0],
            waiting[1],
            switches[0],
            switches[1],
            idle[0],
            idle[1]
        );
    }
    // Where each side's CPU and wake-ups go, thread by thread, over all its own turns.
    let by_thread = |side: &Side, kind: Kind| {
        let i = kind as usize;
        let mut rows: Vec<(String, f64, f64)> = side.threads[i]
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.run / side.turn_wall[i],
                    t.slices / side.turn_units[i],
                )
            })
            .filter(|(_, cores, per)| *cores >= 0.01 || *per >= 1.0)
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    };
    for kind in [Kind::GuestToHost, Kind::HostToGuest, Kind::Udp] {
        for side in [squib, qemu] {
            let rows: Vec<String> = by_thread(side, kind)
                .iter()
                .map(|(name, cores, per)| format!("{name} {cores:.2} cores {per:.0}×"))
                .collect();
            eprintln!(
                "net: {} threads of {} (cores, times put on a CPU per {}): {}",
                kind.name(),
                side.name,
                if matches!(kind, Kind::Udp) {
                    "1,000 datagrams"
                } else {
                    "MB"
                },
                rows.join(", ")
            );
        }
    }
    let threads_json = |kind: Kind| {
        let rows = |side: &Side| {
            by_thread(side, kind)
                .into_iter()
                .map(|(name, cores, per)| {
                    (
                        name,
                        json!([(cores * 100.0).round() / 100.0, (per * 10.0).round() / 10.0]),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        };
        json!({ "squib": rows(squib), "raw_tap": rows(qemu) })
    };
    let cpu_json = |kind: Kind| {
        let (cores, waiting, switches, idle, per_cpu) = cpu(kind);
        let r = |v: [f64; 2]| v.map(|x| (x * 100.0).round() / 100.0);
        json!({
            "order": ["squib", "raw_tap"],
            "rate_per_cpu_second": r(per_cpu),
            "cores_own_turn": r(cores),
            "runqueue_wait_own_turn": r(waiting),
            "scheduled_in_per_unit_own_turn": r(switches),
            "unit": if matches!(kind, Kind::Udp) { "1000 datagrams" } else { "MB" },
            "cores_other_turn": r(idle),
            "threads_cores_and_scheduled_in_per_unit": threads_json(kind),
        })
    };
    if squib.features != qemu.features {
        eprintln!(
            "net: the guests negotiated different virtio-net features (bit i = character i):\n  squib    {}\n  raw QEMU {}",
            squib.features, qemu.features
        );
    }
    let extra = |s: &[f64], r: &[f64], kind: Kind| {
        json!({
            "cpu": cpu_json(kind),
            "bytes_per_transfer": plan.bytes,
            "rounds": plan.rounds,
            "warmup_transfers": w,
            "squib": round2(&s[w..]),
            "raw_tap": round2(&r[w..]),
            "squib_warmup": round2(&s[..w]),
            "raw_tap_warmup": round2(&r[..w]),
            "pair_ratios": round2(&pair_ratios(&s[w..], &r[w..])),
            "median_pair_ratio": median_f64(&pair_ratios(&s[w..], &r[w..])),
            "ratio_of_medians": ratio_of_medians(&s[w..], &r[w..]),
            "guest_features_squib": squib.features,
            "guest_features_raw_tap": qemu.features,
        })
    };
    Ok(vec![
        Figure::new(
            "net_tx_throughput",
            "guest→host TCP throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.tx[w..]),
            median_f64(&qemu.tx[w..]),
            RAW_TAP,
        )
        .with_extra(extra(&squib.tx, &qemu.tx, Kind::GuestToHost))
        .with_paired_ratio(median_f64(&pair_ratios(&squib.tx[w..], &qemu.tx[w..]))),
        Figure::new(
            "net_rx_throughput",
            "host→guest TCP throughput, median (higher is better)",
            "MB/s",
            median_f64(&squib.rx[w..]),
            median_f64(&qemu.rx[w..]),
            RAW_TAP,
        )
        .with_extra(extra(&squib.rx, &qemu.rx, Kind::HostToGuest))
        .with_paired_ratio(median_f64(&pair_ratios(&squib.rx[w..], &qemu.rx[w..]))),
        Figure::new(
            "net_udp_small_pps",
            "guest→host 64-byte UDP datagrams received by the host, per second, median (higher is better)",
            "packets/s",
            median_f64(&squib.udp),
            median_f64(&qemu.udp),
            RAW_TAP,
        )
        .with_extra(json!({
            "size": UDP_SIZE,
            "send_ms": plan.udp_ms,
            "rounds": plan.udp_rounds,
            "squib": squib.udp.iter().map(|v| v.round()).collect::<Vec<_>>(),
            "raw_tap": qemu.udp.iter().map(|v| v.round()).collect::<Vec<_>>(),
            "pair_ratios": round2(&pair_ratios(&squib.udp, &qemu.udp)),
            "median_pair_ratio": median_f64(&pair_ratios(&squib.udp, &qemu.udp)),
            "ratio_of_medians": ratio_of_medians(&squib.udp, &qemu.udp),
            "cpu": cpu_json(Kind::Udp),
        }))
        .with_paired_ratio(median_f64(&pair_ratios(&squib.udp, &qemu.udp))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_goes_first_equally_often() {
        for quick in [true, false] {
            let plan = Plan::new(quick);
            let squib_first = (plan.warmup..plan.transfers())
                .filter(|&i| order(i)[0] == 0)
                .count();
            assert_eq!(squib_first * 2, plan.rounds, "quick={quick}");
            let udp_first = (0..plan.udp_rounds).filter(|&i| order(i)[0] == 0).count();
            assert_eq!(udp_first * 2, plan.udp_rounds, "quick={quick}");
        }
    }

    #[test]
    fn every_command_of_the_script_waits_at_a_gate() {
        let plan = Plan::new(true);
        let script = plan.script();
        let lines: Vec<&str> = script.lines().skip(1).collect();
        let commands = 2 * plan.transfers() + plan.udp_rounds;
        assert_eq!(lines.len(), 2 * commands + 1);
        for pair in lines[..2 * commands].chunks(2) {
            assert!(pair[0].starts_with("squib-agent wait "), "{pair:?}");
            assert!(!pair[1].starts_with("squib-agent wait "), "{pair:?}");
        }
        assert!(lines[2 * commands].starts_with("squib-agent wait end "));
        let sends = format!("tcp-send t0 {HOST_IP}:{PORT} {}", plan.bytes);
        assert!(script.contains(&sends));
    }

    #[test]
    fn the_baseline_gets_qemus_tap_with_the_vnet_header() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-qmp",
            "unix:/run/vm/qmp.sock,server=on,wait=off",
            "-chardev",
            "socket,id=net0chr,path=/run/vm/net0.sock",
            "-netdev",
            "vhost-user,id=net0,chardev=net0chr",
            "-device",
            "virtio-net-device,netdev=net0,mac=06:00:0a:00:00:02",
        ]
        .map(String::from)
        .to_vec();
        let raw = tap_argv(&argv, Path::new("/tmp/q.sock")).unwrap();
        assert!(
            !raw.iter()
                .any(|a| a.contains("net0chr") || a.contains("vhost-user"))
        );
        let netdev = raw.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(
            raw[netdev + 1],
            format!("tap,id=net0,ifname={TAP},script=no,downscript=no,vhost=off,vnet_hdr=on")
        );
        assert!(raw.contains(&"virtio-net-device,netdev=net0,mac=06:00:0a:00:00:02".to_string()));
    }
}
