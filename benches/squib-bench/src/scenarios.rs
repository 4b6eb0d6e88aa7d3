//! The measurements. Each returns its figures, or an error when it could not be taken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::Config;
use crate::load::{self, Conn, Request};
use crate::process::{self, Proc};
use crate::report::Figure;
use crate::stats::{median, median_u64, quantile};

const FLOOR: &str = "floor: bare hyper HTTP/1.1 server on a Unix socket (default tokio runtime, 2 workers), fixed 96-byte body, same load generator";
const TRUE: &str = "exec of /bin/true until it is reaped (wait4 rusage for CPU)";
const FLOOR_EXEC: &str =
    "exec of the floor server until its socket answers GET / (CPU: SIGKILL then wait4 rusage)";
const RAW_QEMU: &str = "raw QEMU with the argv squib built (read from /proc/<pid>/cmdline), -S stripped, fresh QMP socket, same guest";
const IDLE_GET: &str =
    "the same paced GET / loop on the same squib just before InstanceStart (idle)";

pub const GUEST_MARKER: &str = "SQUIB-GUEST-INIT-OK";
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const MACHINE_CONFIG: &str = r#"{"vcpu_count":1,"mem_size_mib":256}"#;

fn us(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| n as f64 / 1000.0)
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// squib with its API socket and its log file (`--log-path`) beside each other. The log goes
/// to a file so that stdout carries only the guest console: squib's log and the console share
/// stdout otherwise, and a busy API log splits console lines mid-line.
pub(crate) fn squib_command(config: &Config, socket: &Path, id: &str) -> Command {
    let mut command = Command::new(&config.squib);
    command
        .arg("--api-sock")
        .arg(socket)
        .arg("--log-path")
        .arg(log_path(socket))
        .args(["--id", id]);
    if std::env::var_os("SQUIB_ACCEL").is_none() {
        command.env("SQUIB_ACCEL", "tcg");
    }
    command
}

fn log_path(socket: &Path) -> PathBuf {
    socket.with_extension("log")
}

