//! squib's virtual machine monitor core: the VM's resources and their validation rules,
//! the lifecycle state machine, and the single loop that serves actions in order and
//! drives an [`engine::Engine`]. It knows nothing of HTTP or of QEMU.

pub mod action;
pub mod engine;
#[cfg(feature = "fake-engine")]
pub mod fake_engine;
mod mmds_store;
pub mod resources;
pub mod snapshot_file;
mod state;
mod vmm_loop;

pub use action::{ActionRequest, ActionResult, VmmAction, VmmActionError, VmmData};
pub use engine::{Engine, EngineError, ExitWatch, RestoreSource, RunningVm, VmExit};
pub use resources::VmResources;
pub use state::{FIRECRACKER_API_VERSION, InstanceInfo, VmState, VmView};
pub use vmm_loop::{Vmm, VmmExit, VmmHandle};
