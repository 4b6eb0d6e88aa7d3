//! The VMM loop: the only owner of VM state. It serves actions one at a time, in arrival
//! order, publishes a [`VmView`] after each, and watches the running guest.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use serde_json::Value;

use crate::action::{
    ActionRequest, ActionResult, CreateSnapshotError, LoadSnapshotError, StartMicroVmError,
    VmmAction, VmmActionError, VmmData,
};
use crate::engine::{Engine, EngineError, ExitWatch, RunningVm, VmExit};
use crate::resources::VmResources;
use crate::resources::balloon::{BalloonStats, BalloonUpdateStatsConfig};
use crate::resources::boot_source::BootSource;
use crate::resources::drive::{BlockDeviceUpdateConfig, DriveBackend, DriveError};
use crate::resources::logger::{LoggerConfig, LoggerConfigError, LoggerControl, NoopLoggerControl};
use crate::resources::machine_config::MachineConfigUpdate;
use crate::resources::metrics::{Metrics, MetricsConfig, MetricsConfigError};
use crate::resources::net::NetworkInterfaceError;
use crate::resources::rate_limiter::RateLimiterConfig;
use crate::resources::vsock::Vsock;
use crate::state::{VmState, VmView};
use squib_metrics::{DeviceClass, LineHeader, MetricsRegistry};
use squib_net::tap::{TapOpener, host_tap_opener};

mod hotplug;
mod snapshot;

/// Depth of the action queue; senders wait when it is full.
pub(crate) const ACTION_QUEUE_DEPTH: usize = 64;

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest ended (or its engine died).
    Vm(VmExit),
    /// Every sender is gone and no guest was ever started.
    NoMoreActions,
    /// An error upstream treats as fatal (a failed snapshot load, docs/api-contract.md §4.3): the client
    /// got its 400 and the process must now exit with code 1.
    FatalError(String),
}

/// What the API side holds: a way to send actions and the latest published [`VmView`].
#[derive(Clone)]
pub struct VmmHandle {
    pub actions: mpsc::Sender<ActionRequest>,
    pub view: Arc<ArcSwap<VmView>>,
    /// The metrics registry, for the API's request counters.
    pub metrics: Arc<MetricsRegistry>,
}

pub struct Vmm<E: Engine> {
    instance_id: String,
    state: VmState,
    resources: VmResources,
    engine: E,
    vm: Option<E::Vm>,
    exit: Option<ExitWatch>,
    published: Arc<ArcSwap<VmView>>,
    actions: mpsc::Receiver<ActionRequest>,
    /// Set by the first call that configures the VM for booting (docs/api-contract.md §4.2).
    boot_path: bool,
    /// Set when an action failed fatally; the loop ends after replying.
    fatal: Option<String>,
    logger: Arc<dyn LoggerControl>,
    open_tap: TapOpener,
    /// Last balloon statistics read from the engine, published for `GET /balloon/statistics`.
    balloon_stats: Option<BalloonStats>,
    /// Ticks at the balloon's statistics polling interval while the guest runs.
    stats_timer: Option<tokio::time::Interval>,
    metrics: Arc<MetricsRegistry>,
    /// Ticks every [`METRICS_PERIOD`] while a guest runs and metrics are configured.
    metrics_timer: Option<tokio::time::Interval>,
    /// What the engine reports of the guest's plugged hot-pluggable memory.
    plugged_memory: Option<tokio::sync::watch::Receiver<u64>>,
    memory_plugged_bytes: u64,
}

/// How often metrics are written while the guest runs (docs/api-contract.md §10.2).
pub(crate) const METRICS_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

impl<E: Engine> Vmm<E> {
    pub fn new(instance_id: String, engine: E) -> (Self, VmmHandle) {
        let (tx, rx) = mpsc::channel(ACTION_QUEUE_DEPTH);
        let published = Arc::new(ArcSwap::from_pointee(VmView::new(instance_id.clone())));
        let metrics = MetricsRegistry::new();
        let vmm = Self {
            instance_id,
            state: VmState::NotStarted,
            resources: VmResources::default(),
            engine,
            vm: None,
            exit: None,
            published: published.clone(),
            actions: rx,
            boot_path: false,
            fatal: None,
            logger: Arc::new(NoopLoggerControl),
            open_tap: host_tap_opener(),
            balloon_stats: None,
            stats_timer: None,
            metrics: metrics.clone(),
            metrics_timer: None,
            plugged_memory: None,
            memory_plugged_bytes: 0,
        };
        (
            vmm,
            VmmHandle {
                actions: tx,
                view: published,
                metrics,
            },
        )
    }