/// The last lines of squib's log, for error messages.
pub(crate) fn log_tail(socket: &Path) -> String {
    let text = std::fs::read_to_string(log_path(socket)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn floor_command(socket: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("floor-server").arg("--api-sock").arg(socket);
    Ok(command)
}

/// A server started and answering.
pub(crate) fn start_server(command: Command, socket: &Path) -> anyhow::Result<Proc> {
    let proc = Proc::spawn(command)?;
    if let Err(e) = process::wait_answering(socket, SOCKET_TIMEOUT) {
        bail!(
            "{e:#}; output:\n{}\nlog:\n{}",
            proc.tail(20),
            log_tail(socket)
        );
    }
    Ok(proc)
}

#[derive(Default)]
struct Pool {
    /// Requests answered, warm-up included.
    completed: u64,
    latencies: Vec<u64>,
    throughputs: Vec<u64>,
}

// ------------------------------------------------------------------------------------------
// API latency and throughput, plus the servers' memory.

pub fn api(config: &Config, runtime: &Runtime) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("squib-bench-").tempdir()?;
    let floor_socket = dir.path().join("floor.sock");
    let squib_socket = dir.path().join("squib.sock");
    let floor = start_server(floor_command(&floor_socket)?, &floor_socket)?;
    let squib = start_server(
        squib_command(config, &squib_socket, "bench-api"),
        &squib_socket,
    )?;
    // The same squib with its per-request log lines off: tells the logger's share apart.
    let quiet_socket = dir.path().join("quiet.sock");
    let mut quiet_command = squib_command(config, &quiet_socket, "bench-api-quiet");
    quiet_command.args(["--level", "Error"]);
    let quiet = start_server(quiet_command, &quiet_socket)?;
    // Let them settle, then read their idle memory.
    std::thread::sleep(Duration::from_millis(200));
    let floor_idle = process::rss_kib(floor.pid())?;
    let squib_idle = process::rss_kib(squib.pid())?;

    let cases = [
        (Request::new("GET", "/", None), 200, "get_root"),
        (
            Request::new("GET", "/vm/config", None),
            200,
            "get_vm_config",
        ),
        (
            Request::new("PUT", "/machine-config", Some(MACHINE_CONFIG)),
            204,
            "put_machine_config",
        ),
    ];
    // Targets: 0 the floor, 1 squib, 2 squib --level Error (GET / only).
    const NAMES: [&str; 3] = ["the floor", "squib", "squib --level Error"];
    let mut pools: BTreeMap<(usize, usize, usize), Pool> = BTreeMap::new();
    for round in 0..config.api_rounds {
        for (case, (request, expect, _)) in cases.iter().enumerate() {
            for conns in [1usize, 16] {
                // Rotate which server goes first, so drift in machine load evens out.
                let targets = if case == 0 { 3 } else { 2 };
                for k in 0..targets {
                    let target = (round + case + k) % targets;
                    let (socket, expect) = match target {
                        0 => (&floor_socket, 200),
                        1 => (&squib_socket, *expect),
                        _ => (&quiet_socket, *expect),
                    };
                    let result = runtime
                        .block_on(load::run(
                            socket.clone(),
                            request.clone(),
                            expect,
                            conns,
                            config.api_warmup,
                            config.api_duration,
                        ))
                        .with_context(|| {
                            format!(
                                "{} with {conns} connection(s) against {}",
                                request.label, NAMES[target]
                            )
                        })?;
                    let pool = pools.entry((case, conns, target)).or_default();
                    pool.completed += result.completed;
                    pool.latencies.extend(result.latencies_ns);
                    pool.throughputs.push(result.throughput as u64);
                }
            }
        }
    }
    let floor_loaded = process::rss_kib(floor.pid())?;
    let squib_loaded = process::rss_kib(squib.pid())?;
    let log_bytes = std::fs::metadata(log_path(&squib_socket)).map_or(0, |m| m.len());
    drop(quiet);
    drop(squib);
    drop(floor);

    let squib_requests: u64 = pools
        .iter()
        .filter(|((_, _, target), _)| *target == 1)
        .map(|(_, p)| p.completed)
        .sum();
    let mut figures = Vec::new();
    for (case, (request, _, id)) in cases.iter().enumerate() {
        for conns in [1usize, 16] {
            let mut s = std::mem::take(pools.entry((case, conns, 1)).or_default());
            let mut f = std::mem::take(pools.entry((case, conns, 0)).or_default());
            s.latencies.sort_unstable();
            f.latencies.sort_unstable();
            let conn_text = if conns == 1 {
                "1 conn".to_string()
            } else {
                format!("{conns} conns")
            };
            let extra = json!({
                "samples_squib": s.latencies.len(),
                "samples_baseline": f.latencies.len(),
                "max_us_squib": us(s.latencies.last().copied()),
                "max_us_baseline": us(f.latencies.last().copied()),
            });
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                figures.push(
                    Figure::new(
                        format!("api.{id}.c{conns}.{name}"),
                        format!("{} {name}, {conn_text}", request.label),
                        "µs",
                        us(quantile(&s.latencies, q)),
                        us(quantile(&f.latencies, q)),
                        FLOOR,
                    )
                    .with_extra(extra.clone()),
                );
            }
            figures.push(
                Figure::new(
                    format!("api.{id}.c{conns}.throughput"),
                    format!("{} throughput, {conn_text}", request.label),
                    "req/s",
                    median_u64(&s.throughputs).map(|v| v as f64),
                    median_u64(&f.throughputs).map(|v| v as f64),
                    FLOOR,
                )
                .with_extra(json!({
                    "rounds_squib": s.throughputs,
                    "rounds_baseline": f.throughputs,
                })),
            );
        }
    }
    // GET / from squib with its log at Error level, against the same floor.
    let mut q1 = std::mem::take(pools.entry((0, 1, 2)).or_default());
    q1.latencies.sort_unstable();
    let q16 = std::mem::take(pools.entry((0, 16, 2)).or_default());
    let floor_p99_1 = figures
        .iter()
        .find(|f| f.id == "api.get_root.c1.p99")
        .and_then(|f| f.baseline);
    let floor_tput_16 = figures
        .iter()
        .find(|f| f.id == "api.get_root.c16.throughput")
        .and_then(|f| f.baseline);
    figures.push(Figure::new(
        "api.get_root.c1.p99.log_error",
        "GET / p99, 1 conn, squib --level Error",
        "µs",
        us(quantile(&q1.latencies, 0.99)),
        floor_p99_1,
        FLOOR,
    ));
    figures.push(
        Figure::new(
            "api.get_root.c16.throughput.log_error",
            "GET / throughput, 16 conns, squib --level Error",
            "req/s",
            median_u64(&q16.throughputs).map(|v| v as f64),
            floor_tput_16,
            FLOOR,
        )
        .with_extra(json!({"rounds_squib": q16.throughputs})),
    );
    figures.push(
        Figure::new(
            "api.log_bytes_per_request",
            "squib log written per API request (--log-path file)",
            "bytes",
            Some(log_bytes as f64 / squib_requests.max(1) as f64),
            None,
            "",
        )
        .informational()
        .with_extra(json!({"log_bytes": log_bytes, "measured_requests": squib_requests})),
    );
    figures.push(Figure::new(
        "mem.squib.idle",
        "squib RSS, idle before boot (fresh, unconfigured)",
        "MiB",
        mib(Some(squib_idle)),
        mib(Some(floor_idle)),
        "floor server RSS at the same point",
    ));
    figures.push(Figure::new(
        "mem.squib.after_api_load",
        "squib RSS after the API load",
        "MiB",
        mib(Some(squib_loaded)),
        mib(Some(floor_loaded)),
        "floor server RSS at the same point",
    ));
    Ok(figures)
}

