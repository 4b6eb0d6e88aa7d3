//! The launch plan: everything QEMU is started with, as typed values, built from the validated
//! VM resources (plus, for a restore, what the snapshot recorded) and rendered to QEMU's argv by
//! the one pure function [`argv::render`].
//!
//! No I/O happens here: the facts that are not the client's (accelerator, guest RAM, runtime
//! directory, QMP listener, console target) are given by the engine in [`LaunchInputs`], so the
//! whole mapping is unit-tested without QEMU, on the argv QEMU really receives.

pub(crate) mod argv;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use squib_vmm::action::DeviceKind;
use squib_vmm::resources::boot_source::MAX_CMDLINE_LEN;
use squib_vmm::resources::drive::{CacheType, Drive, DriveBackend, IoEngine};
use squib_vmm::resources::pci::{PciLayout, PciSlot, device_key};
use squib_vmm::resources::pmem::PMEM_ALIGN;
use squib_vmm::{EngineError, VmResources};

use crate::accel::Accel;
use crate::caps::Capabilities;
use crate::snapshot::EngineMeta;

/// QEMU's `microvm` machine has this many virtio-mmio transports, and no hotplug.
pub(crate) const MAX_VIRTIO_MMIO_DEVICES: usize = 24;
/// Transports of the machine without ACPI (see [`legacy_interrupts`]): interrupts 5 to 12.
pub(crate) const MAX_LEGACY_VIRTIO_MMIO_DEVICES: usize = 8;
/// What QEMU appends to the guest command line per device without ACPI:
/// ` virtio_mmio.device=512@0xfeb00e00:12` at most.
const LEGACY_DEVICE_PARAM_LEN: usize = 37;

/// QEMU limits block node names to 31 bytes.
const MAX_NODE_NAME_LEN: usize = 31;

/// PCIe root ports squib can put on q35's root bus (slots 2 to 0x1e; 0 is the host bridge,
/// 1 unused, 0x1f the LPC bridge): one device per port.
pub(crate) const MAX_PCI_PORTS: usize = 29;
/// Free root ports a PCI machine keeps for devices hot-plugged after boot (at most
/// [`MAX_PCI_PORTS`] in all).
pub(crate) const HOTPLUG_PORTS: usize = 8;

/// Room squib reserves above a `--enable-pci` guest's RAM for pmem devices hot-plugged
/// after boot (address space only: nothing is allocated until a device is plugged).
pub(crate) const PMEM_HOTPLUG_MIB: u64 = 64 << 10;

/// The layout keys of the devices `resources` cold-plug, in the order they take ports.
fn cold_keys(resources: &VmResources) -> Vec<String> {
    let mut keys: Vec<String> = resources
        .drives
        .iter()
        .map(|d| device_key(DeviceKind::Drive, &d.id))
        .collect();
    keys.extend(
        resources
            .net
            .iter()
            .map(|n| device_key(DeviceKind::NetworkInterface, &n.config.iface_id)),
    );
    if resources.balloon.is_some() {
        keys.push(BALLOON_KEY.to_string());
    }
    if resources.entropy.is_some() {
        keys.push(ENTROPY_KEY.to_string());
    }
    if resources.vsock.is_some() {
        keys.push(VSOCK_KEY.to_string());
    }
    keys.extend(
        resources
            .pmem
            .iter()
            .map(|p| device_key(DeviceKind::Pmem, &p.id)),
    );
    if resources.memory_hotplug.is_some() {
        keys.push(MEMORY_KEY.to_string());
    }
    keys
}

/// Layout keys of the devices that are not drives, interfaces or pmem.
pub(crate) const BALLOON_KEY: &str = "balloon";
pub(crate) const ENTROPY_KEY: &str = "entropy";
pub(crate) const VSOCK_KEY: &str = "vsock";
pub(crate) const MEMORY_KEY: &str = "memory";