    /// Where `PUT /logger` updates go; the binary installs its process logger here.
    pub fn set_logger_control(&mut self, logger: Arc<dyn LoggerControl>) {
        self.logger = logger;
    }

    /// How TAPs are opened; tests install one that needs no privileges.
    pub fn set_tap_opener(&mut self, open_tap: TapOpener) {
        self.open_tap = open_tap;
    }

    /// `--mmds-size-limit`: the MMDS store limit in bytes of compact JSON.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.resources.mmds.set_limit(limit);
        self.publish();
    }

    /// `--metadata`: the initial MMDS document (the size limit applies).
    pub fn put_metadata(&mut self, data: Value) -> Result<(), VmmActionError> {
        self.resources.mmds.put(data)?;
        self.publish();
        Ok(())
    }

    /// `--enable-pci`: the guest gets a PCI machine, and devices can be hot-plugged.
    pub fn set_pci_enabled(&mut self, enabled: bool) {
        self.resources.pci_enabled = enabled;
        self.publish();
    }

    /// The metrics registry (the binary stores start-up times and signals there).
    pub fn metrics(&self) -> Arc<MetricsRegistry> {
        self.metrics.clone()
    }

    /// `--metrics-path`: configures metrics before the API starts, so `PUT /metrics` then
    /// fails as a reinitialisation, as upstream does.
    pub fn configure_metrics(&mut self, config: MetricsConfig) -> Result<(), VmmActionError> {
        self.set_metrics(config)?;
        self.publish();
        Ok(())
    }

    /// Runs until the guest ends, or until no action can arrive and no guest runs.
    pub async fn run(mut self) -> VmmExit {
        let mut accepting = true;
        loop {
            tokio::select! {
                request = self.actions.recv(), if accepting => match request {
                    Some(ActionRequest { action, reply }) => {
                        let name = action.name();
                        // Boxed: an action's future (a boot, a snapshot) is tens of KiB;
                        // inline, it would make this loop's future as large, and spawning
                        // the loop moves it through the caller's stack, touching those pages
                        // of the main thread's stack for good (idle RSS).
                        let result = Box::pin(self.dispatch(action)).await;
                        if let Err(e) = &result {
                            tracing::debug!(action = name, error = %e, "action failed");
                        }
                        self.publish();
                        if self.fatal.is_some() {
                            // Upstream answers this request and exits: nothing after it gets an
                            // answer (the API sees the channel closed before this reply).
                            self.actions.close();
                        }
                        // The client may have given up (time-out, closed socket); that is fine.
                        let _ = reply.send(result);
                        if let Some(reason) = self.fatal.take() {
                            self.final_metrics();
                            return VmmExit::FatalError(reason);
                        }
                    }
                    None if self.exit.is_none() => {
                        self.final_metrics();
                        return VmmExit::NoMoreActions;
                    }
                    None => accepting = false,
                },
                () = next_tick(&mut self.stats_timer) => {
                    self.refresh_balloon_stats().await;
                    self.publish();
                }
                () = next_tick(&mut self.metrics_timer), if self.state == VmState::Running => {
                    if let Err(e) = self.flush_metrics().await {
                        tracing::warn!("{e}");
                    }
                }
                plugged = next_change(&mut self.plugged_memory) => {
                    match plugged {
                        Some(bytes) => {
                            crate::resources::memory_hotplug::count_plugged_change(
                                &self.metrics.values.memory_hotplug,
                                self.memory_plugged_bytes,
                                bytes,
                            );
                            self.memory_plugged_bytes = bytes;
                        }
                        None => self.plugged_memory = None,
                    }
                    self.publish();
                }
                exit = wait_for_exit(&mut self.exit) => {
                    self.vm = None;
                    self.final_metrics();
                    return VmmExit::Vm(exit);
                }
            }
        }
    }

    fn publish(&self) {
        self.published.store(Arc::new(VmView {
            instance_id: self.instance_id.clone(),
            state: self.state,
            resources: self.resources.clone(),
            balloon_stats: self.balloon_stats.clone(),
            memory_plugged_bytes: self.memory_plugged_bytes,
        }));
    }

    async fn dispatch(&mut self, action: VmmAction) -> ActionResult {
        use VmmAction::*;
        let booted = self.state.is_booted();
        action.check_phase(booted)?;
        if !booted && action.commits_to_boot() {
            self.boot_path = true;
        }
        match action {
            ConfigureBootSource(cfg) => {
                self.resources.boot_source = Some(BootSource::try_from(cfg)?);
                Ok(VmmData::Empty)
            }
            PutMachineConfig(cfg) => self.update_machine_config(&MachineConfigUpdate::from(cfg)),
            PatchMachineConfig(update) => self.update_machine_config(&update),
            PutCpuConfiguration(template) => {
                self.resources.set_cpu_config(template);
                Ok(VmmData::Empty)
            }
            // Hot-plug needs the PCI transport (--enable-pci).
            InsertBlockDevice(_)
            | InsertNetworkDevice(_)
            | InsertPmemDevice(_)
            | RemoveDevice(..)
                if booted && !self.resources.pci_enabled =>
            {
                Err(VmmActionError::PciNotEnabled)
            }
            InsertBlockDevice(cfg) if booted => self.hotplug_drive(cfg).await,
            InsertNetworkDevice(cfg) if booted => self.hotplug_net(cfg).await,
            InsertPmemDevice(cfg) if booted => self.hotplug_pmem(cfg).await,
            InsertBlockDevice(cfg) => {
                self.resources.insert_drive(cfg)?;
                Ok(VmmData::Empty)
            }
            UpdateBlockDevice(update) => self.update_drive(update).await,
            InsertNetworkDevice(cfg) => {
                self.resources.net.insert(cfg, &self.open_tap)?;
                Ok(VmmData::Empty)
            }
            UpdateNetworkInterface(update) => {
                let Some(iface) = self.resources.net.get_mut(&update.iface_id) else {
                    return Err(NetworkInterfaceError::DeviceNotFound.into());
                };
                let vm = self
                    .vm
                    .as_mut()
                    .ok_or(VmmActionError::OperationNotSupportedPreBoot)?;
                vm.update_net_rate_limiters(
                    &update.iface_id,
                    update.rx_rate_limiter,
                    update.tx_rate_limiter,
                )
                .map_err(VmmActionError::InternalVmm)?;
                // As the relay does: a missing limiter or bucket keeps the current one.
                iface.config.rx_rate_limiter =
                    RateLimiterConfig::merged(iface.config.rx_rate_limiter, update.rx_rate_limiter);
                iface.config.tx_rate_limiter =
                    RateLimiterConfig::merged(iface.config.tx_rate_limiter, update.tx_rate_limiter);
                Ok(VmmData::Empty)
            }
            InsertPmemDevice(cfg) => {
                self.resources.insert_pmem(cfg)?;
                Ok(VmmData::Empty)
            }
            // As upstream, only a rate limiter makes the device be looked up. QEMU's
            // virtio-pmem has no rate limiter: the new one is recorded, not applied
            // (docs/deviations.md).
            UpdatePmemDevice(update) if update.rate_limiter.is_none() => Ok(VmmData::Empty),
            UpdatePmemDevice(update) => {
                self.resources
                    .pmem
                    .update_rate_limiter(&update.id, update.rate_limiter)?;
                Ok(VmmData::Empty)
            }
            // Pre-boot it never gets here (post-boot only).
            RemoveDevice(kind, id) => self.unplug(kind, id).await,
            SetVsockDevice(cfg) => {
                // As upstream, the configured device is dropped first, even when the new one
                // is then refused.
                let previous = self.resources.vsock.take();
                self.resources.vsock = Some(Vsock::bind(cfg, previous)?);
                Ok(VmmData::Empty)
            }
            SetBalloonDevice(cfg) => {
                self.resources.set_balloon(cfg)?;
                Ok(VmmData::Empty)
            }
            UpdateBalloon(update) => {
                self.resources.check_balloon_target(update.amount_mib)?;
                self.running_vm()?
                    .set_balloon_target(update.amount_mib)
                    .await
                    .map_err(VmmActionError::InternalVmm)?;
                if let Some(balloon) = self.resources.balloon.as_mut() {
                    balloon.amount_mib = update.amount_mib;
                }
                Ok(VmmData::Empty)
            }
            StartFreePageHinting(_) | StopFreePageHinting => {
                self.resources.check_balloon_hinting()?;
                // QEMU runs free page hinting only during migration: no host command can
                // start or stop it.
                Err(VmmActionError::NotSupportedBySquib(
                    "Driving free page hinting",
                ))
            }
            UpdateBalloonStatistics(update) => self.update_balloon_stats_interval(update).await,
            SetEntropyDevice(cfg) => {
                self.resources.entropy = Some(cfg);
                Ok(VmmData::Empty)
            }
            SetSerial(cfg) => {
                self.resources.serial = Some(cfg);
                Ok(VmmData::Empty)
            }
            ConfigureLogger(cfg) => self.configure_logger(cfg),
            ConfigureMetrics(cfg) => {
                self.set_metrics(cfg)?;
                Ok(VmmData::Empty)
            }
            PutMmds(data) => {
                self.resources.check_mmds_reachable(booted)?;
                self.resources.mmds.put(data)?;
                Ok(VmmData::Empty)
            }
            PatchMmds(patch) => {
                self.resources.check_mmds_reachable(booted)?;
                self.resources.mmds.patch(&patch)?;
                Ok(VmmData::Empty)
            }
            SetMmdsConfiguration(request) => {
                self.resources.set_mmds_config(request)?;
                Ok(VmmData::Empty)
            }
            SetMemoryHotplug(cfg) => {
                self.resources.set_memory_hotplug(cfg)?;
                Ok(VmmData::Empty)
            }
            UpdateMemoryHotplugSize(update) => {
                let requested = update.requested_size_mib;
                self.resources
                    .check_memory_hotplug_request(requested)
                    .map_err(VmmActionError::MemoryHotplugUpdate)?;
                self.running_vm()?
                    .set_memory_hotplug_size(requested)
                    .await
                    .map_err(|e| VmmActionError::MemoryHotplugUpdate(e.to_string()))?;
                self.resources.memory_requested_mib = requested;
                Ok(VmmData::Empty)
            }
            CreateSnapshot(params) => {
                if self.state != VmState::Paused {
                    return Err(CreateSnapshotError::VmRunning.into());
                }
                self.create_snapshot(params).await
            }
            LoadSnapshot(params) => {
                if self.boot_path {
                    return Err(LoadSnapshotError::LoadSnapshotNotAllowed.into());
                }
                // Upstream exits after a failed load (docs/api-contract.md §4.3): set in there.
                self.load_snapshot(params).await
            }
            StartMicroVm => self.start().await,
            // Without a metrics target this is a no-op, as upstream.
            FlushMetrics => {
                self.flush_metrics()
                    .await
                    .map_err(VmmActionError::InternalVmm)?;
                Ok(VmmData::Empty)
            }
            SendCtrlAltDel => {
                self.running_vm()?
                    .send_ctrl_alt_del()
                    .await
                    .map_err(VmmActionError::InternalVmm)?;
                Ok(VmmData::Empty)
            }
            Pause => self.set_paused(true).await,
            Resume => self.set_paused(false).await,
        }
    }

    /// `PATCH /balloon/statistics`: the new interval goes to the engine and to the poll timer.
    async fn update_balloon_stats_interval(
        &mut self,
        update: BalloonUpdateStatsConfig,
    ) -> ActionResult {
        if self.resources.check_balloon_stats_update(update)? {
            self.running_vm()?
                .set_balloon_stats_interval(update.stats_polling_interval_s)
                .await
                .map_err(VmmActionError::InternalVmm)?;
            if let Some(balloon) = self.resources.balloon.as_mut() {
                balloon.stats_polling_interval_s = update.stats_polling_interval_s;
            }
            self.arm_stats_timer();
        }
        Ok(VmmData::Empty)
    }

    /// Polls the balloon's statistics at its interval while a guest runs with stats on.
    fn arm_stats_timer(&mut self) {
        self.stats_timer = match self.resources.balloon {
            Some(cfg) if cfg.stats_polling_interval_s > 0 && self.vm.is_some() => {
                let period = std::time::Duration::from_secs(cfg.stats_polling_interval_s.into());
                let mut timer = tokio::time::interval(period);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(timer)
            }
            _ => None,
        };
    }

    async fn refresh_balloon_stats(&mut self) {
        let Some(vm) = self.vm.as_mut() else {
            return;
        };
        match vm.balloon_stats().await {
            Ok(stats) => self.balloon_stats = Some(stats),
            Err(e) => tracing::debug!(error = %e, "cannot read the balloon statistics"),
        }
    }

    /// `PATCH /drives/{id}`: a new backing file and/or new rate limits on the running guest.
    async fn update_drive(&mut self, update: BlockDeviceUpdateConfig) -> ActionResult {
        let patch = self.resources.drive_patch(&update)?;
        let vm = self.running_vm()?;
        let Some(patch) = patch else {
            return Ok(VmmData::Empty);
        };
        if patch.new_backing_file {
            vm.swap_drive(&patch.drive)
                .await
                .map_err(|e| DriveError::PatchEngine(e.to_string()))?;
        }
        if let Some(limiter) = patch.limiter {
            vm.set_drive_rate_limiter(&patch.drive.id, limiter)
                .await
                .map_err(|e| DriveError::PatchEngine(e.to_string()))?;
        }
        self.resources.drives.insert(patch.drive)?;
        Ok(VmmData::Empty)
    }

    fn configure_logger(&mut self, cfg: LoggerConfig) -> ActionResult {
        let update = cfg.into_update()?;
        self.logger
            .apply(update)
            .map_err(LoggerConfigError::Apply)?;
        Ok(VmmData::Empty)
    }

    fn set_metrics(&mut self, config: MetricsConfig) -> Result<(), VmmActionError> {
        // Upstream opens the target before it finds metrics already initialised, so an
        // unopenable path reports its OS error even then.
        let metrics = Metrics::open(config)?;
        if self.resources.metrics.is_some() {
            return Err(MetricsConfigError::AlreadyInitialized.into());
        }
        self.metrics.install(
            &self.instance_id,
            LineHeader {
                emit_id: metrics.config.emit_id,
                properties: metrics.config.properties.clone(),
            },
            metrics.file.clone(),
        );
        self.resources.metrics = Some(metrics);
        Ok(())
    }

    /// Polls what the engine counts, then writes a metrics line (if metrics are configured).
    async fn flush_metrics(&mut self) -> Result<(), EngineError> {
        if !self.metrics.is_installed() {
            return Ok(());
        }
        if let Some(vm) = self.vm.as_mut() {
            match vm.block_stats().await {
                Ok(stats) => self.metrics.set_block_stats(&stats),
                Err(e) => tracing::debug!(error = %e, "cannot read the block statistics"),
            }
        }
        self.metrics
            .flush()
            .map(drop)
            .map_err(|e| EngineError::Metrics(e.to_string()))
    }

    /// The line written when the VMM exits (the engine can no longer be asked).
    fn final_metrics(&self) {
        if let Err(e) = self.metrics.flush_exit() {
            tracing::warn!("Metrics error: {e}");
        }
    }

    fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> ActionResult {
        self.resources.update_machine_config(update)?;
        Ok(VmmData::Empty)
    }

    async fn start(&mut self) -> ActionResult {
        let Some(boot_source) = &self.resources.boot_source else {
            return Err(StartMicroVmError::MissingKernelConfig.into());
        };
        if let Some(path) = self
            .resources
            .serial
            .as_ref()
            .and_then(|s| s.serial_out_path.as_deref())
        {
            crate::resources::serial::open_as_upstream(path)
                .map_err(|e| StartMicroVmError::SerialOutput(e.into()))?;
        }
        boot_source
            .check_loadable()
            .map_err(StartMicroVmError::from)?;
        self.resources
            .drives
            .check_usable()
            .map_err(StartMicroVmError::from)?;
        let (vm, exit) = self
            .engine
            .start(&self.resources)
            .await
            .map_err(StartMicroVmError::Engine)?;
        self.adopt_vm(vm, exit, VmState::Running);
        if self.metrics.is_installed() {
            if let Err(e) = self.flush_metrics().await {
                tracing::warn!("{e}");
            }
            let mut timer = tokio::time::interval_at(
                tokio::time::Instant::now() + METRICS_PERIOD,
                METRICS_PERIOD,
            );
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.metrics_timer = Some(timer);
        }
        Ok(VmmData::Empty)
    }

    /// Takes over a guest the engine has just booted or restored: its exit watch, its live
    /// counters, the balloon statistics timer, and a `block_⟨id⟩` (`vhost_user_block_⟨id⟩`) metrics
    /// section per drive.
    fn adopt_vm(&mut self, vm: E::Vm, exit: ExitWatch, state: VmState) {
        self.plugged_memory = vm.plugged_memory_watch();
        if let Some(watch) = self.plugged_memory.as_mut() {
            self.memory_plugged_bytes = *watch.borrow_and_update();
        }
        self.resources.pci_layout = vm.pci_layout();
        self.vm = Some(vm);
        self.exit = Some(exit);
        self.state = state;
        self.arm_stats_timer();
        self.register_device_metrics();
    }

    /// A metrics section per device the guest has: the engine's live counters, a
    /// `block_⟨id⟩` (`vhost_user_block_⟨id⟩`) section per drive and a `pmem_⟨id⟩` one per
    /// pmem device.
    fn register_device_metrics(&self) {
        self.metrics.clear_devices(DeviceClass::Net);
        if let Some(vm) = self.vm.as_ref() {
            vm.register_metrics(&self.metrics);
        }
        self.metrics.clear_devices(DeviceClass::Block);
        self.metrics.clear_devices(DeviceClass::VhostUserBlock);
        for drive in self.resources.drives.iter() {
            let class = match drive.backend {
                DriveBackend::File { .. } => DeviceClass::Block,
                DriveBackend::VhostUser { .. } => DeviceClass::VhostUserBlock,
            };
            self.metrics.add_device(class, &drive.id);
        }
        // Present with upstream's keys; QEMU's virtio-pmem keeps no counters (docs/metrics.md).
        self.metrics.clear_devices(DeviceClass::Pmem);
        for pmem in self.resources.pmem.iter() {
            self.metrics.add_device(DeviceClass::Pmem, &pmem.id);
        }
    }

    async fn set_paused(&mut self, paused: bool) -> ActionResult {
        let wanted = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        if self.state != wanted {
            let vm = self.running_vm()?;
            let started = std::time::Instant::now();
            let result = if paused {
                vm.pause().await
            } else {
                vm.resume().await
            };
            result.map_err(VmmActionError::InternalVmm)?;
            let latencies = &self.metrics.values.latencies_us;
            let latency = if paused {
                &latencies.vmm_pause_vm
            } else {
                &latencies.vmm_resume_vm
            };
            latency.set(started.elapsed().as_micros() as u64);
            self.state = wanted;
            if !paused && let Some(timer) = self.metrics_timer.as_mut() {
                // Paused time does not count towards the next periodic line.
                timer.reset();
            }
        }
        Ok(VmmData::Empty)
    }

    fn running_vm(&mut self) -> Result<&mut E::Vm, VmmActionError> {
        self.vm
            .as_mut()
            .ok_or(VmmActionError::OperationNotSupportedPreBoot)
    }
}

/// The next tick of an armed timer; never, when none is armed.
async fn next_tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next value of a watched engine figure; `None` once the engine stops reporting it,
/// never when nothing is watched.
async fn next_change(watch: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<u64> {
    match watch {
        Some(watch) => match watch.changed().await {
            Ok(()) => Some(*watch.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

async fn wait_for_exit(exit: &mut Option<ExitWatch>) -> VmExit {
    match exit {
        Some(watch) => watch.await.unwrap_or_else(|_| {
            VmExit::EngineFailed("the engine stopped watching the guest".into())
        }),
        None => std::future::pending().await,
    }
}