// ------------------------------------------------------------------------------------------
// Exec → API socket answering its first request.

struct StartSample {
    wall: Duration,
    cpu: Duration,
}

/// Starts a server, waits for its first answer, SIGKILLs it and reaps it for its CPU time.
fn exec_server(mut command: Command, socket: &Path) -> anyhow::Result<StartSample> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    process::die_with_parent(&mut command);
    let t0 = Instant::now();
    let child = command.spawn()?;
    let pid = child.id();
    let answered = process::wait_answering(socket, SOCKET_TIMEOUT);
    process::signal(pid, libc::SIGKILL);
    let cpu = process::wait_cpu(pid)?;
    let wall = answered? - t0;
    std::fs::remove_file(socket).ok();
    Ok(StartSample { wall, cpu })
}

fn exec_true() -> anyhow::Result<StartSample> {
    let mut command = Command::new("/bin/true");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let child = command.spawn().context("exec /bin/true")?;
    let cpu = process::wait_cpu(child.id())?;
    Ok(StartSample {
        wall: t0.elapsed(),
        cpu,
    })
}

pub fn startup(config: &Config) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("squib-bench-").tempdir()?;
    let mut samples: [Vec<StartSample>; 3] = Default::default();
    for i in 0..config.starts {
        for k in 0..3 {
            // Rotate the order so that none always runs first.
            let which = (i + k) % 3;
            let socket = dir.path().join(format!("start-{i}-{which}.sock"));
            let sample = match which {
                0 => exec_server(squib_command(config, &socket, "bench-start"), &socket)
                    .context("squib start")?,
                1 => exec_server(floor_command(&socket)?, &socket).context("floor start")?,
                _ => exec_true()?,
            };
            samples[which].push(sample);
        }
    }
    let wall = |k: usize| median(&samples[k].iter().map(|s| s.wall).collect::<Vec<_>>());
    let cpu = |k: usize| median(&samples[k].iter().map(|s| s.cpu).collect::<Vec<_>>());
    let all = |k: usize| {
        json!({
            "wall_ms": samples[k].iter().map(|s| s.wall.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            "cpu_ms": samples[k].iter().map(|s| s.cpu.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        })
    };
    let extra = json!({"starts": config.starts, "squib": all(0), "floor": all(1), "true": all(2)});
    Ok(vec![
        Figure::new(
            "start.wall.vs_true",
            "exec → first API answer, wall, median",
            "ms",
            ms(wall(0)),
            ms(wall(2)),
            TRUE,
        )
        .with_extra(extra.clone()),
        Figure::new(
            "start.cpu.vs_true",
            "exec → first API answer, CPU, median",
            "ms",
            ms(cpu(0)),
            ms(cpu(2)),
            TRUE,
        ),
        Figure::new(
            "start.wall.vs_floor",
            "exec → first API answer, wall, median (vs floor)",
            "ms",
            ms(wall(0)),
            ms(wall(1)),
            FLOOR_EXEC,
        ),
        Figure::new(
            "start.cpu.vs_floor",
            "exec → first API answer, CPU, median (vs floor)",
            "ms",
            ms(cpu(0)),
            ms(cpu(1)),
            FLOOR_EXEC,
        ),
    ])
}

// ------------------------------------------------------------------------------------------
// Boot: InstanceStart → the guest's init marker, against raw QEMU with squib's argv.

pub struct GuestPaths {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

pub fn guest() -> anyhow::Result<GuestPaths> {
    let script = crate::repo_root().join("guest/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--print-paths")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "guest/build.sh failed ({}); run scripts/install-deps.sh first",
            output.status
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(PathBuf::from)
            .with_context(|| format!("guest/build.sh printed no {key}"))
    };
    Ok(GuestPaths {
        kernel: get("KERNEL")?,
        initrd: get("INITRD")?,
        rootfs: get("ROOTFS")?,
    })
}

/// The host TSC rate for `tsc_early_khz=` (see guest/README.md: without it a busy host can
/// hang the TCG guest's boot). `SQUIB_TSC_KHZ` overrides; 0 leaves it out.
fn tsc_khz() -> u64 {
    if let Some(v) = std::env::var("SQUIB_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return 0;
    };
    if !info.contains("constant_tsc") {
        return 0;
    }
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|v| v.trim_start_matches([' ', '\t', ':']).parse::<f64>().ok())
        .map_or(0, |mhz| (mhz * 1000.0) as u64)
}