/// Where each device of a PCI machine sits; `None` on microvm. A running or snapshotted
/// machine keeps its layout (`resources.pci_layout`: a restore rebuilds the same ports,
/// hot-plugged devices included); a new one takes ports in [`cold_keys`] order, with
/// [`HOTPLUG_PORTS`] free ones after them. `pmem_sizes`: see [`LaunchSpec::pmem_sizes`].
pub(crate) fn pci_layout(resources: &VmResources, pmem_sizes: &[u64]) -> Option<PciLayout> {
    if !Machine::for_resources(resources).is_pci() {
        return None;
    }
    let fresh = resources.pci_layout.is_none();
    let mut layout = resources.pci_layout.clone().unwrap_or_else(|| {
        let pmem_mib = pmem_sizes.iter().sum::<u64>().div_ceil(1 << 20);
        let hotplug_mib = resources
            .memory_hotplug
            .map_or(0, |h| u64::from(h.total_size_mib));
        let reserve = if resources.pci_enabled {
            PMEM_HOTPLUG_MIB
        } else {
            0
        };
        PciLayout {
            ports: 0,
            devices: Vec::new(),
            device_memory_mib: hotplug_mib + pmem_mib + reserve,
        }
    });
    for key in cold_keys(resources) {
        if layout.slot(&key).is_some() {
            continue;
        }
        let port = layout.free_port().unwrap_or_else(|| {
            layout.ports += 1;
            layout.ports - 1
        });
        layout.devices.push(PciSlot {
            device: key,
            port,
            memaddr: None,
        });
    }
    if fresh {
        layout.ports = (layout.devices.len() + HOTPLUG_PORTS)
            .min(MAX_PCI_PORTS)
            .max(layout.devices.len());
    }
    Some(layout)
}

/// QOM id of the balloon device (its QOM path is `/machine/peripheral/<id>`).
pub(crate) const BALLOON_ID: &str = "balloon0";
/// QOM id of the virtio-mem device (QOM path `/machine/peripheral/<id>`).
pub(crate) const MEMORY_HOTPLUG_ID: &str = "hotplug_mem";

/// Everything QEMU is started with. [`argv::render`] turns it into the argv, and nothing
/// else changes that argv afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LaunchPlan {
    pub machine: MachineOptions,
    pub accel: Accel,
    /// The `-cpu` value: the accelerator's base model, adjusted by a CPU template, or the one
    /// a snapshot was taken with.
    pub cpu: String,
    pub vcpus: u8,
    pub memory: Memory,
    /// `None` on a restore: the guest's memory already holds its kernel.
    pub kernel: Option<KernelBoot>,
    /// `-bios`: qboot for microvm where QEMU has it (see [`crate::firmware`]).
    pub firmware: Option<PathBuf>,
    pub console: ConsoleTarget,
    /// In guest order (drives first, the root drive first of them).
    pub devices: Vec<PlacedDevice>,
    /// PCIe root ports on q35, the cold-plugged devices' and the free ones for hot-plug.
    pub root_ports: usize,
    /// Which root port each device holds (q35): the engine keeps it for hot-plug, snapshots
    /// for a restore.
    pub pci_layout: Option<PciLayout>,
    /// The QMP socket squib already listens on; QEMU inherits the descriptor.
    pub qmp_listener: RawFd,
    /// A restore: QEMU waits for the device state (`-incoming defer`).
    pub incoming: bool,
    /// QEMU starts with the vCPUs stopped (`-S`) until the engine sends `cont`: on a restore,
    /// and on a boot with settings only QMP can make first (drive rate limits, the balloon).
    /// Otherwise the vCPUs run as soon as QEMU has started, and the start ends with the QMP
    /// handshake (QEMU reads QMP a byte per main-loop round: each command saved is a round
    /// trip, and a scheduling round per byte on a busy host).
    pub paused: bool,
    /// QEMU's own seccomp sandbox (see [`argv::SANDBOX`]).
    pub sandbox: bool,
}

/// The machine and its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MachineOptions {
    pub kind: Machine,
    /// The guest routes interrupts without ACPI (see [`legacy_interrupts`]): microvm without
    /// ACPI; q35 serves such a guest as it is (its virtio-pci devices use MSI-X).
    pub legacy_interrupts: bool,
    /// microvm's virtio-mmio transports are legacy (version 1) by default: no device offers
    /// `VIRTIO_F_VERSION_1` there, and libvhost-user backends refuse them ("virtio legacy
    /// devices aren't supported"). squib's microVMs run them modern (version 2), as
    /// Firecracker's devices are virtio 1.0; a restore runs what the snapshot recorded
    /// ([`modern_mmio`]).
    pub modern_mmio: bool,
}

/// The machine QEMU emulates. The plan picks it from the resources; every device goes
/// through [`Machine::device`], so a device's transport is decided in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Machine {
    /// `-M microvm`: virtio-mmio transports, no hot-plug of any kind. The default.
    Microvm,
    /// `-M q35`: every virtio device is a virtio-*-pci function in a PCIe root port of its
    /// own, free ports take hot-plugged devices, and memory devices (virtio-mem,
    /// virtio-pmem) have a home. Chosen by `--enable-pci`, pmem and memory hot-plug.
    Q35,
}

