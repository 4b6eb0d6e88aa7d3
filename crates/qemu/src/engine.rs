//! [`QemuEngine`]: squib's [`Engine`] on QEMU, and [`QemuVm`], the handle of one running guest.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use squib_metrics::{DeviceClass, Fixed, MetricsRegistry};
use squib_vmm::action::DeviceKind;
use squib_vmm::engine::HotplugDevice;
use squib_vmm::resources::balloon::BalloonStats;
use squib_vmm::resources::drive::{Drive, DriveBackend, IoEngine};
use squib_vmm::resources::machine_config::HugePages;
use squib_vmm::resources::pci::{PciLayout, device_key};
use squib_vmm::{Engine, EngineError, ExitWatch, RunningVm, VmExit, VmResources};
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};

use squib_mmds::Mmds;
use squib_vmm::resources::rate_limiter::RateLimiterConfig;

use crate::accel::{Accel, AccelChoice};
use crate::caps::Capabilities;
use crate::devices::DeviceState;
use crate::net;
use crate::plan::{self, ConsoleTarget, DriveNames, LaunchInputs, LaunchPlan};
use crate::process::{ProcessExit, QemuProcess};
use crate::serial::SerialRelay;
use squib_qmp::{EarlyCommand, QmpClient, QmpError, ShutdownEvent};

/// The QEMU binary used when the configuration names none.
pub const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";
/// How long QEMU may take to answer on its QMP socket.
pub(crate) const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After QEMU exits, how long to wait for its last QMP events.
const EVENTS_DRAIN: Duration = Duration::from_secs(1);

/// How squib runs QEMU; filled by the binary from its flags and environment.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The QEMU program (`qemu-system-x86_64` from `PATH` by default).
    pub qemu_binary: PathBuf,
    pub accel: AccelChoice,
    /// Where the guest's serial console goes.
    pub console: ConsoleTarget,
    /// How long QEMU may take to become reachable over QMP.
    pub startup_timeout: Duration,
    /// The microVM's id (`--id`): MMDS session tokens are bound to it.
    pub instance_id: String,
    /// QEMU's own seccomp sandbox (`-sandbox`, see `SANDBOX` in `plan/argv.rs`); off only with
    /// squib's `--no-seccomp`.
    pub sandbox: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            qemu_binary: PathBuf::from(DEFAULT_QEMU_BINARY),
            accel: AccelChoice::Auto,
            console: ConsoleTarget::Stdio,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            instance_id: "anonymous-instance".to_string(),
            sandbox: true,
        }
    }
}

/// Starts guests on QEMU's `microvm` machine.
#[derive(Clone, Debug, Default)]
pub struct QemuEngine {
    config: EngineConfig,
    /// What the QEMU binary offers, probed once (see [`QemuEngine::probe_in_background`]).
    caps: Arc<tokio::sync::OnceCell<Capabilities>>,
}

impl QemuEngine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            caps: Arc::default(),
        }
    }

    /// Starts probing the QEMU binary on the current tokio runtime, if there is one and the
    /// cache has nothing for this executable (clones of the engine share the outcome). squib
    /// calls it once its API is up: the probe's QEMU costs descriptors and CPU that the API's
    /// start should not compete with; a start that comes first probes itself. A cached
    /// entry is only read by the first launch.
    pub fn probe_in_background(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (caps, qemu) = (self.caps.clone(), self.config.qemu_binary.clone());
            runtime.spawn(async move {
                if Capabilities::need_probe(&qemu) {
                    caps.get_or_init(|| Capabilities::load(&qemu)).await;
                }
            });
        }
    }

    async fn capabilities(&self) -> &Capabilities {
        self.caps
            .get_or_init(|| Capabilities::load(&self.config.qemu_binary))
            .await
    }
}

