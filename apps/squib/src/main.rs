//! `squib`: started like `firecracker`, serves Firecracker's API on a Unix socket and runs the
//! guest on QEMU's microvm machine. This file wires the pieces together and maps outcomes to
//! upstream's exit codes.

mod cli;
mod logging;
mod seccomp;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use squib_api::Controller;
use squib_metrics::MetricsRegistry;
use squib_vmm::resources::logger::LogLevel;
use squib_vmm::resources::metrics::MetricsConfig;
use squib_vmm::{VmExit, Vmm, VmmExit};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{EXIT_ARGUMENT_PARSING, Invocation, RunArgs};
use crate::logging::{EXIT_BAD_CONFIGURATION, LogOptions, Logger};

const EXIT_GENERIC_ERROR: u8 = 1;

/// Environment override of the action time-out, for tests (`--accel` and `--qemu` fall back to
/// the environment in `cli.rs`).
const ENV_ACTION_TIMEOUT_MS: &str = "SQUIB_ACTION_TIMEOUT_MS";

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Help(help)) => {
            println!(
                "Firecracker v{}\n\n{help}",
                squib_vmm::FIRECRACKER_API_VERSION
            );
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("Firecracker v{}", squib_vmm::FIRECRACKER_API_VERSION);
            println!("squib v{}\n", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        // squib's state files are squib's own format (not Firecracker's): the version
        // printed is squib's format version.
        Ok(Invocation::SnapshotVersion) => {
            println!("v{}", squib_snapshot::SNAPSHOT_VERSION);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::DescribeSnapshot(path)) => {
            let described = squib_snapshot::read_state_file(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| squib_snapshot::describe(&bytes).map_err(|e| e.to_string()));
            return match described {
                Ok(version) => {
                    println!("v{version}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Failed to get snapshot data version: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Ok(Invocation::Run(args)) => args,
        Err(message) => {
            eprintln!("Arguments parsing error: {message}\n\nFor more information try --help.");
            return ExitCode::from(EXIT_ARGUMENT_PARSING);
        }
    };
    let level = match args.level.as_deref().map(str::parse::<LogLevel>) {
        None => LogLevel::Info,
        Some(Ok(level)) => level,
        Some(Err(e)) => {
            eprintln!("Invalid value for level: {e}");
            return ExitCode::from(EXIT_BAD_CONFIGURATION);
        }
    };
    let log_options = LogOptions {
        instance_id: args.id.clone(),
        level,
        show_level: args.show_level,
        show_log_origin: args.show_log_origin,
        module: args.module.clone(),
    };
    let logger = match Logger::install(log_options, args.log_path.as_deref()) {
        Ok(logger) => logger,
        Err(e) => {
            eprintln!("Logger error: Failed to open target file: {e}");
            return ExitCode::from(EXIT_BAD_CONFIGURATION);
        }
    };
    tracing::info!(
        "Running squib v{} (Firecracker API v{})",
        env!("CARGO_PKG_VERSION"),
        squib_vmm::FIRECRACKER_API_VERSION
    );

    if let Err(e) = seccomp::init(args.no_seccomp, args.seccomp_filter.as_deref()) {
        tracing::error!("Seccomp error: {e}");
        return ExitCode::from(EXIT_GENERIC_ERROR);
    }
    // Device backends confine their threads through this one hook.
    squib_vhost::set_thread_hook(|_| seccomp::apply_current(seccomp::ThreadKind::Backend));
    // The API thread first, before any filter: it binds and answers while the VMM side is
    // still being set up, and runs under its own filter alone.
    let mut started = match prepare(*args, logger) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_GENERIC_ERROR);
        }
    };
    // The VMM side (its filter, the runtime's threads) is set up once the API thread has
    // bound its socket and is filtered: until then the API's start has the CPU to itself
    // (reads are answered from the VM view without the VMM; requests for it queue).
    if let Some(ready) = started.api_ready.take() {
        let bound = ready
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("The API thread ended before serving")));
        if let Err(e) = bound {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_GENERIC_ERROR);
        }
    }
    // Installed once, here: the runtime's threads inherit it (attaching a filter costs the
    // kernel more than any other start-up step).
    seccomp::apply_current(seccomp::ThreadKind::Vmm);
    // The VMM runtime: every worker and blocking thread runs under the VMM filter.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fc_vmm")
        .on_thread_start(|| seccomp::apply_current(seccomp::ThreadKind::Vmm))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("Cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_GENERIC_ERROR);
        }
    };
    // Boxed: `run`'s state (~28 KiB, most of it the select and the config replay) lives on
    // the heap once instead of being moved through `main`'s and `block_on`'s frames, each
    // of which would touch (and keep resident) that much more of the main stack.
    let ending = match runtime.block_on(Box::pin(run(started))) {
        Ok(ending) => ending,
        Err(e) => {
            tracing::error!("{e:#}");
            Ending::Code(EXIT_GENERIC_ERROR)
        }
    };
    // Dropping the runtime drops the VMM task, and with it the QEMU child (killed on drop).
    drop(runtime);
    match ending {
        Ending::Code(code) => ExitCode::from(code),
        Ending::Signal(signal) => die_by(signal),
    }
}