fn boot_args() -> String {
    let mut args = "console=ttyS0 reboot=k panic=1 squib.action=wait".to_string();
    let khz = tsc_khz();
    if khz > 0 {
        args.push_str(&format!(" tsc_early_khz={khz}"));
    }
    args
}

/// Configures a squib through the API: kernel, initrd, the shared root image read-only (so
/// every run boots the same bits), 1 vCPU, 256 MiB.
pub(crate) fn configure(socket: &Path, guest: &GuestPaths) -> anyhow::Result<()> {
    configure_with_memory(socket, guest, 256)
}

/// [`configure`] with `mib` MiB of guest RAM.
pub fn configure_with_memory(socket: &Path, guest: &GuestPaths, mib: u32) -> anyhow::Result<()> {
    let boot = json!({
        "kernel_image_path": guest.kernel,
        "initrd_path": guest.initrd,
        "boot_args": boot_args(),
    });
    process::api_expect(socket, "PUT", "/boot-source", Some(&boot.to_string()), 204)?;
    let drive = json!({
        "drive_id": "rootfs",
        "path_on_host": guest.rootfs,
        "is_root_device": true,
        "is_read_only": true,
    });
    process::api_expect(
        socket,
        "PUT",
        "/drives/rootfs",
        Some(&drive.to_string()),
        204,
    )?;
    let machine = json!({"vcpu_count": 1, "mem_size_mib": mib}).to_string();
    process::api_expect(socket, "PUT", "/machine-config", Some(&machine), 204)?;
    Ok(())
}

struct SquibBoot {
    to_marker: Duration,
    put: Duration,
    squib_rss_configured: u64,
    squib_rss: u64,
    qemu_rss: u64,
    argv: Vec<String>,
}

fn qemu_child(squib: &Proc) -> anyhow::Result<u32> {
    let children = process::children(squib.pid());
    match children.as_slice() {
        [pid] => Ok(*pid),
        other => bail!("expected one QEMU child of squib, found {other:?}"),
    }
}