/// Guest RAM below this guest-physical address is the RAM backend at the same offset, on
/// both machines and every QEMU squib runs: microvm maps its first 3 GiB at 0, q35 all its
/// RAM when it has less than 2.75 GiB, else its first 2 GiB (QEMU's `pc_q35_init`); the
/// rest goes above 4 GiB, past the PCI hole.
pub(crate) const IDENTITY_MAPPED_RAM: u64 = 2 << 30;

/// Guest RAM: its size, the room above it for memory devices, and what backs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Memory {
    pub size_mib: u64,
    /// `maxmem` in MiB when memory devices (virtio-mem, virtio-pmem) live above the boot RAM.
    pub max_mib: Option<u64>,
    pub backend: MemoryBackend,
}

/// What backs guest RAM. Both are files QEMU maps through `/proc/<squib>/fd/<n>`, so squib
/// owns (and checked) the very file QEMU maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemoryBackend {
    /// squib's memfd, shared with QEMU (`share=on`): vhost-user backends map it and
    /// snapshots read it without asking QEMU.
    Memfd { path: String },
    /// The user's memory file of a restore, mapped privately (`share=off`, copy-on-write):
    /// never written, and only the pages the guest touches cost memory. `open_read_only`:
    /// QEMU opens it read-only (`readonly=on,rom=off`, QEMU 8.2 and later).
    File { path: String, open_read_only: bool },
}

/// A direct kernel boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelBoot {
    pub kernel: String,
    pub initrd: Option<String>,
    /// The guest command line (see [`kernel_cmdline`]).
    pub cmdline: String,
}

/// One device and the PCIe root port it sits in (q35 only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlacedDevice {
    pub port: Option<usize>,
    pub device: Device,
}

/// A device of the guest, with what QEMU needs to build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    /// A raw file: a `-blockdev` format node over a file node, and virtio-blk.
    Drive {
        names: DriveNames,
        path: String,
        read_only: bool,
        /// `cache_type: Unsafe`: the guest's flushes do not reach the disk.
        no_flush: bool,
        aio: Aio,
    },
    /// An external vhost-user-blk backend, over squib's connection to it (made when the drive
    /// was configured, inherited by QEMU as `fd`). No block node in QEMU: the backend owns the
    /// data, its size and its read-only flag.
    VhostUserDrive {
        chardev: String,
        device_id: String,
        connection: std::os::fd::RawFd,
    },
    /// squib's virtio-net device (which owns the TAP) behind a vhost-user netdev; QEMU keeps
    /// the config space (MAC, MTU).
    Net {
        index: usize,
        socket: String,
        mac: Option<String>,
        mtu: Option<u16>,
        /// No MSI-X on the PCI machine (see
        /// [`Capabilities::vhost_user_net_pci_needs_intx`]).
        intx: bool,
    },
    Balloon {
        deflate_on_oom: bool,
        free_page_reporting: bool,
        /// Free page hinting needs an I/O thread in QEMU.
        free_page_hinting: bool,
    },
    /// virtio-rng fed by the host's /dev/urandom; the bandwidth bucket becomes QEMU's quota
    /// of `max_bytes` per `period_ms`.
    Rng { quota: Option<(u64, u64)> },
    /// squib's vsock backend; the guest CID is not a property (QEMU reads it from the
    /// backend's config space).
    Vsock { socket: String },
    /// virtio-pmem over the file itself (`share=on`: the guest's writes reach the file, as
    /// with upstream's shared mapping).
    Pmem {
        index: usize,
        path: String,
        size: u64,
        read_only: bool,
        /// Where a restore puts it back (guest-physical address).
        memaddr: Option<u64>,
    },
    /// virtio-mem over a private RAM backend of `total_mib` (unplugged blocks are discarded
    /// from it), plugged in `block_mib` blocks, starting at `requested_mib`.
    Mem {
        total_mib: u32,
        block_mib: u32,
        requested_mib: u32,
        /// Where a restore puts it back (guest-physical address).
        memaddr: Option<u64>,
    },
}