/// How squib ends: with an exit code, or killed by a signal it cleaned up after.
enum Ending {
    Code(u8),
    Signal(libc::c_int),
}

/// Upstream installs no SIGTERM/SIGINT handler, so its parent sees death by the signal. squib
/// caught it to stop QEMU and write the metrics first; now it dies by the same signal, its
/// default disposition restored. Where that does not kill (PID 1 of a PID namespace ignores
/// its own default-disposition signals), the shell's convention: 128 + the signal.
fn die_by(signal: libc::c_int) -> ExitCode {
    // SAFETY: SIG_DFL is a valid disposition for SIGTERM/SIGINT; the runtime that had handlers
    // installed is gone, and no other thread relies on them.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    // SAFETY: raise takes no pointers; it signals this very thread.
    unsafe { libc::raise(signal) };
    ExitCode::from(128 + signal as u8)
}

fn engine_from(args: &RunArgs) -> anyhow::Result<squib_qemu::QemuEngine> {
    let accel = args
        .accel
        .as_deref()
        .unwrap_or("auto")
        .parse::<squib_qemu::AccelChoice>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let binary = args
        .qemu
        .clone()
        .unwrap_or_else(|| squib_qemu::DEFAULT_QEMU_BINARY.into());
    Ok(squib_qemu::QemuEngine::new(squib_qemu::EngineConfig {
        qemu_binary: binary,
        accel,
        instance_id: args.id.clone(),
        sandbox: !args.no_seccomp,
        ..Default::default()
    }))
}