/// One boot through squib; `pci` adds `--enable-pci` (the q35 machine).
fn boot_squib(
    config: &Config,
    guest: &GuestPaths,
    round: usize,
    pci: bool,
) -> anyhow::Result<SquibBoot> {
    let dir = tempfile::Builder::new().prefix("squib-bench-").tempdir()?;
    let socket = dir.path().join("api.sock");
    let mut command = squib_command(config, &socket, &format!("bench-boot-{round}"));
    if pci {
        command.arg("--enable-pci");
    }
    let mut squib = start_server(command, &socket)?;
    configure(&socket, guest)?;
    let squib_rss_configured = process::rss_kib(squib.pid())?;
    let t0 = Instant::now();
    process::api_expect(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        204,
    )
    .with_context(|| {
        format!(
            "InstanceStart; output:\n{}\nlog:\n{}",
            squib.tail(20),
            log_tail(&socket)
        )
    })?;
    let put = t0.elapsed();
    let qemu = qemu_child(&squib)?;
    let argv = process::cmdline(qemu)?;
    let marker = squib
        .wait_for_line(GUEST_MARKER, BOOT_TIMEOUT)
        .with_context(|| format!("log:\n{}", log_tail(&socket)))?;
    std::thread::sleep(config.settle);
    let squib_rss = process::rss_kib(squib.pid())?;
    let qemu_rss = process::rss_kib(qemu)?;
    squib.stop(Duration::from_secs(10));
    Ok(SquibBoot {
        to_marker: marker - t0,
        put,
        squib_rss_configured,
        squib_rss,
        qemu_rss,
        argv,
    })
}

/// squib's QEMU argv made runnable by hand: `-S` dropped (nobody sends `cont`), the QMP
/// socket moved to `qmp` (squib's runtime directory is gone), and guest RAM that squib hands
/// QEMU as its own memfd (`mem-path=/proc/<squib>/fd/<n>`) backed by a memfd of QEMU's own,
/// same id and size, still shared.
pub fn raw_argv(argv: &[String], qmp: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(argv.len());
    let mut old_qmp = None;
    let mut fd_qmp = false;
    let mut args = argv.iter();
    out.push(args.next().context("empty QEMU argv")?.clone());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-S" => {}
            "-object" if args.as_slice().first().is_some_and(|v| is_squib_ram(v)) => {
                let value = args.next().context("-object without a value")?;
                out.push("-object".to_string());
                out.push(own_memfd(value)?);
            }
            // squib hands QEMU a QMP socket it listens on already (an inherited descriptor).
            "-chardev"
                if args
                    .as_slice()
                    .first()
                    .is_some_and(|v| v.starts_with("socket,id=qmp,fd=")) =>
            {
                args.next();
                let new = qmp.to_str().context("non-UTF-8 QMP path")?;
                out.push("-chardev".to_string());
                out.push(format!(
                    "socket,id=qmp,path={},server=on,wait=off",
                    new.replace(',', ",,")
                ));
                fd_qmp = true;
            }
            "-qmp" => {
                let value = args.next().context("-qmp without a value")?;
                let path = value
                    .strip_prefix("unix:")
                    .and_then(|rest| rest.find(",server=").map(|end| &rest[..end]))
                    .with_context(|| format!("unexpected -qmp {value:?}"))?;
                old_qmp = Some(path.to_string());
                let new = qmp.to_str().context("non-UTF-8 QMP path")?;
                out.push("-qmp".to_string());
                out.push(format!(
                    "unix:{},server=on,wait=off",
                    new.replace(',', ",,")
                ));
            }
            _ => out.push(arg.clone()),
        }
    }
    if fd_qmp {
        return Ok(out);
    }
    let old_qmp = old_qmp.context("squib's QEMU has no -qmp")?;
    let old_dir = Path::new(&old_qmp)
        .parent()
        .and_then(Path::to_str)
        .filter(|d| d.len() > 1)
        .unwrap_or(&old_qmp);
    if let Some(stale) = out.iter().find(|a| a.contains(old_dir)) {
        bail!("squib's QEMU argv refers to its runtime directory elsewhere: {stale:?}");
    }
    Ok(out)
}

pub fn is_squib_ram(object: &str) -> bool {
    object.starts_with("memory-backend-file,") && object.contains("mem-path=/proc/")
}

/// `memory-backend-file,id=ram,size=256M,share=on,mem-path=/proc/…` → the same RAM as a memfd.
pub fn own_memfd(object: &str) -> anyhow::Result<String> {
    let field = |key: &str| {
        object
            .split(',')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("guest RAM object without {key}: {object:?}"))
    };
    Ok(format!(
        "memory-backend-memfd,id={},size={},share=on",
        field("id")?,
        field("size")?
    ))
}

