//! `squib-bench`: squib measured against its floor, every run the same way.
//!
//! Every figure is a ratio to a baseline measured in the same run on the same machine:
//! the API against a bare hyper server on a Unix socket, start-up against `/bin/true` (and
//! the bare server), memory against the bare server and raw QEMU, boot against raw QEMU run
//! with the very argv squib built. `--quick` runs few iterations and one boot of each kind,
//! for CI: it prints the same table, writes the same JSON, and fails when a figure is missing.

mod floor;
mod load;
mod net;
mod process;
mod report;
mod scenarios;
mod snapshot;
mod soak;
mod stats;
mod vsock;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::report::Figure;

const USAGE: &str = "usage: squib-bench [--quick] [--squib PATH] [--out PATH] [--only api,startup,boot,liveness,snapshot,net,vsock,soak]";

/// How much of everything to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub squib: PathBuf,
    pub out: PathBuf,
    pub sections: Vec<String>,
    /// API: rounds (floor and squib alternate within a round), warm-up and measured time.
    pub api_rounds: usize,
    pub api_warmup: Duration,
    pub api_duration: Duration,
    /// Exec → first answer: starts of each program.
    pub starts: usize,
    /// Boot: rounds of (squib, raw QEMU).
    pub boot_rounds: usize,
    /// Liveness: boots with GETs fired throughout.
    pub liveness_rounds: usize,
    /// Time between the init marker and the RSS reading.
    pub settle: Duration,
}

fn parse_args(args: &[String]) -> anyhow::Result<Config> {
    let mut quick = false;
    let mut squib = None;
    let mut out = None;
    let mut sections = vec![
        "api".to_string(),
        "startup".into(),
        "boot".into(),
        "liveness".into(),
        "vsock".into(),
        "snapshot".into(),
    ];
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--squib" => squib = Some(PathBuf::from(it.next().context(USAGE)?)),
            "--out" => out = Some(PathBuf::from(it.next().context(USAGE)?)),
            "--only" => {
                sections = it
                    .next()
                    .context(USAGE)?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let exe = std::env::current_exe()?;
    let squib = match squib {
        Some(path) => path,
        None => exe
            .parent()
            .context("no directory for the bench binary")?
            .join("squib"),
    };
    if !squib.is_file() {
        bail!(
            "no squib binary at {} (build it: cargo build --release -p squib, or pass --squib)",
            squib.display()
        );
    }
    let out = match out {
        Some(path) => path,
        None => target_dir().join("bench").join("results.json"),
    };
    Ok(Config {
        quick,
        squib,
        out,
        sections,
        api_rounds: if quick { 1 } else { 3 },
        api_warmup: Duration::from_millis(if quick { 100 } else { 300 }),
        api_duration: Duration::from_millis(if quick { 300 } else { 2000 }),
        starts: if quick { 5 } else { 20 },
        boot_rounds: if quick { 1 } else { 5 },
        liveness_rounds: if quick { 1 } else { 3 },
        settle: Duration::from_millis(if quick { 500 } else { 1000 }),
    })
}

/// The workspace's build directory: `$CARGO_TARGET_DIR`, else `target/` at the root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target"),
    }
}

pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("floor-server") {
        let socket = match args.get(1..) {
            Some([flag, path]) if flag == "--api-sock" => PathBuf::from(path),
            _ => {
                eprintln!("usage: squib-bench floor-server --api-sock PATH");
                return ExitCode::from(2);
            }
        };
        return match floor::serve(&socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match parse_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("squib-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("squib-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

/// Runs the selected sections; true when every figure was measured.
fn run(config: &Config) -> anyhow::Result<bool> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = loadavg();
    eprintln!(
        "squib-bench ({} mode): {} CPUs, load average {load_before}; squib = {}",
        if config.quick { "quick" } else { "full" },
        cpus,
        config.squib.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figures: Vec<Figure> = Vec::new();
    let mut notes = serde_json::Map::new();
    for section in &config.sections {
        eprintln!("== {section}");
        let result = match section.as_str() {
            "api" => scenarios::api(config, &runtime),
            "startup" => scenarios::startup(config),
            "boot" => scenarios::boot(config, &mut notes),
            "liveness" => scenarios::liveness(config, &runtime),
            "snapshot" => snapshot::snapshot(config),
            // Not run by default: needs root and /dev/net/tun (`--only net`).
            "net" => net::net(config),
            "vsock" => vsock::vsock(config),
            // Not run by default either: a million requests (`--only soak`, `make soak`).
            "soak" => soak::soak(config, &runtime),
            other => {
                bail!(
                    "unknown section {other:?} (api, startup, boot, liveness, snapshot, net, vsock, soak)"
                )
            }
        };
        match result {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => {
                eprintln!("{section}: {e:#}");
                figures.push(Figure::failed(
                    section.clone(),
                    format!("{section} section"),
                    format!("{e:#}"),
                ))
            }
        }
    }
    let load_after = loadavg();
    let table = report::table(&figures);
    println!("{table}");
    println!("load average before {load_before}, after {load_after}; {cpus} CPUs");
    let ok = figures.iter().all(Figure::complete);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let document = json!({
        "squib": {
            "binary": config.squib,
            "commit": git(&["rev-parse", "HEAD"]),
            "worktree_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        },
        "mode": if config.quick { "quick" } else { "full" },
        "ok": ok,
        "machine": {
            "cpus": cpus,
            "cpu_model": cpu_model(),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "settings": {
            "api_rounds": config.api_rounds,
            "api_warmup_ms": config.api_warmup.as_millis() as u64,
            "api_duration_ms": config.api_duration.as_millis() as u64,
            "starts": config.starts,
            "boot_rounds": config.boot_rounds,
            "liveness_rounds": config.liveness_rounds,
            "settle_ms": config.settle.as_millis() as u64,
            "accel": std::env::var("SQUIB_ACCEL").unwrap_or_else(|_| "tcg".into()),
        },
        "notes": notes,
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
    });
    if let Some(dir) = config.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&config.out, serde_json::to_string_pretty(&document)? + "\n")
        .with_context(|| format!("write {}", config.out.display()))?;
    println!("JSON: {}", config.out.display());
    if !ok {
        let missing: Vec<&str> = figures
            .iter()
            .filter(|f| !f.complete())
            .map(|f| f.id.as_str())
            .collect();
        eprintln!("squib-bench: not measured: {}", missing.join(", "));
    }
    Ok(ok)
}