fn action_timeout() -> Duration {
    std::env::var(ENV_ACTION_TIMEOUT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(squib_api::DEFAULT_ACTION_TIMEOUT)
}

/// The API thread's bind (and filter) outcome.
type ApiReady = std::sync::mpsc::Receiver<anyhow::Result<()>>;

/// What `prepare` set up for `run`.
struct Prepared {
    args: RunArgs,
    /// The engine's QEMU probe runs on the VMM runtime, which `prepare` does not have yet.
    probe: squib_qemu::QemuEngine,
    vmm: Vmm<squib_qemu::QemuEngine>,
    metrics: Arc<MetricsRegistry>,
    controller: Controller,
    api_ended: Option<tokio::sync::oneshot::Receiver<()>>,
    api_ready: Option<ApiReady>,
    config_done: tokio::sync::oneshot::Sender<()>,
}

/// The VMM (not yet running) and the API thread serving it, set up on the main thread before
/// the VMM filter and runtime: requests queue for the VMM until `run` starts it.
fn prepare(args: RunArgs, logger: Logger) -> anyhow::Result<Prepared> {
    if args.boot_timer {
        tracing::warn!(
            "--boot-timer: squib offers no boot-timer device to the guest; the flag has no effect."
        );
    }
    let engine = engine_from(&args)?;
    let probe = engine.clone();
    let (mut vmm, handle) = Vmm::new(args.id.clone(), engine);
    let metrics = vmm.metrics();
    install_panic_metrics(metrics.clone());
    seccomp::set_reporting(logger.clone(), metrics.clone());
    vmm.set_logger_control(Arc::new(logger));
    vmm.set_pci_enabled(args.enable_pci);
    // Upstream's default MMDS limit is the API payload limit.
    vmm.set_mmds_size_limit(
        args.mmds_size_limit
            .unwrap_or(args.http_api_max_payload_size),
    );
    if let Some(path) = &args.metadata {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Unable to read the metadata file {}", path.display()))?;
        let data: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("Invalid JSON in the metadata file {}", path.display()))?;
        vmm.put_metadata(data).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(path) = &args.metrics_path {
        vmm.configure_metrics(MetricsConfig {
            metrics_path: path.to_string_lossy().into_owned(),
            emit_id: false,
            properties: None,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let controller = Controller::new(handle, action_timeout());
    // Upstream reports the start-up times when its API server starts.
    report_startup_times(&metrics, &args);

    // While `--config-file` boots, the socket is bound but not served: as upstream's API
    // requests wait behind that boot, `GET /` first answers once it is done.
    let (config_done, config_wait) = tokio::sync::oneshot::channel::<()>();
    let config_wait = args.config_file.is_some().then_some(config_wait);
    // The API thread ends only if its server fails: the sender is dropped with the thread.
    let (api_ready, api_ended) = if args.no_api {
        (None, None)
    } else {
        let limits = squib_api::ServerLimits {
            max_payload: args.http_api_max_payload_size,
            max_connections: connection_cap(),
        };
        let (ready, ended) = spawn_api_thread(
            args.api_sock.clone(),
            controller.clone(),
            limits,
            config_wait,
        )?;
        (Some(ready), Some(ended))
    };
    Ok(Prepared {
        args,
        probe,
        vmm,
        metrics,
        controller,
        api_ended,
        api_ready,
        config_done,
    })
}

async fn run(prepared: Prepared) -> anyhow::Result<Ending> {
    let Prepared {
        args,
        probe,
        vmm,
        metrics,
        controller,
        mut api_ended,
        api_ready: _,
        config_done,
    } = prepared;
    probe.probe_in_background();
    let mut vmm_task = tokio::spawn(vmm.run());

    if let Some(path) = &args.config_file {
        let text = read_config_file(path)?;
        // Boxed: only a config-file start needs this future's state.
        Box::pin(squib_api::config_file::replay(&controller, &text))
            .await
            .context("Configuring the microVM from the config file failed")?;
    }
    let _ = config_done.send(());
    drop(controller);

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let finished = tokio::select! {
        outcome = &mut vmm_task => Ok(outcome.context("the VMM loop panicked")?),
        // The server never ends on its own; if it panics, say so and end with an error
        // rather than as if the client had finished.
        ended = async {
            match api_ended.as_mut() {
                Some(ended) => ended.await,
                None => std::future::pending().await,
            }
        } => {
            anyhow::bail!("The API server stopped unexpectedly: {ended:?}");
        }
        _ = terminate.recv() => Err(Ending::Signal(libc::SIGTERM)),
        _ = interrupt.recv() => Err(Ending::Signal(libc::SIGINT)),
        // Upstream handles SIGHUP: it counts it and exits with 156.
        _ = hangup.recv() => {
            metrics.values.signals.sighup.set(1);
            Err(Ending::Code(156))
        }
    };
    let ending = match finished {
        Ok(outcome) => Ending::Code(exit_code(outcome).await),
        Err(ending) => {
            tracing::info!("Terminated by a signal.");
            vmm_task.abort();
            // Let the aborted VMM task drop its VM (and kill QEMU) before the process exits.
            let _ = vmm_task.await;
            // The VMM loop can no longer write the exit line; write it here.
            if let Err(e) = metrics.flush_exit() {
                tracing::warn!("Metrics error: {e}");
            }
            ending
        }
    };
    Ok(ending)
}

async fn exit_code(outcome: VmmExit) -> u8 {
    match outcome {
        VmmExit::Vm(VmExit::GuestShutdown) => {
            tracing::info!("Guest shut down; exiting.");
            0
        }
        VmmExit::Vm(VmExit::EngineFailed(reason)) => {
            tracing::error!("The VM engine stopped unexpectedly: {reason}");
            EXIT_GENERIC_ERROR
        }
        VmmExit::FatalError(reason) => {
            tracing::error!("{reason}");
            // The client's 400 is already queued on its connection; let it go out.
            tokio::time::sleep(Duration::from_millis(100)).await;
            EXIT_GENERIC_ERROR
        }
        VmmExit::NoMoreActions => 0,
    }
}

/// `api_server.process_startup_time_us` and `_cpu_us` from the start-time flags, as upstream
/// computes them (monotonic and process CPU clocks, in microseconds).
fn report_startup_times(metrics: &MetricsRegistry, args: &RunArgs) {
    if let Some(start) = args.start_time_us {
        let now = squib_metrics::clock_us(libc::CLOCK_MONOTONIC);
        metrics
            .values
            .api_server
            .process_startup_time_us
            .set(now.saturating_sub(start));
    }
    if let Some(start) = args.start_time_cpu_us {
        let now = squib_metrics::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
        metrics
            .values
            .api_server
            .process_startup_time_cpu_us
            .set(now.saturating_sub(start) + args.parent_cpu_time_us.unwrap_or(0));
    }
}

/// A panic sets `vmm.panic_count` and writes a last metrics line, as upstream does.
fn install_panic_metrics(metrics: Arc<MetricsRegistry>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        metrics.values.vmm.panic_count.set(1);
        let _ = metrics.try_flush();
        previous(info);
    }));
}

/// Open API connections allowed at once: [`squib_api::DEFAULT_MAX_CONNECTIONS`], fewer when
/// the descriptor limit is low, so that the connections alone never use up the descriptors
/// that QEMU's pipes, the QMP socket and snapshot files need (half of what is left after 64).
fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft.saturating_sub(64) / 2).clamp(4, squib_api::DEFAULT_MAX_CONNECTIONS)
}