/// QEMU's `aio=` of a file drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aio {
    /// `Sync`: a thread pool.
    Threads,
    /// `Async`: io_uring (the engine turns `Async` into `Sync`, with a warning, where the
    /// host refuses io_uring).
    IoUring,
}

impl Aio {
    pub(crate) fn of(drive: &Drive) -> Self {
        match drive.backend {
            DriveBackend::File {
                io_engine: IoEngine::Async,
                ..
            } => Self::IoUring,
            _ => Self::Threads,
        }
    }

    pub(crate) fn qemu_name(self) -> &'static str {
        match self {
            Self::Threads => "threads",
            Self::IoUring => "io_uring",
        }
    }
}

/// The virtio devices squib builds, whatever their transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VirtioKind {
    Block,
    VhostUserBlock,
    Net,
    Balloon,
    Rng,
    VhostUserVsock,
    Pmem,
    Mem,
}

impl Machine {
    /// The PCI machine when the client asked for PCI (`--enable-pci`) or configured a
    /// device only it carries (pmem, memory hot-plug: microvm realises them but never maps
    /// them); microvm otherwise.
    pub(crate) fn for_resources(resources: &VmResources) -> Self {
        if resources.pci_enabled || !resources.pmem.is_empty() || resources.memory_hotplug.is_some()
        {
            Self::Q35
        } else {
            Self::Microvm
        }
    }

    pub(crate) fn is_pci(self) -> bool {
        self == Self::Q35
    }

    /// QEMU's device type for `kind` on this machine's transport. `None`: the machine
    /// cannot carry the device (memory devices on microvm).
    pub(crate) fn device_type(self, kind: VirtioKind) -> Option<&'static str> {
        use VirtioKind::*;
        Some(match (self, kind) {
            (Self::Microvm, Block) => "virtio-blk-device",
            (Self::Microvm, VhostUserBlock) => "vhost-user-blk",
            (Self::Microvm, Net) => "virtio-net-device",
            (Self::Microvm, Balloon) => "virtio-balloon-device",
            (Self::Microvm, Rng) => "virtio-rng-device",
            (Self::Microvm, VhostUserVsock) => "vhost-user-vsock-device",
            (Self::Microvm, Pmem | Mem) => return None,
            (Self::Q35, Block) => "virtio-blk-pci",
            (Self::Q35, VhostUserBlock) => "vhost-user-blk-pci",
            (Self::Q35, Net) => "virtio-net-pci",
            (Self::Q35, Balloon) => "virtio-balloon-pci",
            (Self::Q35, Rng) => "virtio-rng-pci",
            (Self::Q35, VhostUserVsock) => "vhost-user-vsock-pci",
            (Self::Q35, Pmem) => "virtio-pmem-pci",
            (Self::Q35, Mem) => "virtio-mem-pci",
        })
    }

    /// The `-device` value of a `kind` device with the properties `props` (`id=…` and the
    /// rest), on `port` when the machine is PCI. Network cards get no option ROM: the guest
    /// boots its kernel directly and a ROM only costs firmware time.
    pub(crate) fn device(self, kind: VirtioKind, port: Option<usize>, props: &str) -> String {
        let ty = self
            .device_type(kind)
            .unwrap_or("virtio-device-unavailable");
        match (self, port) {
            (Self::Q35, Some(port)) => {
                let rom = if kind == VirtioKind::Net {
                    ",romfile="
                } else {
                    ""
                };
                format!("{ty},bus={},{props}{rom}", root_port_id(port))
            }
            _ => format!("{ty},{props}"),
        }
    }
}

/// Whether squib's (vhost-user) network cards on the PCI machine go without MSI-X and
/// interrupt the guest over INTx: QEMU 7.2 crashes as soon as the guest starts such a card
/// with MSI-X ([`Capabilities::vhost_user_net_pci_needs_intx`]), and under TCG a guest
/// restored from a snapshot lost its card's receive interrupts in about half the loads
/// (QEMU 10, MSI-X; none over INTx). Cold- and hot-plugged cards alike, so a snapshot's
/// device state always meets the same card on load. docs/deviations.md.
pub(crate) fn net_intx(caps: &Capabilities, accel: Accel) -> bool {
    accel == Accel::Tcg || caps.vhost_user_net_pci_needs_intx()
}

