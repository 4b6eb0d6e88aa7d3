//! The soak (`--only soak`, `make soak`; not in CI): a million mixed API requests over 64
//! keep-alive connections against a running VM. Every answer must be the one upstream gives
//! (200 for GETs, 400 for the pre-boot-only PUTs, 204 for drive limiter PATCHes and MMDS
//! PUT/PATCH), and squib's resident memory must not grow by 1 MiB or more between a warm-up
//! and the end. Both are reported as figures; the section fails when either does not hold.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::Config;
use crate::load::{Conn, Request};
use crate::process;
use crate::report::Figure;
use crate::scenarios::{self, BOOT_TIMEOUT, GUEST_MARKER};

const CONNECTIONS: usize = 64;
const WARMUP: u64 = 50_000;
/// RSS growth at or above this fails the soak.
const MAX_GROWTH_KIB: u64 = 1024;

/// The mix, one entry per request slot, with the status upstream answers after boot.
fn mix() -> Vec<(Request, u16)> {
    let limiter = |size: u64| {
        json!({"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": size, "refill_time": 100}}})
            .to_string()
    };
    vec![
        (Request::new("GET", "/", None), 200),
        (Request::new("GET", "/machine-config", None), 200),
        (Request::new("GET", "/vm/config", None), 200),
        (Request::new("GET", "/mmds", None), 200),
        (
            Request::new(
                "PUT",
                "/machine-config",
                Some(r#"{"vcpu_count":2,"mem_size_mib":256}"#),
            ),
            400,
        ),
        (
            Request::new(
                "PUT",
                "/boot-source",
                Some(r#"{"kernel_image_path":"/nonexistent"}"#),
            ),
            400,
        ),
        (
            Request::new("PATCH", "/drives/rootfs", Some(&limiter(10 << 20))),
            204,
        ),
        (Request::new("GET", "/version", None), 200),
        (
            Request::new(
                "PUT",
                "/mmds",
                Some(r#"{"latest":{"meta-data":{"id":"i-1","n":[1,2,3]}}}"#),
            ),
            204,
        ),
        (
            Request::new(
                "PATCH",
                "/mmds",
                Some(r#"{"latest":{"meta-data":{"n":"x"}}}"#),
            ),
            204,
        ),
    ]
}

/// A TAP in the host namespace for the MMDS binding; deleted on drop. It stays down and
/// unaddressed, so nothing the guest sends leaves it.
struct SoakTap(String);

impl SoakTap {
    fn new() -> anyhow::Result<SoakTap> {
        let name = format!("sqbsoak{}", std::process::id() % 100_000);
        let status = std::process::Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .status()
            .context("ip tuntap add")?;
        if !status.success() {
            bail!("ip tuntap add dev {name} failed ({status}); the soak needs CAP_NET_ADMIN");
        }
        Ok(SoakTap(name))
    }
}

impl Drop for SoakTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    unexpected: AtomicU64,
}

/// Sends requests round-robin through the mix until `total` have been sent; returns the
/// first few unexpected answers.
async fn drive(socket: &Path, total: u64, tally: Arc<Tally>) -> anyhow::Result<Vec<String>> {
    let mix = Arc::new(mix());
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mix = mix.clone();
        let tally = tally.clone();
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let mut samples = Vec::new();
            loop {
                let n = tally.sent.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (request, expected) = &mix[(n % mix.len() as u64) as usize];
                match conn.roundtrip(request).await {
                    Ok(r) if r.status == *expected => {}
                    Ok(r) => {
                        tally.unexpected.fetch_add(1, Ordering::Relaxed);
                        if samples.len() < 3 {
                            samples.push(format!(
                                "{} → {} {}",
                                request.label,
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ));
                        }
                    }
                    Err(e) => {
                        tally.unexpected.fetch_add(1, Ordering::Relaxed);
                        if samples.len() < 3 {
                            samples.push(format!("{}: {e:#}", request.label));
                        }
                        conn = Conn::connect(&socket).await?;
                    }
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(samples)
}

pub fn soak(config: &Config, runtime: &Runtime) -> anyhow::Result<Vec<Figure>> {
    let total: u64 = if config.quick { 100_000 } else { 1_000_000 };
    let guest = scenarios::guest()?;
    let dir = tempfile::Builder::new().prefix("squib-soak-").tempdir()?;
    let socket = dir.path().join("api.sock");
    let mut command = scenarios::squib_command(config, &socket, "bench-soak");
    // A log line per request would only measure the disk.
    command.args(["--level", "Warning"]);
    let mut squib = scenarios::start_server(command, &socket)?;
    scenarios::configure(&socket, &guest)?;
    // After boot the MMDS store only answers with an MMDS-bound interface (upstream's rule):
    // a TAP of the soak's own, never brought up, carries the binding.
    let tap = SoakTap::new()?;
    let iface = json!({"iface_id": "eth0", "host_dev_name": tap.0}).to_string();
    process::api_expect(
        &socket,
        "PUT",
        "/network-interfaces/eth0",
        Some(&iface),
        204,
    )?;
    let mmds = json!({"network_interfaces": ["eth0"], "version": "V2"}).to_string();
    process::api_expect(&socket, "PUT", "/mmds/config", Some(&mmds), 204)?;
    process::api_expect(
        &socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        204,
    )?;
    squib
        .wait_for_line(GUEST_MARKER, BOOT_TIMEOUT)
        .with_context(|| format!("log:\n{}", scenarios::log_tail(&socket)))?;

    // Warm-up: every code path runs and the allocator has its pools before the baseline.
    let warm = Arc::new(Tally::default());
    let warm_samples = runtime.block_on(drive(&socket, WARMUP, warm.clone()))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = process::rss_kib(squib.pid())?;

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let sampler = {
        let pid = squib.pid();
        let tally = tally.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while tally.sent.load(Ordering::Relaxed) < total {
                peak = peak.max(process::rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        })
    };
    let samples = runtime.block_on(drive(&socket, total, tally.clone()))?;
    let elapsed = started.elapsed();
    let peak = sampler.join().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = process::rss_kib(squib.pid())?;
    let alive = process::api_expect(&socket, "GET", "/", None, 200).is_ok();
    squib.stop(Duration::from_secs(10));

    let unexpected =
        tally.unexpected.load(Ordering::Relaxed) + warm.unexpected.load(Ordering::Relaxed);
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "soak: {total} requests in {:.1} s ({:.0}/s), {unexpected} unexpected; RSS {rss_before} KiB → {rss_after} KiB (peak {peak} KiB)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for s in warm_samples.iter().chain(&samples) {
        eprintln!("soak: unexpected: {s}");
    }
    let extra = json!({
        "requests": total,
        "connections": CONNECTIONS,
        "warmup_requests": WARMUP,
        "seconds": elapsed.as_secs_f64(),
        "unexpected": unexpected,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": peak,
        "samples": warm_samples.iter().chain(&samples).collect::<Vec<_>>(),
    });
    let figures = vec![
        Figure::new(
            "soak.unexpected",
            format!("soak: unexpected answers in {total} mixed requests"),
            "answers",
            Some(unexpected as f64),
            None,
            "",
        )
        .informational()
        .with_extra(extra.clone()),
        Figure::new(
            "soak.rss_growth",
            "soak: squib RSS growth after warm-up",
            "KiB",
            Some(growth as f64),
            None,
            "",
        )
        .informational()
        .with_extra(extra),
        Figure::new(
            "soak.throughput",
            "soak: mixed requests per second (64 connections, VM running)",
            "req/s",
            Some(total as f64 / elapsed.as_secs_f64()),
            None,
            "",
        )
        .informational(),
    ];
    if !alive {
        bail!("squib stopped answering after the soak");
    }
    if unexpected > 0 || growth >= MAX_GROWTH_KIB {
        bail!(
            "soak failed: {unexpected} unexpected answers, RSS growth {growth} KiB (limit {MAX_GROWTH_KIB} KiB)"
        );
    }
    Ok(figures)
}