/// One running guest. Dropping it kills QEMU.
pub struct QemuVm {
    // Fields drop in this order: QMP first, then the process (killed), then the socket dir.
    // Shared with the tasks that finish hot-unplugs.
    qmp: Arc<QmpClient>,
    process: QemuProcess,
    drives: Vec<(String, DriveNames)>,
    // One virtio-net device per network interface; dropped (stopped) after QEMU is killed.
    nets: Vec<net::NetInterface>,
    // The vsock backend; stopped after QEMU is killed.
    vsock: Option<squib_vsock::Vsock>,
    mmds: Option<Arc<Mmds>>,
    // Writes `serial_out_path`; stopped after QEMU is killed.
    serial: Option<SerialRelay>,
    devices: DeviceState,
    /// Root ports and pluggable devices of a PCI machine.
    pci: Option<crate::hotplug::PciHotplug>,
    /// The guest has a virtio-mem device.
    memory_hotplug: bool,
    /// The guest's RAM (QEMU maps it; squib reads it for snapshots) and the CPU it runs.
    snapshot: crate::snapshot::Snapshottable,
    _runtime_dir: TempDir,
}

impl QemuVm {
    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// QEMU's names (block node, device id) for the drive with this Firecracker id.
    pub fn drive_names(&self, drive_id: &str) -> Option<&DriveNames> {
        self.drives
            .iter()
            .find(|(id, _)| id == drive_id)
            .map(|(_, names)| names)
    }

    /// The network interfaces' devices, in configuration order: their counters are the
    /// `net_⟨iface_id⟩` metrics.
    pub(crate) fn net_devices(&self) -> impl Iterator<Item = &Arc<squib_net::NetShared>> + '_ {
        self.nets.iter().map(|n| &n.shared)
    }

    /// The guest-facing MMDS (its counters are the `mmds` metrics), when an interface has it.
    pub(crate) fn mmds(&self) -> Option<&Arc<Mmds>> {
        self.mmds.as_ref()
    }

    /// True when QEMU says the vCPUs run (QMP `query-status`).
    pub async fn is_running(&self) -> Result<bool, EngineError> {
        self.qmp.is_running().await.map_err(engine_error)
    }
}

impl RunningVm for QemuVm {
    fn register_metrics(&self, metrics: &MetricsRegistry) {
        for device in self.net_devices() {
            let id = device.iface_id().to_string();
            let device = device.clone();
            metrics.register_device(
                DeviceClass::Net,
                &id,
                Arc::new(move || device.metrics().snapshot()),
            );
        }
        if let Some(mmds) = self.mmds().cloned() {
            metrics.set_section_source(Fixed::Mmds, Arc::new(move || mmds.metrics().snapshot()));
        }
        if let Some(vsock) = &self.vsock {
            let counters = vsock.metrics().clone();
            metrics.set_section_source(Fixed::Vsock, Arc::new(move || counters.snapshot()));
        }
        if let Some(serial) = &self.serial {
            let counters = serial.counters().clone();
            metrics.set_section_source(Fixed::Uart, Arc::new(move || counters.snapshot()));
        }
    }

    async fn block_stats(
        &mut self,
    ) -> Result<Vec<(String, squib_metrics::BlockCounters)>, EngineError> {
        let stats = self.qmp.query_blockstats().await.map_err(engine_error)?;
        Ok(crate::block_stats::by_drive(&self.drives, &stats))
    }

    async fn save_snapshot(
        &mut self,
        device_state: &std::path::Path,
        memory: &std::fs::File,
    ) -> Result<(), EngineError> {
        self.snapshot
            .save(&self.qmp, self.process.pid(), device_state, memory)
            .await
    }

    async fn pause(&mut self) -> Result<(), EngineError> {
        self.qmp.stop().await.map_err(engine_error)
    }

    async fn resume(&mut self) -> Result<(), EngineError> {
        self.qmp.cont().await.map_err(engine_error)
    }

    async fn send_ctrl_alt_del(&mut self) -> Result<(), EngineError> {
        self.qmp.send_ctrl_alt_del().await.map_err(engine_error)
    }

    async fn swap_drive(&mut self, drive: &Drive) -> Result<(), EngineError> {
        let names = self
            .drive_names(&drive.id)
            .cloned()
            .ok_or(EngineError::DeviceNotFound)?;
        self.devices.swap_drive(&self.qmp, &names, drive).await
    }