/// QEMU id of the PCIe root port `index`.
pub(crate) fn root_port_id(index: usize) -> String {
    format!("rp{index}")
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// squib's own stdout, like Firecracker's serial console.
    #[default]
    Stdio,
    /// Appended to a host file.
    File(PathBuf),
    /// Discarded.
    Null,
    /// A Unix socket squib listens on (`serial.rs` `SerialRelay`), which writes the
    /// client's `serial_out_path` through the serial rate limiter.
    Socket(PathBuf),
}

/// The launch facts that do not come from the client's resources.
#[derive(Clone, Debug)]
pub(crate) struct LaunchInputs<'a> {
    pub accel: Accel,
    /// What the QEMU binary offers.
    pub caps: &'a Capabilities,
    /// The VM's private runtime directory: the vhost-user sockets live there.
    pub runtime_dir: &'a Path,
    pub qmp_listener: RawFd,
    pub console: ConsoleTarget,
    /// The host's TSC rate, handed to a TCG guest so it skips calibrating its clock.
    pub tsc_khz: Option<u64>,
    /// The size in bytes of each pmem device's backing file, in the resources' order (the
    /// engine reads them at start, when upstream opens the files).
    pub pmem_sizes: &'a [u64],
    pub memory: MemoryBackend,
    pub sandbox: bool,
    /// A restore: the engine's header of the snapshot (CPU and machine options it ran with).
    pub restore: Option<&'a EngineMeta>,
}

/// Why the resources cannot be turned into a launch plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The engine reports it as [`EngineError::MissingKernelConfig`].
    #[error("the VM has no boot source")]
    NoBootSource,
    #[error("{count} virtio devices are configured, but QEMU's microvm machine offers at most {max}{}",
        if *max == MAX_LEGACY_VIRTIO_MMIO_DEVICES { " when the kernel command line has `noapic` or `acpi=off`" } else { "" })]
    TooManyDevices { count: usize, max: usize },
    #[error(
        "{count} devices are configured, but squib's PCI machine offers at most {MAX_PCI_PORTS}"
    )]
    TooManyPciDevices { count: usize },
    #[error("the kernel command line with the root device parameters is too long ({len} bytes, at most {} allowed)", MAX_CMDLINE_LEN - 1)]
    CmdlineTooLong { len: usize },
    #[error(
        "the pmem backing file {path} is {size} bytes long: squib needs a size that is a non-zero multiple of 2 MiB"
    )]
    PmemSize { path: String, size: u64 },
    #[error("the {what} path is not valid UTF-8: {path:?}")]
    NonUtf8Path { what: &'static str, path: PathBuf },
    #[error("{0}")]
    Unsupported(#[from] crate::caps::Missing),
}

impl From<PlanError> for EngineError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::NoBootSource => Self::MissingKernelConfig,
            e => Self::Failed(e.to_string()),
        }
    }
}

