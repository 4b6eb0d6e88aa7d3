//! squib's engine on QEMU: implements [`squib_vmm::Engine`], so the VMM loop never deals with
//! QEMU directly. A start turns the validated VM resources into a typed launch plan, renders it
//! to QEMU's argv, supervises the QEMU child and drives it over QMP.

// A name is `pub` only when it is the crate's API (clippy -D warnings makes this an error).
#![warn(unreachable_pub)]

pub(crate) mod accel;
pub mod block_stats;
pub(crate) mod caps;
pub(crate) mod cpu_model;
pub(crate) mod devices;
pub(crate) mod dirty_pages;
pub(crate) mod engine;
pub(crate) mod firmware;
pub(crate) mod host_tsc;
pub(crate) mod hotplug;
pub(crate) mod net;
pub(crate) mod plan;
pub(crate) mod prealloc;
pub(crate) mod process;
pub(crate) mod serial;
pub(crate) mod snapshot;
pub(crate) mod throttle;

pub use accel::AccelChoice;
pub use engine::{DEFAULT_QEMU_BINARY, EngineConfig, QemuEngine, QemuVm};
pub use plan::{ConsoleTarget, DriveNames, drive_names};