    async fn set_drive_rate_limiter(
        &mut self,
        drive_id: &str,
        limiter: Option<RateLimiterConfig>,
    ) -> Result<(), EngineError> {
        let names = self
            .drive_names(drive_id)
            .ok_or(EngineError::DeviceNotFound)?;
        self.devices
            .set_drive_rate_limiter(&self.qmp, names, limiter.as_ref())
            .await
    }

    async fn set_memory_hotplug_size(&mut self, requested_mib: u32) -> Result<(), EngineError> {
        if !self.memory_hotplug {
            return Err(EngineError::DeviceNotFound);
        }
        self.qmp
            .qom_set(
                &format!("/machine/peripheral/{}", plan::MEMORY_HOTPLUG_ID),
                "requested-size",
                serde_json::json!(u64::from(requested_mib) << 20),
            )
            .await
            .map_err(engine_error)
    }

    async fn hotplug(&mut self, device: HotplugDevice<'_>) -> Result<(), EngineError> {
        let Some(pci) = self.pci.as_mut() else {
            return Err(EngineError::Failed(
                "the guest has no PCI machine".to_string(),
            ));
        };
        match device {
            HotplugDevice::Drive(drive) => {
                if let Some(names) = pci.plug_drive(&self.qmp, drive).await? {
                    self.drives.push((drive.id.clone(), names));
                }
            }
            HotplugDevice::Net(iface) => {
                let served = pci.plug_net(&self.qmp, iface).await?;
                self.nets.push(served);
            }
            HotplugDevice::Pmem(pmem, size) => pci.plug_pmem(&self.qmp, pmem, size).await?,
        }
        Ok(())
    }

    async fn unplug(&mut self, kind: DeviceKind, id: &str) -> Result<(), EngineError> {
        let Some(pci) = self.pci.as_mut() else {
            return Err(EngineError::Failed(
                "the guest has no PCI machine".to_string(),
            ));
        };
        if kind == DeviceKind::Pmem {
            // QEMU refuses `device_del` on every virtio memory device.
            return Err(EngineError::Failed(
                "QEMU cannot unplug virtio-pmem devices".to_string(),
            ));
        }
        let key = device_key(kind, id);
        // The net device serves the guest until the guest has let the card go.
        let served = match kind {
            DeviceKind::NetworkInterface => self
                .nets
                .iter()
                .position(|n| n.shared.iface_id() == id)
                .map(|at| self.nets.remove(at)),
            _ => None,
        };
        if let Err((e, served)) = pci.unplug(&self.qmp, &key, served).await {
            self.nets.extend(served);
            return Err(e);
        }
        if kind == DeviceKind::Drive {
            self.drives.retain(|(drive_id, _)| drive_id != id);
        }
        Ok(())
    }

    fn pci_layout(&self) -> Option<PciLayout> {
        self.pci.as_ref().map(|pci| pci.layout())
    }

    fn unplugging(&self) -> Vec<String> {
        self.pci
            .as_ref()
            .map_or_else(Vec::new, |pci| pci.unplugging())
    }

    fn plugged_memory_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.memory_hotplug.then(|| self.qmp.memory_size_events())
    }

    async fn set_balloon_target(&mut self, amount_mib: u32) -> Result<(), EngineError> {
        self.devices.set_balloon_target(&self.qmp, amount_mib).await
    }

    async fn set_balloon_stats_interval(&mut self, seconds: u16) -> Result<(), EngineError> {
        self.devices
            .set_balloon_stats_interval(&self.qmp, seconds)
            .await
    }

    async fn balloon_stats(&mut self) -> Result<BalloonStats, EngineError> {
        self.devices.balloon_stats(&self.qmp).await
    }

    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<RateLimiterConfig>,
        tx: Option<RateLimiterConfig>,
    ) -> Result<(), EngineError> {
        let device = self
            .net_devices()
            .find(|d| d.iface_id() == iface_id)
            .ok_or(EngineError::DeviceNotFound)?;
        device.update_rate_limiters(rx.map(net::limiter_config), tx.map(net::limiter_config));
        Ok(())
    }
}

