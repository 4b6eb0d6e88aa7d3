//! The VMM loop: the only owner of VM state. It serves actions one at a time, in arrival
//! order, publishes a snapshot after each, and watches the running guest.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::action::{
    ActionRequest, ActionResult, StartMicroVmError, VmmAction, VmmActionError, VmmData,
};
use crate::config::boot_source::BootSource;
use crate::config::drive::Drive;
use crate::config::machine_config::MachineConfigUpdate;
use crate::engine::{Engine, ExitWatch, RunningVm, VmExit};
use crate::resources::VmResources;
use crate::state::{VmState, VmmSnapshot};

/// Depth of the action queue; senders wait when it is full.
pub const ACTION_QUEUE_DEPTH: usize = 64;

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest ended (or its engine died).
    Vm(VmExit),
    /// Every sender is gone and no guest was ever started.
    NoMoreActions,
}

/// What the API side holds: a way to send actions and a view of the latest snapshot.
#[derive(Clone)]
pub struct VmmHandle {
    pub actions: mpsc::Sender<ActionRequest>,
    pub snapshot: Arc<ArcSwap<VmmSnapshot>>,
}

pub struct Vmm<E: Engine> {
    instance_id: String,
    state: VmState,
    resources: VmResources,
    engine: E,
    vm: Option<E::Vm>,
    exit: Option<ExitWatch>,
    published: Arc<ArcSwap<VmmSnapshot>>,
    actions: mpsc::Receiver<ActionRequest>,
}

impl<E: Engine> Vmm<E> {
    pub fn new(instance_id: String, engine: E) -> (Self, VmmHandle) {
        let (tx, rx) = mpsc::channel(ACTION_QUEUE_DEPTH);
        let published = Arc::new(ArcSwap::from_pointee(VmmSnapshot::new(instance_id.clone())));
        let vmm = Self {
            instance_id,
            state: VmState::NotStarted,
            resources: VmResources::default(),
            engine,
            vm: None,
            exit: None,
            published: published.clone(),
            actions: rx,
        };
        (
            vmm,
            VmmHandle {
                actions: tx,
                snapshot: published,
            },
        )
    }

    /// Runs until the guest ends, or until no action can arrive and no guest runs.
    pub async fn run(mut self) -> VmmExit {
        let mut accepting = true;
        loop {
            tokio::select! {
                request = self.actions.recv(), if accepting => match request {
                    Some(ActionRequest { action, reply }) => {
                        let name = action.name();
                        let result = self.dispatch(action).await;
                        if let Err(e) = &result {
                            tracing::debug!(action = name, error = %e, "action failed");
                        }
                        self.publish();
                        // The client may have given up (time-out, closed socket); that is fine.
                        let _ = reply.send(result);
                    }
                    None if self.exit.is_none() => return VmmExit::NoMoreActions,
                    None => accepting = false,
                },
                exit = wait_for_exit(&mut self.exit) => {
                    self.vm = None;
                    return VmmExit::Vm(exit);
                }
            }
        }
    }

    fn publish(&self) {
        self.published.store(Arc::new(VmmSnapshot {
            instance_id: self.instance_id.clone(),
            state: self.state,
            resources: self.resources.clone(),
        }));
    }

    async fn dispatch(&mut self, action: VmmAction) -> ActionResult {
        use VmmAction::*;
        let booted = self.state.is_booted();
        match action {
            ConfigureBootSource(_) | PutMachineConfig(_) | PatchMachineConfig(_) | StartMicroVm
                if booted =>
            {
                Err(VmmActionError::OperationNotSupportedPostBoot)
            }
            SendCtrlAltDel | FlushMetrics | Pause | Resume if !booted => {
                Err(VmmActionError::OperationNotSupportedPreBoot)
            }
            ConfigureBootSource(cfg) => {
                self.resources.boot_source = Some(BootSource::try_from(cfg)?);
                Ok(VmmData::Empty)
            }
            PutMachineConfig(cfg) => self.update_machine_config(&MachineConfigUpdate::from(cfg)),
            PatchMachineConfig(update) => self.update_machine_config(&update),
            InsertBlockDevice(_) if booted => Err(VmmActionError::PciNotEnabled),
            InsertBlockDevice(cfg) => {
                let drive = Drive::try_from(cfg)?;
                self.resources.drives.insert(drive)?;
                Ok(VmmData::Empty)
            }
            StartMicroVm => self.start().await,
            // Metrics output arrives with the metrics system; until one is configured a
            // flush is a no-op, as upstream answers when metrics are not configured.
            FlushMetrics => Ok(VmmData::Empty),
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

    fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> ActionResult {
        self.resources.machine_config = self.resources.machine_config.updated(update)?;
        Ok(VmmData::Empty)
    }

    async fn start(&mut self) -> ActionResult {
        if self.resources.boot_source.is_none() {
            return Err(StartMicroVmError::MissingKernelConfig.into());
        }
        let (vm, exit) = self
            .engine
            .start(&self.resources)
            .await
            .map_err(StartMicroVmError::Engine)?;
        self.vm = Some(vm);
        self.exit = Some(exit);
        self.state = VmState::Running;
        Ok(VmmData::Empty)
    }

    async fn set_paused(&mut self, paused: bool) -> ActionResult {
        let wanted = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        if self.state != wanted {
            let vm = self.running_vm()?;
            let result = if paused {
                vm.pause().await
            } else {
                vm.resume().await
            };
            result.map_err(VmmActionError::InternalVmm)?;
            self.state = wanted;
        }
        Ok(VmmData::Empty)
    }

    fn running_vm(&mut self) -> Result<&mut E::Vm, VmmActionError> {
        self.vm
            .as_mut()
            .ok_or(VmmActionError::OperationNotSupportedPreBoot)
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
