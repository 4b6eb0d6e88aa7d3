//! Snapshots: create and load times against guest size, and the memory a microVM costs
//! beyond its guest RAM.
//!
//! For each guest size (256 MiB, 1 GiB and 2 GiB; `--quick`: 256 MiB): one booted guest is
//! paused and snapshotted, then restored (with `resume_vm`) by new squib processes; one
//! restored guest is snapshotted again (its RAM is the memory file mapped copy-on-write, so
//! that save takes another path). The guests touch about the same memory whatever their size
//! (each create's memory file reports its MiB of data): a cost that grows with the size grows
//! with untouched memory. Loads are compared with raw QEMU restoring the same snapshot with
//! the argv squib gave it (the floor of a load);
//! creates with a sparse copy of the memory file they wrote (the floor of writing it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::Config;
use crate::process::{self, Proc};
use crate::report::Figure;
use crate::scenarios::{
    GUEST_MARKER, GuestPaths, configure_with_memory, guest, is_squib_ram, log_tail, own_memfd,
    squib_command, start_server,
};
use crate::stats::{median, median_f64};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// `(key, kB)` pairs of /proc/<pid>/status.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {key} for {pid}"))
}

fn timed_put(socket: &Path, path: &str, body: &str, squib: &Proc) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    process::api_expect(socket, "PUT", path, Some(body), 204).with_context(|| {
        format!(
            "PUT {path}; output:\n{}\nlog:\n{}",
            squib.tail(20),
            log_tail(socket)
        )
    })?;
    Ok(t0.elapsed())
}

fn qemu_of(squib: &Proc) -> anyhow::Result<u32> {
    match process::children(squib.pid()).as_slice() {
        [pid] => Ok(*pid),
        other => bail!("expected one QEMU child of squib, found {other:?}"),
    }
}

/// QEMU alone, with squib's argv (`-S` kept, its own memfd for RAM, a QMP socket listening
/// before it starts, as squib does it): exec → `qmp_capabilities` and `cont` answered. The
/// floor of `InstanceStart`.
fn raw_instance_start(argv: &[String]) -> anyhow::Result<Duration> {
    let mut args = Vec::with_capacity(argv.len());
    for arg in &argv[1..] {
        if is_squib_ram(arg) {
            args.push(own_memfd(arg)?);
        } else {
            args.push(arg.clone());
        }
    }
    let t0 = Instant::now();
    let mut qemu = RawQemu::spawn(&argv[0], &args)?;
    let result = (|| -> anyhow::Result<Duration> {
        qemu.execute("qmp_capabilities", json!({}))?;
        qemu.execute("cont", json!({}))?;
        Ok(t0.elapsed())
    })();
    qemu.kill();
    result
}

/// QEMU alone restoring a snapshot, with the argv squib gave a restored QEMU (`-incoming
/// defer`, the memory file mapped copy-on-write, by its path here): exec → capabilities,
/// `migrate-incoming` with the snapshot's device state sent, `completed`, `cont` answered
/// (`query-migrate` polled without a pause). The floor of `PUT /snapshot/load`.
fn raw_restore(argv: &[String], state: &Path, mem: &Path) -> anyhow::Result<Duration> {
    let file = std::fs::read(state)?;
    let stream = qemu_stream(&file)?;
    let mut args = Vec::with_capacity(argv.len());
    for arg in &argv[1..] {
        if is_squib_ram(arg) {
            let fields: Vec<String> = arg
                .split(',')
                .map(|field| match field.strip_prefix("mem-path=") {
                    Some(_) => format!("mem-path={}", mem.display()),
                    None => field.to_string(),
                })
                .collect();
            args.push(fields.join(","));
        } else {
            args.push(arg.clone());
        }
    }
    let incoming = tempfile::Builder::new()
        .prefix("squib-bench-in-")
        .tempdir()?;
    let socket = incoming.path().join("in.sock");
    let t0 = Instant::now();
    let mut qemu = RawQemu::spawn(&argv[0], &args)?;
    let result = (|| -> anyhow::Result<Duration> {
        use std::io::Write;
        qemu.execute("qmp_capabilities", json!({}))?;
        qemu.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )?;
        qemu.execute(
            "migrate-incoming",
            json!({"uri": format!("unix:{}", socket.display())}),
        )?;
        let mut conn = std::os::unix::net::UnixStream::connect(&socket)?;
        conn.write_all(stream)?;
        conn.shutdown(std::net::Shutdown::Write)?;
        loop {
            let status = qemu.execute("query-migrate", json!({}))?;
            if status.contains("\"completed\"") {
                break;
            }
            if status.contains("\"failed\"") {
                bail!("QEMU's migration failed: {status}");
            }
        }
        qemu.execute("cont", json!({}))?;
        Ok(t0.elapsed())
    })();
    qemu.kill();
    result
}