impl Engine for QemuEngine {
    type Vm = QemuVm;

    async fn restore(
        &mut self,
        resources: &VmResources,
        source: squib_vmm::RestoreSource<'_>,
    ) -> Result<(QemuVm, ExitWatch), EngineError> {
        self.launch(resources, Some(source)).await
    }

    async fn start(&mut self, resources: &VmResources) -> Result<(QemuVm, ExitWatch), EngineError> {
        self.launch(resources, None).await
    }
}

impl QemuEngine {
    /// Boots `resources`, or restores them from `restore` (the same device set).
    async fn launch(
        &self,
        resources: &VmResources,
        restore: Option<squib_vmm::RestoreSource<'_>>,
    ) -> Result<(QemuVm, ExitWatch), EngineError> {
        warn_unhonoured(resources);
        let cpu_model = squib_cpu_template::CpuModel::for_resources(resources);
        if let Some(model) = &cpu_model {
            crate::cpu_model::warn_unexpressible(model);
        }
        let io_uring_fallback = io_uring_fallback(resources);
        let resources = io_uring_fallback.as_ref().unwrap_or(resources);
        let console = plan::console_target(resources, &self.config.console);
        let accel = self.config.accel.resolve();
        tracing::info!(%accel, requested = %self.config.accel, "accelerator chosen");
        let caps = self.capabilities().await;
        let runtime_dir = tempfile::Builder::new()
            .prefix("squib-qemu-")
            .tempdir()
            .map_err(|e| {
                EngineError::Failed(format!("cannot create QEMU's runtime directory: {e}"))
            })?;
        let qmp_socket = runtime_dir.path().join("qmp.sock");
        // A serial output file is written by squib, through the serial rate limiter.
        let serial = match resources
            .serial
            .as_ref()
            .and_then(|s| s.serial_out_path.as_ref().map(|p| (p, s.rate_limiter)))
        {
            Some((path, limiter)) => Some(
                SerialRelay::start(
                    &runtime_dir.path().join("serial.sock"),
                    Path::new(path),
                    limiter,
                )
                .map_err(|e| EngineError::Failed(e.to_string()))?,
            ),
            None => None,
        };
        let console = match &serial {
            Some(relay) => ConsoleTarget::Socket(relay.socket().to_path_buf()),
            None => console,
        };
        let mem_bytes = resources.machine_config.mem_bytes().ok_or_else(|| {
            EngineError::Failed(format!(
                "a memory size of {} MiB does not fit in 64 bits",
                resources.machine_config.mem_size_mib
            ))
        })?;
        let pmem_sizes = pmem_sizes(resources)?;
        let restoring = match &restore {
            Some(source) => Some(crate::snapshot::decode_restore(source.device_state, accel)?),
            None => None,
        };
        let ram = match &restore {
            Some(source) => crate::snapshot::GuestRam::for_restore(
                source.memory_file,
                mem_bytes,
                crate::snapshot::private_mapping_allowed(resources),
                caps,
            )?,
            None => crate::snapshot::GuestRam::new(mem_bytes)?,
        };
        // squib listens on QMP's socket and QEMU inherits it: the connection below is queued
        // before QEMU even runs, and answered as soon as its monitor is up.
        let qmp_listener = std::os::unix::net::UnixListener::bind(&qmp_socket)
            .map_err(|e| EngineError::Failed(format!("cannot create QEMU's QMP socket: {e}")))?;
        let plan = LaunchPlan::new(
            resources,
            &LaunchInputs {
                accel,
                caps,
                runtime_dir: runtime_dir.path(),
                qmp_listener: qmp_listener.as_raw_fd(),
                console,
                tsc_khz: match accel {
                    Accel::Tcg => crate::host_tsc::host_tsc_khz(),
                    Accel::Kvm => None,
                },
                pmem_sizes: &pmem_sizes,
                memory: ram.backend(caps),
                sandbox: self.config.sandbox,
                restore: restoring.as_ref().map(|(meta, _)| meta),
            },
        )?;
        let reusable = crate::snapshot::may_reuse_ram_part(resources, plan.pci_layout.is_some());
        let snapshot = crate::snapshot::Snapshottable::new(
            ram,
            plan.engine_meta(),
            restoring
                .as_ref()
                .filter(|_| reusable)
                .map(|(_, stream)| *stream),
        );
        // The devices listen before QEMU starts: its vhost-user netdevs connect at start-up.
        let mmds = net::mmds_service(resources, &self.config.instance_id);
        let nets = net::serve_devices(resources, runtime_dir.path(), mmds.as_ref())?;
        // So does the vsock backend: QEMU connects to it while it starts.
        let vsock = start_vsock(resources, runtime_dir.path())?;
        // vhost-user drives have no block node in QEMU: their backend owns the I/O, and their
        // metrics section is `vhost_user_block_⟨id⟩`, not `block_⟨id⟩`.
        let drives = resources
            .drives
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.backend, DriveBackend::File { .. }))
            .map(|(i, d)| (d.id.clone(), plan::drive_names(i, &d.id)))
            .collect();

        let args = plan::argv::render(&plan);
        // A restore's device state is in the pipe before QEMU starts.
        let incoming = match &restoring {
            Some((_, stream)) => Some(crate::snapshot::IncomingPipe::new(stream)?),
            None => None,
        };
        // QEMU also inherits squib's connections to vhost-user drive backends.
        let inherited: Vec<_> = std::iter::once(qmp_listener.as_raw_fd())
            .chain(incoming.as_ref().map(|pipe| pipe.qemu_fd()))
            .chain(resources.drives.iter().filter_map(|d| match &d.backend {
                DriveBackend::VhostUser { connection, .. } => Some(connection.raw_fd()),
                DriveBackend::File { .. } => None,
            }))
            .collect();
        // A boot's kernel pages are allocated while QEMU starts (crate::prealloc).
        if restore.is_none()
            && let (Some(boot), Some(Ok(memfd))) = (
                &resources.boot_source,
                snapshot.ram.memfd().map(std::fs::File::try_clone),
            )
        {
            crate::prealloc::spawn_for_kernel(memfd, mem_bytes, boot.clone());
        }
        let process = QemuProcess::spawn(&self.config.qemu_binary, &args, &inherited)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        // QEMU holds the only listening descriptor now: if it dies, the connection fails.
        drop(qmp_listener);
        let incoming_fd = incoming.map(|pipe| {
            let fd = pipe.qemu_fd();
            pipe.finish();
            fd
        });
        // A restore's first commands go out with QMP's negotiation.
        let early = incoming_fd.map_or_else(Vec::new, crate::snapshot::incoming_commands);
        let (qmp, answers) =
            connect_qmp(&process, &qmp_socket, self.config.startup_timeout, &early).await?;

        if incoming_fd.is_some() {
            let started = answers
                .into_iter()
                .try_for_each(|answer| answer.map(drop))
                .map_err(|e| EngineError::Failed(e.to_string()));
            let loaded = match started {
                Ok(()) => crate::snapshot::wait_for_migration(&qmp).await,
                Err(e) => Err(e),
            };
            loaded.map_err(|e| match process.try_exit() {
                Some(exit) => EngineError::Failed(format!("{e}; QEMU ended: {}", exit.describe())),
                None => e,
            })?;
        }
        let devices = DeviceState::new(resources);
        devices
            .apply_initial(&qmp, resources)
            .await
            .map_err(|e| startup_error(&process, e))?;
        if let Some(model) = &cpu_model {
            crate::cpu_model::warn_unapplied(&qmp, model, accel).await;
        }
        let pci = plan.pci_layout.clone().map(|layout| {
            crate::hotplug::PciHotplug::new(
                layout,
                resources,
                runtime_dir.path(),
                io_uring_usable(),
                plan::net_intx(caps, accel),
            )
        });
        if let Some(pci) = &pci {
            pci.record_memaddrs(&qmp, resources).await;
        }
        let memory_hotplug = resources.memory_hotplug.is_some();
        if memory_hotplug {
            // Events only report changes: a restored guest starts with what it had plugged.
            let size = qmp
                .qom_get(
                    &format!("/machine/peripheral/{}", plan::MEMORY_HOTPLUG_ID),
                    "size",
                )
                .await
                .map_err(|e| startup_error(&process, e))?;
            qmp.seed_memory_size(size.as_u64().unwrap_or(0));
        }
        if plan.incoming {
            // A restored guest stays paused until the VMM resumes it.
            tracing::info!(pid = process.pid(), "guest restored, paused");
        } else if !plan.paused {
            // Started without -S: QEMU ran the vCPUs before its monitor took any command.
            tracing::info!(pid = process.pid(), "guest running");
        } else {
            // QEMU started paused (-S): let the vCPUs go and check they do.
            qmp.cont().await.map_err(|e| startup_error(&process, e))?;
            if !qmp
                .is_running()
                .await
                .map_err(|e| startup_error(&process, e))?
            {
                return Err(EngineError::Failed(
                    "QEMU did not report the guest running after `cont`".to_string(),
                ));
            }
            tracing::info!(pid = process.pid(), "guest running");
        }

        let (exit_tx, exit_rx) = oneshot::channel();
        let exited = process.exit_watch();
        let shutdown = qmp.shutdown_events();
        tokio::spawn(async move {
            let exit = exited.await;
            let event = last_shutdown_event(shutdown).await;
            let outcome = classify_exit(&exit, event.as_ref());
            match &outcome {
                VmExit::GuestShutdown => tracing::info!("guest shut down"),
                VmExit::EngineFailed(why) if exit.killed_by_squib => {
                    tracing::debug!(%why, "QEMU stopped")
                }
                VmExit::EngineFailed(why) => tracing::error!(%why, "QEMU failed"),
            }
            let _ = exit_tx.send(outcome);
        });

        Ok((
            QemuVm {
                qmp: Arc::new(qmp),
                process,
                drives,
                nets,
                vsock,
                mmds,
                serial,
                devices,
                pci,
                memory_hotplug,
                snapshot,
                _runtime_dir: runtime_dir,
            },
            exit_rx,
        ))
    }
}