impl LaunchPlan {
    /// The plan that boots `resources` (or restores them, with `inputs.restore`).
    pub(crate) fn new(
        resources: &VmResources,
        inputs: &LaunchInputs<'_>,
    ) -> Result<Self, PlanError> {
        let kind = Machine::for_resources(resources);
        let kernel = match inputs.restore {
            Some(_) => None,
            None => {
                let boot = resources
                    .boot_source
                    .as_ref()
                    .ok_or(PlanError::NoBootSource)?;
                Some(boot)
            }
        };
        let legacy_interrupts = match (inputs.restore, kernel) {
            (Some(meta), _) => meta.legacy_interrupts,
            (None, Some(boot)) => legacy_interrupts(boot.cmdline()),
            (None, None) => false,
        } && kind == Machine::Microvm;
        let count = device_count(resources);
        match kind {
            Machine::Q35 if count > MAX_PCI_PORTS => {
                return Err(PlanError::TooManyPciDevices { count });
            }
            Machine::Microvm => {
                let max = if legacy_interrupts {
                    MAX_LEGACY_VIRTIO_MMIO_DEVICES
                } else {
                    MAX_VIRTIO_MMIO_DEVICES
                };
                if count > max {
                    return Err(PlanError::TooManyDevices { count, max });
                }
            }
            Machine::Q35 => {}
        }
        let kernel = match kernel {
            Some(boot) => Some(KernelBoot {
                kernel: boot.config.kernel_image_path.clone(),
                initrd: boot.config.initrd_path.clone(),
                cmdline: kernel_cmdline(resources, inputs.tsc_khz)?,
            }),
            None => None,
        };
        let machine = MachineOptions {
            kind,
            legacy_interrupts,
            modern_mmio: kind == Machine::Microvm && modern_mmio(resources, inputs.restore),
        };
        // A CPU template adjusts the accelerator's base model (squib_cpu_template); a restored
        // guest keeps the CPU it was saved with, whatever the client configures.
        let cpu = match inputs.restore {
            Some(meta) => meta.cpu.clone(),
            None => squib_cpu_template::CpuModel::for_resources(resources).map_or_else(
                || inputs.accel.cpu_model().to_string(),
                |model| model.qemu_cpu(inputs.accel.cpu_model()),
            ),
        };
        let machine_config = &resources.machine_config;
        let size_mib = machine_config.mem_size_mib as u64;
        if let ConsoleTarget::File(path) | ConsoleTarget::Socket(path) = &inputs.console {
            utf8(path, "console")?;
        }
        let pci_layout = pci_layout(resources, inputs.pmem_sizes);
        let max_mib = pci_layout
            .as_ref()
            .filter(|l| l.device_memory_mib > 0)
            .map(|l| size_mib + l.device_memory_mib);
        let devices = devices(resources, pci_layout.as_ref(), inputs)?;
        let root_ports = pci_layout.as_ref().map_or(0, |l| l.ports);
        let plan = Self {
            machine,
            accel: inputs.accel,
            cpu,
            vcpus: machine_config.vcpu_count,
            memory: Memory {
                size_mib,
                max_mib,
                backend: inputs.memory.clone(),
            },
            kernel,
            firmware: match kind {
                // qboot is microvm's firmware; q35 keeps QEMU's SeaBIOS, which sets up its
                // root ports and memory devices.
                Machine::Microvm => inputs.caps.qboot.clone(),
                Machine::Q35 => None,
            },
            console: inputs.console.clone(),
            devices,
            root_ports,
            pci_layout,
            qmp_listener: inputs.qmp_listener,
            incoming: inputs.restore.is_some(),
            paused: inputs.restore.is_some() || crate::devices::DeviceState::has_initial(resources),
            sandbox: inputs.sandbox,
        };
        inputs.caps.check(&plan)?;
        Ok(plan)
    }

    /// What a snapshot of this guest records about it, for a restore to run the same.
    pub(crate) fn engine_meta(&self) -> EngineMeta {
        EngineMeta {
            accel: self.accel.qemu_name().to_string(),
            cpu: self.cpu.clone(),
            legacy_interrupts: self.machine.legacy_interrupts,
            modern_mmio: Some(self.machine.modern_mmio),
        }
    }
}

/// Whether microvm's virtio-mmio transports run modern: always for a boot; for a restore, as
/// the snapshot recorded, the device state holding each transport's mode. Snapshots of squibs
/// that did not record it ran modern only with vsock or a vhost-user drive.
fn modern_mmio(resources: &VmResources, restore: Option<&EngineMeta>) -> bool {
    match restore {
        None => true,
        Some(meta) => meta.modern_mmio.unwrap_or_else(|| {
            resources.vsock.is_some()
                || resources
                    .drives
                    .iter()
                    .any(|d| matches!(d.backend, DriveBackend::VhostUser { .. }))
        }),
    }
}

