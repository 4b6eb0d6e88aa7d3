//! squib's engine on QEMU: implements [`squib_vmm::Engine`], so the VMM loop never deals with
//! QEMU directly. A start turns the validated VM resources into a typed launch plan, renders it
//! to QEMU's argv, supervises the QEMU child and drives it over QMP.

pub mod accel;
pub mod block_stats;
pub(crate) mod caps;
pub mod cpu_model;
pub mod devices;
pub mod engine;
pub mod firmware;
pub mod host_tsc;
pub mod hotplug;
pub mod net;
pub(crate) mod plan;
pub mod process;
pub mod qmp;
pub mod serial;
pub mod snapshot;
pub mod throttle;

pub use accel::{Accel, AccelChoice, AccelParseError, HostFacts};
pub use engine::{DEFAULT_QEMU_BINARY, EngineConfig, QemuEngine, QemuVm};
pub use plan::{ConsoleTarget, DriveNames, drive_names};