/// Starts squib's vsock backend on its vhost-user socket, when the VM has a vsock device.
fn start_vsock(
    resources: &VmResources,
    runtime_dir: &Path,
) -> Result<Option<squib_vsock::Vsock>, EngineError> {
    let Some(vsock) = &resources.vsock else {
        return Ok(None);
    };
    let spec = squib_vsock::VsockSpec {
        guest_cid: vsock.config.guest_cid,
        uds_path: &vsock.config.uds_path,
        listener: &vsock.listener.0,
    };
    squib_vsock::Vsock::start(&spec, &plan::vsock_socket(runtime_dir))
        .map(Some)
        .map_err(|e| EngineError::Vsock(e.to_string()))
}

/// The size of each pmem backing file. Upstream opens them at `InstanceStart` (read-only
/// when asked), so a missing or unreadable file fails the start here too.
fn pmem_sizes(resources: &VmResources) -> Result<Vec<u64>, EngineError> {
    resources
        .pmem
        .iter()
        .map(|pmem| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!pmem.read_only)
                .open(&pmem.path_on_host)
                .and_then(|file| file.metadata())
                .map(|meta| meta.len())
                .map_err(|e| {
                    EngineError::Failed(format!(
                        "Cannot open the pmem backing file {}: {e}",
                        pmem.path_on_host
                    ))
                })
        })
        .collect()
}