/// QEMU's migration stream inside a squib state file (docs/snapshots.md: the engine's device
/// state is a `u32` length, a JSON header, then the stream).
fn qemu_stream(file: &[u8]) -> anyhow::Result<&[u8]> {
    let le32 = |at: usize| -> anyhow::Result<usize> {
        let b = file.get(at..at + 4).context("state file too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let header = le32(14)?;
    let state_len = file
        .get(18 + header..26 + header)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .context("state file too short")?;
    let state = file
        .get(26 + header..26 + header + state_len)
        .context("state file too short")?;
    let meta = le32(26 + header)?;
    state.get(4 + meta..).context("device state too short")
}

/// A QEMU started by the bench with squib's argv, its QMP socket listening before it starts.
struct RawQemu {
    child: std::process::Child,
    writer: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    _dir: tempfile::TempDir,
}

impl RawQemu {
    /// `args` as squib built them; the QMP chardev gets the bench's own listening socket.
    fn spawn(program: &str, args: &[String]) -> anyhow::Result<Self> {
        use std::io::BufRead;
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;

        let dir = tempfile::Builder::new()
            .prefix("squib-bench-raw-")
            .tempdir()?;
        let socket = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        let fd = listener.as_raw_fd();
        let args = args.iter().map(|arg| {
            if arg.starts_with("socket,id=qmp,fd=") {
                format!("socket,id=qmp,fd={fd},server=on,wait=off")
            } else {
                arg.clone()
            }
        });
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        process::die_with_parent(&mut command);
        // SAFETY: fcntl on a descriptor this process owns, between fork and exec; no allocation.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(listener);
        let stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let writer = stream.try_clone()?;
        let mut reader = std::io::BufReader::new(stream);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        Ok(Self {
            child,
            writer,
            reader,
            _dir: dir,
        })
    }

    /// Runs one command; its `return` line (events skipped).
    fn execute(&mut self, command: &str, arguments: serde_json::Value) -> anyhow::Result<String> {
        use std::io::{BufRead, Write};
        let request = json!({"execute": command, "arguments": arguments});
        self.writer.write_all(format!("{request}\n").as_bytes())?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed QMP");
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                bail!("{command}: {line}");
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct SizeRun {
    mib: u32,
    start: Vec<Duration>,
    raw_start: Vec<Duration>,
    create: Duration,
    copy: Duration,
    loads: Vec<Duration>,
    /// Raw QEMU restoring the same snapshot with the restored QEMU's argv.
    raw_loads: Vec<Duration>,
    create_restored: Duration,
    /// MiB of data (allocated blocks) in the memory files of the booted and of the restored
    /// guest's create: what the guest touched, against its size.
    data_mib: f64,
    restored_data_mib: f64,
    /// RssAnon of squib and of QEMU, booted guest running (kB).
    squib_anon: u64,
    qemu_anon: u64,
    /// RssAnon of QEMU restored (private RAM: the pages the guest touched count here).
    restored_qemu_anon: u64,
}

/// MiB a (sparse) file holds on disk.
fn file_data_mib(path: &Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((meta.blocks() * 512) as f64 / f64::from(1 << 20))
}

fn create_body(dir: &Path, name: &str) -> String {
    json!({
        "snapshot_path": dir.join(format!("{name}.state")),
        "mem_file_path": dir.join(format!("{name}.mem")),
    })
    .to_string()
}

fn load_body(dir: &Path, name: &str) -> String {
    json!({
        "snapshot_path": dir.join(format!("{name}.state")),
        "mem_backend": {"backend_type": "File", "backend_path": dir.join(format!("{name}.mem"))},
        "resume_vm": true,
    })
    .to_string()
}

const START: &str = r#"{"action_type":"InstanceStart"}"#;
const PAUSE: &str = r#"{"state":"Paused"}"#;

fn size_run(
    config: &Config,
    guest: &GuestPaths,
    mib: u32,
    loads: usize,
) -> anyhow::Result<SizeRun> {
    let dir = tempfile::Builder::new()
        .prefix("squib-bench-snap-")
        .tempdir()?;
    let mut start = Vec::new();
    // InstanceStart of this guest, the loads' floor: the booted run, plus one more start.
    for k in 0..2 {
        let socket = dir.path().join(format!("start{k}.sock"));
        let mut squib = start_server(squib_command(config, &socket, "bench-snap-start"), &socket)?;
        configure_with_memory(&socket, guest, mib)?;
        start.push(timed_put(&socket, "/actions", START, &squib)?);
        squib.stop(Duration::from_secs(10));
    }
    let socket = dir.path().join("boot.sock");
    let mut squib = start_server(squib_command(config, &socket, "bench-snap-boot"), &socket)?;
    configure_with_memory(&socket, guest, mib)?;
    start.push(timed_put(&socket, "/actions", START, &squib)?);
    squib
        .wait_for_line(GUEST_MARKER, BOOT_TIMEOUT)
        .with_context(|| format!("log:\n{}", log_tail(&socket)))?;
    std::thread::sleep(config.settle);
    let squib_anon = status_kib(squib.pid(), "RssAnon")?;
    let qemu = qemu_of(&squib)?;
    let qemu_anon = status_kib(qemu, "RssAnon")?;
    let argv = process::cmdline(qemu)?;
    process::api_expect(&socket, "PATCH", "/vm", Some(PAUSE), 204)?;
    let create = timed_put(
        &socket,
        "/snapshot/create",
        &create_body(dir.path(), "a"),
        &squib,
    )?;
    squib.stop(Duration::from_secs(10));
    let mut raw_start = Vec::new();
    for _ in 0..start.len() {
        raw_start.push(raw_instance_start(&argv).context("raw QEMU start")?);
    }

    // The floor of writing the memory file: a sparse copy of it.
    let t0 = Instant::now();
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(dir.path().join("a.mem"))
        .arg(dir.path().join("copy.mem"))
        .status()?;
    let copy = t0.elapsed();
    if !status.success() {
        bail!("cp --sparse=always failed: {status}");
    }
    std::fs::remove_file(dir.path().join("copy.mem"))?;
    let data_mib = file_data_mib(&dir.path().join("a.mem"))?;

    let mut load_times = Vec::new();
    let mut create_restored = None;
    let mut restored_qemu_anon = 0;
    let mut restored_argv = None;
    let mut raw_loads = Vec::new();
    for k in 0..loads {
        let socket = dir.path().join(format!("load{k}.sock"));
        let mut squib = start_server(squib_command(config, &socket, "bench-snap-load"), &socket)?;
        load_times.push(timed_put(
            &socket,
            "/snapshot/load",
            &load_body(dir.path(), "a"),
            &squib,
        )?);
        if k == 0 {
            std::thread::sleep(config.settle);
            let qemu = qemu_of(&squib)?;
            restored_argv = Some(process::cmdline(qemu)?);
            restored_qemu_anon = status_kib(qemu, "RssAnon")?;
            process::api_expect(&socket, "PATCH", "/vm", Some(PAUSE), 204)?;
            create_restored = Some(timed_put(
                &socket,
                "/snapshot/create",
                &create_body(dir.path(), "b"),
                &squib,
            )?);
        }
        squib.stop(Duration::from_secs(10));
        // Interleaved with squib's loads: each pair shares its moment of the machine.
        let argv = restored_argv.as_ref().context("no load ran")?;
        raw_loads.push(
            raw_restore(argv, &dir.path().join("a.state"), &dir.path().join("a.mem"))
                .context("raw QEMU restore")?,
        );
    }
    Ok(SizeRun {
        mib,
        raw_loads,
        start,
        raw_start,
        create,
        copy,
        loads: load_times,
        create_restored: create_restored.context("no load ran")?,
        data_mib,
        restored_data_mib: file_data_mib(&dir.path().join("b.mem"))?,
        squib_anon,
        qemu_anon,
        restored_qemu_anon,
    })
}

pub fn snapshot(config: &Config) -> anyhow::Result<Vec<Figure>> {
    let guest = guest()?;
    let loads = if config.quick { 2 } else { 5 };
    // Guests of different sizes touch about the same memory: a cost that grows with the size
    // grows with untouched memory.
    let sizes: &[u32] = if config.quick {
        &[256]
    } else {
        &[256, 1024, 2048]
    };
    let mut figures = Vec::new();
    for &mib in sizes {
        let run =
            size_run(config, &guest, mib, loads).with_context(|| format!("{mib} MiB guest"))?;
        eprintln!(
            "  {mib} MiB: create {:.0} ms ({:.0} MiB of data), loads {:?} ms, create of a restored guest {:.0} ms ({:.0} MiB of data)",
            run.create.as_secs_f64() * 1000.0,
            run.data_mib,
            run.loads
                .iter()
                .map(|d| (d.as_secs_f64() * 1000.0).round())
                .collect::<Vec<_>>(),
            run.create_restored.as_secs_f64() * 1000.0,
            run.restored_data_mib,
        );
        let list = |v: &[Duration]| {
            v.iter()
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>()
        };
        figures.push(
            Figure::new(
                format!("start.instance_start.{}m", run.mib),
                format!("PUT InstanceStart → 204, {} MiB guest, median", run.mib),
                "ms",
                ms(median(&run.start)),
                ms(median(&run.raw_start)),
                "raw QEMU with squib's argv: exec → qmp_capabilities and cont answered (QMP socket listening before exec), median",
            )
            .with_extra(json!({"squib_ms": list(&run.start), "baseline_ms": list(&run.raw_start)})),
        );
        figures.push(
            Figure::new(
                format!("snap.load.{}m", run.mib),
                format!(
                    "PUT /snapshot/load (resume_vm) → 204, {} MiB guest, median",
                    run.mib
                ),
                "ms",
                ms(median(&run.loads)),
                ms(median(&run.raw_loads)),
                "raw QEMU with the restored QEMU's argv: exec → capabilities, migrate-incoming of the snapshot's device state, completed, cont answered, median",
            )
            .with_extra(json!({
                "squib_ms": list(&run.loads),
                "baseline_ms": list(&run.raw_loads),
                "instance_start_ms": list(&run.start),
            }))
            .with_paired_ratio(median_f64(
                &run.loads
                    .iter()
                    .zip(&run.raw_loads)
                    .map(|(squib, raw)| squib.as_secs_f64() / raw.as_secs_f64())
                    .collect::<Vec<_>>(),
            )),
        );
        figures.push(
            Figure::new(
                format!("snap.create.{}m", run.mib),
                format!("PUT /snapshot/create → 204, booted {} MiB guest", run.mib),
                "ms",
                ms(Some(run.create)),
                ms(Some(run.copy)),
                "cp --sparse=always of the memory file it wrote",
            )
            .with_extra(json!({"memory_file_data_mib": run.data_mib})),
        );
        figures.push(
            Figure::new(
                format!("snap.create_restored.{}m", run.mib),
                format!(
                    "PUT /snapshot/create → 204, restored {} MiB guest (RAM mapped copy-on-write)",
                    run.mib
                ),
                "ms",
                ms(Some(run.create_restored)),
                ms(Some(run.create)),
                "the same create of the booted guest",
            )
            .with_extra(json!({"memory_file_data_mib": run.restored_data_mib})),
        );
        if run.mib == sizes[0] {
            figures.push(
                Figure::new(
                    "mem.beyond_guest_ram",
                    format!(
                        "private memory per microVM beyond guest RAM (squib + QEMU RssAnon), booted {} MiB guest running",
                        run.mib
                    ),
                    "MiB",
                    Some((run.squib_anon + run.qemu_anon) as f64 / 1024.0),
                    None,
                    "",
                )
                .informational()
                .with_extra(json!({
                    "squib_rss_anon_kib": run.squib_anon,
                    "qemu_rss_anon_kib": run.qemu_anon,
                    "restored_qemu_rss_anon_kib": run.restored_qemu_anon,
                })),
            );
        }
    }
    Ok(figures)
}