struct RawBoot {
    to_marker: Duration,
    qemu_rss: u64,
}

fn boot_raw(config: &Config, argv: &[String]) -> anyhow::Result<RawBoot> {
    let dir = tempfile::Builder::new().prefix("squib-bench-").tempdir()?;
    let argv = raw_argv(argv, &dir.path().join("qmp.sock"))?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    let t0 = Instant::now();
    let mut qemu = Proc::spawn(command)?;
    let marker = qemu.wait_for_line(GUEST_MARKER, BOOT_TIMEOUT)?;
    std::thread::sleep(config.settle);
    let qemu_rss = process::rss_kib(qemu.pid())?;
    qemu.stop(Duration::from_secs(5));
    Ok(RawBoot {
        to_marker: marker - t0,
        qemu_rss,
    })
}

pub fn boot(
    config: &Config,
    notes: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<Vec<Figure>> {
    let guest = guest()?;
    notes.insert("boot_args".into(), json!(boot_args()));
    let mut squib_runs: Vec<SquibBoot> = Vec::new();
    let mut raw_runs: Vec<RawBoot> = Vec::new();
    for round in 0..config.boot_rounds {
        // Round 0 must start with squib (its argv feeds raw QEMU); then alternate.
        let squib_first = round % 2 == 0;
        for step in 0..2 {
            if (step == 0) == squib_first {
                let run = boot_squib(config, &guest, round, false)
                    .with_context(|| format!("squib boot, round {round}"))?;
                eprintln!(
                    "  round {round}: squib InstanceStart → marker {:.0} ms (PUT {:.0} ms)",
                    run.to_marker.as_secs_f64() * 1000.0,
                    run.put.as_secs_f64() * 1000.0
                );
                squib_runs.push(run);
            } else {
                let argv = &squib_runs.last().context("no squib argv yet")?.argv;
                let run = boot_raw(config, argv)
                    .with_context(|| format!("raw QEMU boot, round {round}"))?;
                eprintln!(
                    "  round {round}: raw QEMU exec → marker {:.0} ms",
                    run.to_marker.as_secs_f64() * 1000.0
                );
                raw_runs.push(run);
            }
        }
    }
    if let Some(run) = squib_runs.first() {
        notes.insert("qemu_argv".into(), json!(run.argv));
    }
    // The same configuration with --enable-pci (q35, virtio-*-pci), against microvm's boots.
    let mut pci_marker: Vec<Duration> = Vec::new();
    for round in 0..config.boot_rounds {
        let run = boot_squib(config, &guest, round, true)
            .with_context(|| format!("squib --enable-pci boot, round {round}"))?;
        eprintln!(
            "  round {round}: squib --enable-pci InstanceStart → marker {:.0} ms",
            run.to_marker.as_secs_f64() * 1000.0
        );
        pci_marker.push(run.to_marker);
    }
    let ms_list = |v: Vec<Duration>| {
        v.iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>()
    };
    let squib_marker: Vec<Duration> = squib_runs.iter().map(|r| r.to_marker).collect();
    let raw_marker: Vec<Duration> = raw_runs.iter().map(|r| r.to_marker).collect();
    let puts: Vec<Duration> = squib_runs.iter().map(|r| r.put).collect();
    let kib = |v: Vec<u64>| median_u64(&v);
    Ok(vec![
        Figure::new(
            "boot.to_marker",
            "InstanceStart → guest init marker, median",
            "ms",
            ms(median(&squib_marker)),
            ms(median(&raw_marker)),
            RAW_QEMU,
        )
        .with_extra(json!({
            "rounds": config.boot_rounds,
            "squib_ms": ms_list(squib_marker),
            "baseline_ms": ms_list(raw_marker),
        })),
        Figure::new(
            "boot.pci_to_marker",
            "InstanceStart → guest init marker with --enable-pci (q35), median",
            "ms",
            ms(median(&pci_marker)),
            ms(median(
                &squib_runs.iter().map(|r| r.to_marker).collect::<Vec<_>>(),
            )),
            "squib on microvm (boot.to_marker)",
        )
        .with_extra(json!({"squib_ms": ms_list(pci_marker)})),
        Figure::new(
            "boot.put_instance_start",
            "PUT InstanceStart response time, median",
            "ms",
            ms(median(&puts)),
            None,
            "",
        )
        .informational()
        .with_extra(json!({"squib_ms": ms_list(puts)})),
        Figure::new(
            "mem.squib.configured",
            "squib RSS, configured, before InstanceStart",
            "MiB",
            mib(kib(squib_runs
                .iter()
                .map(|r| r.squib_rss_configured)
                .collect())),
            None,
            "",
        )
        .informational(),
        Figure::new(
            "mem.squib.guest_running",
            "squib RSS, guest running (QEMU not included)",
            "MiB",
            mib(kib(squib_runs.iter().map(|r| r.squib_rss).collect())),
            mib(kib(squib_runs
                .iter()
                .map(|r| r.squib_rss_configured)
                .collect())),
            "the same squib, configured, before InstanceStart",
        ),
        Figure::new(
            "mem.qemu.guest_running",
            "QEMU RSS beside squib, guest running",
            "MiB",
            mib(kib(squib_runs.iter().map(|r| r.qemu_rss).collect())),
            mib(kib(raw_runs.iter().map(|r| r.qemu_rss).collect())),
            "raw QEMU RSS at the same point (settle time after the marker)",
        ),
    ])
}

// ------------------------------------------------------------------------------------------
// Liveness: GET / answered while InstanceStart (and then the guest boot) runs.

/// Fires `GET /` on one keep-alive connection every `pace` until `stop`.
async fn paced_gets(
    socket: PathBuf,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(Instant, Instant)>> {
    let mut conn = Conn::connect(&socket).await?;
    let request = Request::new("GET", "/", None);
    let mut samples = Vec::new();
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let response = conn.roundtrip(&request).await?;
        let t1 = Instant::now();
        if response.status != 200 {
            bail!("GET / answered {} during the boot", response.status);
        }
        samples.push((t0, t1));
        next += pace;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
    Ok(samples)
}

struct LivenessRun {
    idle: Vec<u64>,
    during_action: Vec<u64>,
    during_boot: Vec<u64>,
}

const LIVENESS_PACE: Duration = Duration::from_millis(1);

fn liveness_round(
    config: &Config,
    runtime: &Runtime,
    guest: &GuestPaths,
    round: usize,
) -> anyhow::Result<LivenessRun> {
    let dir = tempfile::Builder::new().prefix("squib-bench-").tempdir()?;
    let socket = dir.path().join("api.sock");
    let mut squib = start_server(
        squib_command(config, &socket, &format!("bench-live-{round}")),
        &socket,
    )?;
    configure(&socket, guest)?;
    let idle_window = if config.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let getter = runtime.spawn(paced_gets(socket.clone(), LIVENESS_PACE, stop.clone()));
    // Skip the first 50 ms of GETs (connection warm-up) when taking the idle figure.
    let warm = Instant::now() + Duration::from_millis(50);
    std::thread::sleep(idle_window);
    let put_start = Instant::now();
    let put = runtime.block_on(async {
        let mut conn = Conn::connect(&socket).await?;
        conn.roundtrip(&Request::new(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        ))
        .await
    });
    let put_end = Instant::now();
    let marker = match put {
        Ok(r) if r.status == 204 => squib.wait_for_line(GUEST_MARKER, BOOT_TIMEOUT),
        Ok(r) => Err(anyhow::anyhow!(
            "InstanceStart answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )),
        Err(e) => Err(e),
    };
    stop.store(true, Ordering::Relaxed);
    let samples = runtime.block_on(getter)??;
    let marker = marker.with_context(|| format!("log:\n{}", log_tail(&socket)))?;
    squib.stop(Duration::from_secs(10));
    let overlap = |from: Instant, to: Instant| -> Vec<u64> {
        samples
            .iter()
            .filter(|(t0, t1)| *t0 < to && *t1 > from)
            .map(|(t0, t1)| (*t1 - *t0).as_nanos() as u64)
            .collect()
    };
    let run = LivenessRun {
        idle: overlap(warm, put_start),
        during_action: overlap(put_start, put_end),
        during_boot: overlap(put_start, marker),
    };
    if run.idle.is_empty() || run.during_action.is_empty() {
        bail!(
            "too few GETs: {} idle, {} during InstanceStart",
            run.idle.len(),
            run.during_action.len()
        );
    }
    eprintln!(
        "  round {round}: InstanceStart took {:.0} ms, {} GETs during it, {} until the marker",
        (put_end - put_start).as_secs_f64() * 1000.0,
        run.during_action.len(),
        run.during_boot.len()
    );
    Ok(run)
}

pub fn liveness(config: &Config, runtime: &Runtime) -> anyhow::Result<Vec<Figure>> {
    let guest = guest()?;
    let mut idle = Vec::new();
    let mut during_action = Vec::new();
    let mut during_boot = Vec::new();
    for round in 0..config.liveness_rounds {
        let run = liveness_round(config, runtime, &guest, round)
            .with_context(|| format!("liveness round {round}"))?;
        idle.extend(run.idle);
        during_action.extend(run.during_action);
        during_boot.extend(run.during_boot);
    }
    for v in [&mut idle, &mut during_action, &mut during_boot] {
        v.sort_unstable();
    }
    let extra = json!({
        "pace_ms": LIVENESS_PACE.as_secs_f64() * 1000.0,
        "samples_idle": idle.len(),
        "samples_during_instance_start": during_action.len(),
        "samples_during_boot": during_boot.len(),
        "max_us_idle": us(idle.last().copied()),
        "max_us_during_instance_start": us(during_action.last().copied()),
        "max_us_during_boot": us(during_boot.last().copied()),
    });
    Ok(vec![
        Figure::new(
            "live.instance_start.p99",
            "GET / p99 while InstanceStart runs",
            "µs",
            us(quantile(&during_action, 0.99)),
            us(quantile(&idle, 0.99)),
            IDLE_GET,
        )
        .with_extra(extra),
        Figure::new(
            "live.instance_start.max",
            "GET / max while InstanceStart runs",
            "µs",
            us(during_action.last().copied()),
            us(idle.last().copied()),
            IDLE_GET,
        ),
        Figure::new(
            "live.boot.p99",
            "GET / p99 from InstanceStart to the init marker",
            "µs",
            us(quantile(&during_boot, 0.99)),
            us(quantile(&idle, 0.99)),
            IDLE_GET,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_argv_gives_qemu_its_own_ram() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-object",
            "memory-backend-file,id=ram,size=256M,share=on,mem-path=/proc/42/fd/13",
            "-qmp",
            "unix:/run/squib-x/qmp.sock,server=on,wait=off",
        ]
        .map(String::from)
        .to_vec();
        let out = raw_argv(&argv, Path::new("/b/q.sock")).unwrap();
        assert_eq!(out[2], "memory-backend-memfd,id=ram,size=256M,share=on");
    }

    #[test]
    fn raw_argv_gives_qemu_a_qmp_path_for_the_inherited_socket() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-chardev",
            "socket,id=qmp,fd=9,server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
        ]
        .map(String::from)
        .to_vec();
        let out = raw_argv(&argv, Path::new("/b/q.sock")).unwrap();
        assert_eq!(out[2], "socket,id=qmp,path=/b/q.sock,server=on,wait=off");
        assert_eq!(out[3..], ["-mon", "chardev=qmp,mode=control"]);
    }

    #[test]
    fn raw_argv_strips_s_and_moves_qmp() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-S",
            "-kernel",
            "/k",
            "-qmp",
            "unix:/tmp/squib-qemu-x/qmp.sock,server=on,wait=off",
        ]
        .map(String::from)
        .to_vec();
        let out = raw_argv(&argv, Path::new("/b/q.sock")).unwrap();
        assert_eq!(
            out,
            [
                "qemu-system-x86_64",
                "-nodefaults",
                "-kernel",
                "/k",
                "-qmp",
                "unix:/b/q.sock,server=on,wait=off"
            ]
        );
        let mut stale = argv.clone();
        stale.push("-D".into());
        stale.push("/tmp/squib-qemu-x/log".into());
        assert!(raw_argv(&stale, Path::new("/b/q.sock")).is_err());
    }
}