/// How a QEMU exit maps to the guest's fate.
///
/// Status 0 is a guest power-off or reboot (`-no-reboot`), unless QEMU's `SHUTDOWN` event
/// says the host asked for it (a signal to QEMU, QMP `quit`): that is the engine going away.
/// Anything else is an engine failure.
pub(crate) fn classify_exit(exit: &ProcessExit, shutdown: Option<&ShutdownEvent>) -> VmExit {
    if exit.killed_by_squib {
        return VmExit::EngineFailed("QEMU was stopped by squib".to_string());
    }
    if !exit.status.success() {
        return VmExit::EngineFailed(exit.describe());
    }
    match shutdown {
        Some(event) if !event.guest => {
            VmExit::EngineFailed(format!("QEMU stopped on a host request ({})", event.reason))
        }
        _ => VmExit::GuestShutdown,
    }
}

/// Waits (briefly) for QMP to close so the last `SHUTDOWN` event has been read.
async fn last_shutdown_event(
    mut shutdown: watch::Receiver<Option<ShutdownEvent>>,
) -> Option<ShutdownEvent> {
    let _ = tokio::time::timeout(EVENTS_DRAIN, async {
        while shutdown.changed().await.is_ok() {}
    })
    .await;
    shutdown.borrow().clone()
}