/// The guest's devices in guest order, each in a root port of its own on q35.
fn devices(
    resources: &VmResources,
    layout: Option<&PciLayout>,
    inputs: &LaunchInputs<'_>,
) -> Result<Vec<PlacedDevice>, PlanError> {
    let mut out: Vec<PlacedDevice> = Vec::new();
    let slot = |key: &str| layout.and_then(|l| l.slot(key));
    let mut push = |key: &str, device: Device| {
        let port = slot(key).map(|s| s.port);
        out.push(PlacedDevice { port, device });
    };
    for (index, drive) in resources.drives.iter().enumerate() {
        let names = drive_names(index, &drive.id);
        push(
            &device_key(DeviceKind::Drive, &drive.id),
            match &drive.backend {
                DriveBackend::File {
                    path, read_only, ..
                } => Device::Drive {
                    names,
                    path: path.clone(),
                    read_only: *read_only,
                    no_flush: matches!(drive.cache_type, CacheType::Unsafe),
                    aio: Aio::of(drive),
                },
                DriveBackend::VhostUser { connection, .. } => Device::VhostUserDrive {
                    chardev: vhost_user_chardev_id(index),
                    device_id: names.device,
                    connection: connection.raw_fd(),
                },
            },
        );
    }
    for (index, iface) in resources.net.iter().enumerate() {
        let socket = net_socket(inputs.runtime_dir, index);
        push(
            &device_key(DeviceKind::NetworkInterface, &iface.config.iface_id),
            Device::Net {
                index,
                socket: utf8(&socket, "netdev socket")?.to_string(),
                mac: iface.config.guest_mac.map(|mac| mac.to_string()),
                mtu: iface.config.mtu,
                intx: net_intx(inputs.caps, inputs.accel),
            },
        );
    }
    if let Some(balloon) = &resources.balloon {
        push(
            BALLOON_KEY,
            Device::Balloon {
                deflate_on_oom: balloon.deflate_on_oom,
                free_page_reporting: balloon.free_page_reporting,
                free_page_hinting: balloon.free_page_hinting,
            },
        );
    }
    if let Some(entropy) = &resources.entropy {
        let quota = entropy
            .to_config()
            .rate_limiter
            .and_then(|limiter| limiter.bandwidth)
            .map(|bucket| (bucket.size, bucket.refill_time));
        push(ENTROPY_KEY, Device::Rng { quota });
    }
    if resources.vsock.is_some() {
        let socket = vsock_socket(inputs.runtime_dir);
        push(
            VSOCK_KEY,
            Device::Vsock {
                socket: utf8(&socket, "vsock socket")?.to_string(),
            },
        );
    }
    for (index, pmem) in resources.pmem.iter().enumerate() {
        let size = inputs.pmem_sizes.get(index).copied().unwrap_or(0);
        if size == 0 || !size.is_multiple_of(PMEM_ALIGN) {
            return Err(PlanError::PmemSize {
                path: pmem.path_on_host.clone(),
                size,
            });
        }
        let key = device_key(DeviceKind::Pmem, &pmem.id);
        let memaddr = slot(&key).and_then(|s| s.memaddr);
        push(
            &key,
            Device::Pmem {
                index,
                path: pmem.path_on_host.clone(),
                size,
                read_only: pmem.read_only,
                memaddr,
            },
        );
    }
    if let Some(hotplug) = &resources.memory_hotplug {
        let memaddr = slot(MEMORY_KEY).and_then(|s| s.memaddr);
        push(
            MEMORY_KEY,
            Device::Mem {
                total_mib: hotplug.total_size_mib,
                block_mib: hotplug.block_size_mib,
                requested_mib: resources.memory_requested_mib,
                memaddr,
            },
        );
    }
    Ok(out)
}

/// The QEMU names of one drive: its block node and its virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveNames {
    /// `node-name` of the drive's format node (the target of later `blockdev-*` commands).
    pub node: String,
    /// `id` of the `virtio-blk-device`.
    pub device: String,
}

/// Names for the drive at `index` (in the resources' order) with Firecracker id `id`.
///
/// `drive_<id>`/`blk_<id>` when QEMU accepts them (ASCII letters, digits and `_`, node name
/// at most 31 bytes); Firecracker also allows Unicode letters and longer ids, which fall back
/// to the index: `drive<index>`/`blk<index>` (no underscore, so the two forms never collide).
pub fn drive_names(index: usize, id: &str) -> DriveNames {
    let ascii = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ascii && "drive_".len() + id.len() <= MAX_NODE_NAME_LEN {
        DriveNames {
            node: format!("drive_{id}"),
            device: format!("blk_{id}"),
        }
    } else {
        DriveNames {
            node: format!("drive{index}"),
            device: format!("blk{index}"),
        }
    }
}

