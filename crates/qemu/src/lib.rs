//! squib's engine on QEMU: turns validated VM resources into a QEMU `microvm` command line,
//! supervises the QEMU child process and drives it over QMP, implementing
//! [`squib_vmm::Engine`] so the VMM loop never deals with QEMU directly.

pub mod accel;
pub mod block_stats;
pub mod cmdline;
pub mod cpu_model;
pub mod devices;
pub mod engine;
pub mod firmware;
pub mod host_tsc;
pub mod net;
pub mod process;
pub mod qmp;
pub mod ram_stream;
pub mod serial;
pub mod snapshot;
pub mod throttle;

pub use accel::{Accel, AccelChoice, AccelParseError, HostFacts};
pub use cmdline::{ConsoleTarget, LaunchSpec, MAX_VIRTIO_MMIO_DEVICES, build_args};
pub use engine::{DEFAULT_QEMU_BINARY, EngineConfig, QemuEngine, QemuVm};