/// Connects to QEMU's QMP socket (already listening) and negotiates, sending `early` with
/// the negotiation (see [`QmpClient::connect_with`]; their answers are returned), unless
/// QEMU exits or the deadline passes first.
async fn connect_qmp(
    process: &QemuProcess,
    socket: &std::path::Path,
    timeout: Duration,
    early: &[EarlyCommand],
) -> Result<(QmpClient, Vec<Result<serde_json::Value, QmpError>>), EngineError> {
    let ended = |exit: ProcessExit| {
        EngineError::Failed(format!(
            "QEMU ended before the guest started: {}",
            exit.describe()
        ))
    };
    let exited = process.exit_watch();
    tokio::select! {
        exit = exited => Err(ended(exit)),
        connected = tokio::time::timeout(timeout, QmpClient::connect_with(socket, early)) => match connected {
            Ok(Ok(connected)) => Ok(connected),
            // QEMU closing the socket is QEMU ending: prefer its exit status and last words.
            Ok(Err(err)) => match tokio::time::timeout(EVENTS_DRAIN, process.exit_watch()).await {
                Ok(exit) => Err(ended(exit)),
                Err(_) => Err(EngineError::Failed(format!("cannot talk to QEMU over QMP: {err}"))),
            },
            Err(_) => Err(EngineError::Failed(format!(
                "QEMU did not answer on its QMP socket within {timeout:?}"
            ))),
        },
    }
}

/// A QMP failure during start-up, explained by QEMU's exit when it has died.
fn startup_error(process: &QemuProcess, err: QmpError) -> EngineError {
    match process.try_exit() {
        Some(exit) => EngineError::Failed(format!(
            "QEMU ended before the guest started: {}",
            exit.describe()
        )),
        None => {
            let tail = process.stderr_tail();
            match tail.last() {
                Some(last) => EngineError::Failed(format!("{err} (QEMU said: {last})")),
                None => engine_error(err),
            }
        }
    }
}

fn engine_error(err: QmpError) -> EngineError {
    EngineError::Failed(err.to_string())
}

/// Logs every setting the QEMU engine accepts but does not apply yet.
fn warn_unhonoured(resources: &VmResources) {
    let machine = &resources.machine_config;
    if machine.huge_pages != HugePages::None {
        tracing::warn!(huge_pages = ?machine.huge_pages, "huge pages are not honoured yet: guest memory uses regular pages");
    }
    if machine.smt {
        tracing::warn!("SMT is not honoured yet: every vCPU is a separate core");
    }
    if machine.track_dirty_pages {
        tracing::warn!("dirty page tracking is not honoured yet");
    }
    if let Some(limiter) = resources.entropy.and_then(|e| e.to_config().rate_limiter) {
        if limiter.ops.is_some() {
            tracing::warn!(
                "the entropy device's ops bucket is not honoured: QEMU limits bytes only"
            );
        }
        if limiter
            .bandwidth
            .is_some_and(|b| b.one_time_burst.is_some())
        {
            tracing::warn!("the entropy device's one_time_burst is not honoured");
        }
    }
    if let Some(serial) = &resources.serial
        && serial.serial_out_path.is_none()
        && serial.rate_limiter.is_some_and(|b| b.is_enabled())
    {
        tracing::warn!(
            "the serial rate limiter applies to serial_out_path only: the console on stdout is not limited"
        );
    }
}