/// The guest kernel command line: the client's boot args, then, like Firecracker, the root
/// device (`root=/dev/vda` or `root=PARTUUID=…`) and `ro`/`rw` when a root drive exists.
///
/// With `tsc_khz` (TCG only), `tsc_early_khz=` is added unless the client set it: under TCG the
/// guest's TSC ticks at the host's rate, and on a busy host the kernel's calibration against
/// the emulated PIT fails and the boot hangs for good (microvm has no other timer to fall
/// back on).
pub(crate) fn kernel_cmdline(
    resources: &VmResources,
    tsc_khz: Option<u64>,
) -> Result<String, PlanError> {
    let boot = resources
        .boot_source
        .as_ref()
        .ok_or(PlanError::NoBootSource)?;
    let mut parts: Vec<String> = Vec::new();
    // QEMU's -append is a C string: the client's arguments end at a NUL, which is also where
    // a guest kernel stops reading them (docs/deviations.md).
    let client = boot.cmdline().split('\0').next().unwrap_or_default().trim();
    if !client.is_empty() {
        parts.push(client.to_string());
    }
    if let Some(root) = resources.drives.root() {
        match &root.partuuid {
            Some(uuid) => parts.push(format!("root=PARTUUID={uuid}")),
            // The root drive is always the first virtio-blk device, so the guest sees it first.
            None => parts.push("root=/dev/vda".to_string()),
        }
        parts.push(if root.is_read_only() { "ro" } else { "rw" }.to_string());
    } else if let Some((index, root)) = resources
        .pmem
        .iter()
        .enumerate()
        .find(|(_, p)| p.root_device)
    {
        // The guest names pmem devices in the order they are configured, as upstream's do.
        parts.push(format!("root=/dev/pmem{index}"));
        parts.push(if root.read_only { "ro" } else { "rw" }.to_string());
    }
    if let Some(khz) = tsc_khz.filter(|_| !boot.cmdline().contains("tsc_early_khz=")) {
        parts.push(format!("tsc_early_khz={khz}"));
    }
    let cmdline = parts.join(" ");
    // Like Firecracker, the device parameters count against the limit.
    let added = if legacy_interrupts(boot.cmdline())
        && Machine::for_resources(resources) == Machine::Microvm
    {
        device_count(resources) * LEGACY_DEVICE_PARAM_LEN
    } else {
        0
    };
    if cmdline.len() + added >= MAX_CMDLINE_LEN {
        return Err(PlanError::CmdlineTooLong {
            len: cmdline.len() + added,
        });
    }
    Ok(cmdline)
}

/// Whether the guest kernel will route interrupts without ACPI's tables: `noapic` (the Go SDK's
/// and firecracker-containerd's default arguments) leaves it the legacy PIC only, `acpi=off`
/// (Kata's) the MP table only. microvm's ACPI machine puts the virtio-mmio transports on a
/// second I/O APIC that only ACPI describes (interrupts 24 and up), and `noapic` beside its
/// ACPI tables crashes the guest in `setup_local_APIC`. Such a guest gets microvm without ACPI
/// instead: transports on interrupts 5 to 12, which the PIC and the MP table reach, and QEMU
/// appends `virtio_mmio.device=512@⟨addr⟩:⟨irq⟩` for each device to the command line, as
/// Firecracker does for every device. Its RTC (interrupt 8) is left out, as in Firecracker,
/// since it would share a transport's interrupt.
pub(crate) fn legacy_interrupts(boot_args: &str) -> bool {
    boot_args
        .split_ascii_whitespace()
        .any(|w| w == "noapic" || w == "acpi=off")
}

/// The number of virtio devices `resources` configure.
fn device_count(resources: &VmResources) -> usize {
    resources.drives.len()
        + resources.net.len()
        + usize::from(resources.balloon.is_some())
        + usize::from(resources.entropy.is_some())
        + usize::from(resources.vsock.is_some())
        + usize::from(resources.memory_hotplug.is_some())
        + resources.pmem.iter().count()
}

/// QEMU's chardev id for the vhost-user drive at `index` (in the resources' order).
pub(crate) fn vhost_user_chardev_id(index: usize) -> String {
    format!("vub_{index}")
}

/// The vhost-user socket squib's virtio-net device for the network interface at `index`
/// listens on, in the VM's private runtime directory.
pub(crate) fn net_socket(runtime_dir: &Path, index: usize) -> PathBuf {
    runtime_dir.join(format!("net{index}.sock"))
}

/// The vhost-user socket squib's vsock backend listens on (QEMU connects), in the VM's
/// private runtime directory.
pub(crate) fn vsock_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("vsock.sock")
}

/// QEMU's netdev id for the network interface at `index` (Firecracker ids need not be valid
/// QEMU ids).
pub(crate) fn netdev_id(index: usize) -> String {
    format!("net{index}")
}

/// Where the serial console goes: `serial_out_path` from `PUT /serial` wins over squib's default.
pub(crate) fn console_target(resources: &VmResources, default: &ConsoleTarget) -> ConsoleTarget {
    match resources
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref())
    {
        Some(path) => ConsoleTarget::File(PathBuf::from(path)),
        None => default.clone(),
    }
}

fn utf8<'p>(path: &'p Path, what: &'static str) -> Result<&'p str, PlanError> {
    path.to_str().ok_or_else(|| PlanError::NonUtf8Path {
        what,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests;