/// The API server on its own thread (`fc_api`) and runtime, under the API filter once its
/// socket is bound (it then only accepts connections and moves bytes); requests reach the VMM
/// through the controller's channels. Returns the bind outcome, and a receiver that completes
/// only if the server ends (it never does on its own) or the thread panics.
fn spawn_api_thread(
    socket: std::path::PathBuf,
    controller: Controller,
    limits: squib_api::ServerLimits,
    start: Option<tokio::sync::oneshot::Receiver<()>>,
) -> anyhow::Result<(ApiReady, tokio::sync::oneshot::Receiver<()>)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("fc_api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("Cannot start the API runtime: {e}")));
                    return;
                }
            };
            // Boxed, as `run` in `main`: the server's state on the heap, not copied
            // through this thread's stack frames.
            runtime.block_on(Box::pin(async move {
                let listener = match squib_api::bind(&socket) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(
                            "Failed to open the API socket at: {}. Check that it is not already used.",
                            socket.display()
                        );
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
                        return;
                    }
                };
                seccomp::apply_current(seccomp::ThreadKind::Api);
                let _ = ready_tx.send(Ok(()));
                if let Some(start) = start {
                    // Sent or dropped, either way the config boot is over.
                    let _ = start.await;
                }
                squib_api::serve_limited(listener, controller, limits).await;
            }));
            drop(ended_tx);
        })
        .context("Cannot start the API thread")?;
    Ok((ready_rx, ended_rx))
}

fn read_config_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("Unable to read the config file {}", path.display()))
}