/// True unless the host kernel has io_uring switched off (`kernel.io_uring_disabled` = 2, or
/// 1 for an unprivileged process). QEMU 7.2 itself is built with io_uring here.
fn io_uring_usable() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .unwrap_or(0);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    disabled == 0 || (disabled == 1 && root)
}

/// `io_engine: Async` is io_uring; where the host refuses io_uring, the drives fall back to
/// the thread pool (`Sync`), with one warning. `None`: nothing to change.
fn io_uring_fallback(resources: &VmResources) -> Option<VmResources> {
    let any_async = resources.drives.iter().any(|d| {
        matches!(
            d.backend,
            DriveBackend::File {
                io_engine: IoEngine::Async,
                ..
            }
        )
    });
    if !any_async || io_uring_usable() {
        return None;
    }
    tracing::warn!("io_uring is disabled on this host: Async drives use a thread pool");
    let mut fallback = resources.clone();
    let drives: Vec<_> = fallback
        .drives
        .iter()
        .cloned()
        .map(|mut d| {
            if let DriveBackend::File { io_engine, .. } = &mut d.backend {
                *io_engine = IoEngine::Sync;
            }
            d
        })
        .collect();
    for drive in drives {
        // Same ids, same root rule: replacing cannot fail.
        let _ = fallback.drives.insert(drive);
    }
    Some(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn exit(raw: i32) -> ProcessExit {
        ProcessExit {
            status: ExitStatus::from_raw(raw),
            stderr_tail: vec!["qemu-system-x86_64: something broke".into()],
            killed_by_squib: false,
        }
    }

    fn event(guest: bool, reason: &str) -> ShutdownEvent {
        ShutdownEvent {
            guest,
            reason: reason.into(),
        }
    }

    #[test]
    fn clean_exit_is_a_guest_shutdown() {
        assert_eq!(classify_exit(&exit(0), None), VmExit::GuestShutdown);
        for reason in ["guest-shutdown", "guest-reset"] {
            assert_eq!(
                classify_exit(&exit(0), Some(&event(true, reason))),
                VmExit::GuestShutdown
            );
        }
    }

    #[test]
    fn host_requested_stop_is_not_a_guest_shutdown() {
        assert_eq!(
            classify_exit(&exit(0), Some(&event(false, "host-signal"))),
            VmExit::EngineFailed("QEMU stopped on a host request (host-signal)".into())
        );
    }

    #[test]
    fn failures_carry_status_and_stderr() {
        assert_eq!(
            classify_exit(&exit(1 << 8), Some(&event(true, "guest-shutdown"))),
            VmExit::EngineFailed(
                "QEMU exited with status 1: qemu-system-x86_64: something broke".into()
            )
        );
        let VmExit::EngineFailed(why) = classify_exit(&exit(libc::SIGSEGV), None) else {
            panic!("a crash is a failure");
        };
        assert!(
            why.starts_with("QEMU was killed by signal 11 (SIGSEGV)"),
            "{why}"
        );
        let mut killed = exit(libc::SIGKILL);
        killed.killed_by_squib = true;
        assert_eq!(
            classify_exit(&killed, None),
            VmExit::EngineFailed("QEMU was stopped by squib".into())
        );
    }

    #[tokio::test]
    async fn unsupported_resources_fail_before_spawning() {
        let mut engine = QemuEngine::new(EngineConfig {
            qemu_binary: "/nonexistent/qemu".into(),
            accel: AccelChoice::Tcg,
            ..EngineConfig::default()
        });
        let err = match engine.start(&VmResources::default()).await {
            Err(err) => err,
            Ok(_) => panic!("started without a kernel"),
        };
        assert_eq!(err, EngineError::MissingKernelConfig);
    }
}
