//! QEMU's command line as a pure function of the validated VM resources.
//!
//! No I/O happens here: everything the builder needs (accelerator, QMP socket path, console
//! target) is given by the caller, so the whole mapping is unit-tested without QEMU.

use std::path::{Path, PathBuf};

use squib_vmm::VmResources;
use squib_vmm::resources::balloon::BalloonDeviceConfig;
use squib_vmm::resources::boot_source::MAX_CMDLINE_LEN;
use squib_vmm::resources::drive::{CacheType, Drive, DriveBackend, IoEngine};
use squib_vmm::resources::entropy::EntropyDeviceConfig;
use squib_vmm::resources::memory_hotplug::MemoryHotplugConfig;
use squib_vmm::resources::net::NetworkInterfaceConfig;
use squib_vmm::resources::pmem::PmemConfig;

use crate::accel::Accel;

/// QEMU's `microvm` machine has this many virtio-mmio transports, and no hotplug.
pub const MAX_VIRTIO_MMIO_DEVICES: usize = 24;
/// Transports of the machine without ACPI (see [`legacy_interrupts`]): interrupts 5 to 12.
pub const MAX_LEGACY_VIRTIO_MMIO_DEVICES: usize = 8;
/// What QEMU appends to the guest command line per device without ACPI:
/// ` virtio_mmio.device=512@0xfeb00e00:12` at most.
const LEGACY_DEVICE_PARAM_LEN: usize = 37;

/// QEMU limits block node names to 31 bytes.
const MAX_NODE_NAME_LEN: usize = 31;

/// PCIe root ports squib can put on q35's root bus (slots 2 to 0x1e; 0 is the host bridge,
/// 1 unused, 0x1f the LPC bridge): one device per port.
pub const MAX_PCI_PORTS: usize = 29;
/// Free root ports a PCI machine keeps for devices hot-plugged after boot (at most
/// [`MAX_PCI_PORTS`] in all).
pub const HOTPLUG_PORTS: usize = 8;

/// The machine QEMU emulates. The launch plan picks it from the resources; every device
/// goes through [`Machine::device`], so a device's transport is decided in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: virtio-mmio transports, no hot-plug of any kind. The default.
    Microvm,
    /// `-M q35`: every virtio device is a virtio-*-pci function in a PCIe root port of its
    /// own, free ports take hot-plugged devices, and memory devices (virtio-mem,
    /// virtio-pmem) have a home. Chosen by `--enable-pci`, pmem and memory hot-plug.
    Q35,
}

/// The virtio devices squib builds, whatever their transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioKind {
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
    pub fn for_resources(resources: &VmResources) -> Self {
        if resources.pci_enabled || !resources.pmem.is_empty() || resources.memory_hotplug.is_some()
        {
            Self::Q35
        } else {
            Self::Microvm
        }
    }

    pub fn is_pci(self) -> bool {
        self == Self::Q35
    }

    /// QEMU's `-M` value. q35 without the SATA controller, SMBus and VMware port nobody
    /// uses (ACPI stays on: the guest finds its PCI hot-plug slots there); its i8042 is
    /// built in.
    /// `legacy`: the guest routes interrupts without ACPI (see [`legacy_interrupts`]); q35
    /// serves such a guest as it is (its virtio-pci devices use MSI-X).
    fn qemu_machine(self, legacy: bool) -> &'static str {
        match self {
            Self::Microvm if legacy => {
                "microvm,acpi=off,pit=on,pic=on,rtc=off,isa-serial=on,auto-kernel-cmdline=on"
            }
            Self::Microvm => "microvm,acpi=on,pit=on,pic=on,rtc=on,isa-serial=on",
            Self::Q35 => "q35,sata=off,smbus=off,vmport=off",
        }
    }

    /// QEMU's device type for `kind` on this machine's transport. `None`: the machine
    /// cannot carry the device (memory devices on microvm).
    pub fn device_type(self, kind: VirtioKind) -> Option<&'static str> {
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
    pub fn device(self, kind: VirtioKind, port: Option<usize>, props: &str) -> String {
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

/// QEMU id of the PCIe root port `index`.
pub fn root_port_id(index: usize) -> String {
    format!("rp{index}")
}

/// The `-device` value of PCIe root port `index`: slot `index + 2` of the root bus. It asks
/// the firmware to reserve no I/O window (virtio-pci devices on PCIe are modern, memory
/// BARs only), so 29 ports never exhaust the 64 KiB of I/O space.
fn root_port(index: usize) -> String {
    format!(
        "pcie-root-port,id={},bus=pcie.0,chassis={},addr={:#x},io-reserve=0",
        root_port_id(index),
        index + 1,
        index + 2
    )
}

/// Hands out root ports to cold-plugged devices, in order.
struct Ports {
    machine: Machine,
    used: usize,
}

impl Ports {
    fn next(&mut self) -> Option<usize> {
        self.machine.is_pci().then(|| {
            self.used += 1;
            self.used - 1
        })
    }

    /// Devices, one per port, with the ports first (a device's bus must exist when QEMU
    /// creates it) and [`HOTPLUG_PORTS`] free ones after them.
    fn total(&self) -> usize {
        if self.machine.is_pci() {
            (self.used + HOTPLUG_PORTS).min(MAX_PCI_PORTS)
        } else {
            0
        }
    }
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
    /// A Unix socket squib listens on ([`crate::serial::SerialRelay`]), which writes the
    /// client's `serial_out_path` through the serial rate limiter.
    Socket(PathBuf),
}

/// The launch facts that do not come from the client's resources.
#[derive(Clone, Copy, Debug)]
pub struct LaunchSpec<'a> {
    pub accel: Accel,
    /// Where QEMU listens for squib's QMP connection.
    pub qmp_socket: &'a Path,
    pub console: &'a ConsoleTarget,
    /// The host's TSC rate, handed to a TCG guest so it skips calibrating its clock.
    pub tsc_khz: Option<u64>,
    /// The size in bytes of each pmem device's backing file, in the resources' order (the
    /// engine reads them at start, when upstream opens the files).
    pub pmem_sizes: &'a [u64],
}

/// QEMU's seccomp sandbox: on (QEMU's own syscall blacklist), and no obsolete syscalls, no
/// set*id/capability changes, no fork/exec, no scheduler/affinity/priority changes. QEMU
/// installs it on every thread before the guest runs.
pub const SANDBOX: [&str; 2] = [
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
];

/// Puts [`SANDBOX`] at the front of an argv.
pub fn add_sandbox(args: &mut Vec<String>) {
    args.splice(0..0, SANDBOX.iter().map(|s| s.to_string()));
}

/// Why the resources cannot be turned into a QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("Cannot start microvm without kernel configuration.")]
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

/// Escapes a value for QEMU's `key=value,…` option syntax: a comma is written doubled.
pub fn escape_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// The guest kernel command line: the client's boot args, then, like Firecracker, the root
/// device (`root=/dev/vda` or `root=PARTUUID=…`) and `ro`/`rw` when a root drive exists.
///
/// With `tsc_khz` (TCG only), `tsc_early_khz=` is added unless the client set it: under TCG the
/// guest's TSC ticks at the host's rate, and on a busy host the kernel's calibration against
/// the emulated PIT fails and the boot hangs for good (microvm has no other timer to fall
/// back on).
pub fn kernel_cmdline(
    resources: &VmResources,
    tsc_khz: Option<u64>,
) -> Result<String, CmdlineError> {
    let boot = resources
        .boot_source
        .as_ref()
        .ok_or(CmdlineError::NoBootSource)?;
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
        return Err(CmdlineError::CmdlineTooLong {
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
pub fn legacy_interrupts(boot_args: &str) -> bool {
    boot_args
        .split_ascii_whitespace()
        .any(|w| w == "noapic" || w == "acpi=off")
}

/// The number of virtio-mmio devices `resources` configure.
fn device_count(resources: &VmResources) -> usize {
    resources.drives.len()
        + resources.net.len()
        + usize::from(resources.balloon.is_some())
        + usize::from(resources.entropy.is_some())
        + usize::from(resources.vsock.is_some())
        + usize::from(resources.memory_hotplug.is_some())
        + resources.pmem.iter().count()
}

/// QEMU's arguments (without the program name) for booting `resources`.
///
/// The guest starts paused (`-S`): the caller connects to QMP, then sends `cont`.
pub fn build_args(
    resources: &VmResources,
    spec: &LaunchSpec<'_>,
) -> Result<Vec<String>, CmdlineError> {
    let boot = resources
        .boot_source
        .as_ref()
        .ok_or(CmdlineError::NoBootSource)?;
    let machine = Machine::for_resources(resources);
    let legacy = legacy_interrupts(boot.cmdline());
    let max = if legacy {
        MAX_LEGACY_VIRTIO_MMIO_DEVICES
    } else {
        MAX_VIRTIO_MMIO_DEVICES
    };
    let devices = device_count(resources);
    if machine == Machine::Q35 && devices > MAX_PCI_PORTS {
        return Err(CmdlineError::TooManyPciDevices { count: devices });
    }
    if machine == Machine::Microvm && devices > max {
        return Err(CmdlineError::TooManyDevices {
            count: devices,
            max,
        });
    }
    let cmdline = kernel_cmdline(resources, spec.tsc_khz)?;
    let qmp = utf8(spec.qmp_socket, "QMP socket")?;

    let machine_config = &resources.machine_config;
    let mem = format!("{}M", machine_config.mem_size_mib);
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));

    push(&[
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-S",
    ]);
    push(&["-M", machine.qemu_machine(legacy)]);
    if machine == Machine::Microvm
        && (resources.vsock.is_some()
            || resources
                .drives
                .iter()
                .any(|d| matches!(d.backend, DriveBackend::VhostUser { .. })))
    {
        // microvm's virtio-mmio transports are legacy (version 1) by default, which
        // libvhost-user backends refuse ("virtio legacy devices aren't supported"). Modern
        // transports (version 2, as Firecracker's) only when a vhost-user device needs them,
        // so every other configuration keeps the device state its snapshots were taken with
        // (and a VM with a vhost-user drive cannot be snapshotted).
        push(&["-global", "virtio-mmio.force-legacy=false"]);
    }
    // A CPU template adjusts the accelerator's base model (crate::cpu_model).
    let cpu = crate::cpu_model::CpuModel::for_resources(resources).map_or_else(
        || spec.accel.cpu_model().to_string(),
        |model| model.qemu_cpu(spec.accel.cpu_model()),
    );
    push(&["-accel", spec.accel.qemu_name(), "-cpu", &cpu]);
    // Memory devices (virtio-mem) live above the boot RAM, in the room `maxmem` reserves.
    let pmem_bytes: u64 = spec.pmem_sizes.iter().sum();
    let hotplug_mib = resources
        .memory_hotplug
        .map_or(0, |h| u64::from(h.total_size_mib));
    let mem_arg = if machine.is_pci() && (hotplug_mib > 0 || pmem_bytes > 0) {
        format!(
            "{mem},slots=1,maxmem={}M",
            machine_config.mem_size_mib as u64 + hotplug_mib + pmem_bytes.div_ceil(1 << 20)
        )
    } else {
        mem.clone()
    };
    push(&[
        "-smp",
        &machine_config.vcpu_count.to_string(),
        "-m",
        &mem_arg,
    ]);
    // Shared guest RAM: vhost-user backends (block drives) map it, and snapshots need it.
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=ram,size={mem},share=on"),
        "-machine",
        "memory-backend=ram",
    ]);
    if machine == Machine::Microvm {
        // The i8042 controller is what Ctrl+Alt+Del goes through (q35 has one built in).
        push(&["-device", "i8042"]);
    }
    // -kernel, -initrd and -append take their argument verbatim: no option-syntax escaping.
    push(&["-kernel", &boot.config.kernel_image_path]);
    if let Some(initrd) = &boot.config.initrd_path {
        push(&["-initrd", initrd]);
    }
    push(&["-append", &cmdline]);
    let console = match spec.console {
        ConsoleTarget::Stdio => "stdio,id=console,signal=off".to_string(),
        ConsoleTarget::File(path) => format!(
            "file,id=console,path={},append=on",
            escape_option_value(utf8(path, "console")?)
        ),
        ConsoleTarget::Null => "null,id=console".to_string(),
        ConsoleTarget::Socket(path) => format!(
            "socket,id=console,path={}",
            escape_option_value(utf8(path, "console")?)
        ),
    };
    push(&["-chardev", &console, "-serial", "chardev:console"]);

    // The devices go to a list of their own: on a PCI machine their root ports come first.
    let mut ports = Ports { machine, used: 0 };
    let mut devs: Vec<String> = Vec::new();
    for (index, drive) in resources.drives.iter().enumerate() {
        let port = ports.next();
        match &drive.backend {
            DriveBackend::File { .. } => push_drive(&mut devs, machine, port, index, drive),
            DriveBackend::VhostUser { socket } => {
                push_vhost_user_drive(&mut devs, machine, port, index, &drive.id, socket)
            }
        }
    }
    for (index, iface) in resources.net.iter().enumerate() {
        let socket = net_socket(spec.qmp_socket, index);
        let port = ports.next();
        push_net(
            &mut devs,
            machine,
            port,
            index,
            &iface.config,
            utf8(&socket, "netdev socket")?,
        );
    }
    if let Some(balloon) = &resources.balloon {
        let port = ports.next();
        push_balloon(&mut devs, machine, port, balloon);
    }
    if let Some(entropy) = &resources.entropy {
        let port = ports.next();
        push_entropy(&mut devs, machine, port, entropy);
    }
    if resources.vsock.is_some() {
        let socket = vsock_socket(spec.qmp_socket);
        args.push("-chardev".to_string());
        args.push(format!(
            "socket,id=vsock,path={}",
            escape_option_value(utf8(&socket, "vsock socket")?)
        ));
        // The guest CID is not a property: QEMU reads it from the backend's config space.
        let port = ports.next();
        devs.push("-device".to_string());
        devs.push(machine.device(VirtioKind::VhostUserVsock, port, "chardev=vsock,id=vsock"));
    }
    for (index, pmem) in resources.pmem.iter().enumerate() {
        let size = spec.pmem_sizes.get(index).copied().unwrap_or(0);
        if size == 0 || !size.is_multiple_of(PMEM_ALIGN) {
            return Err(CmdlineError::PmemSize {
                path: pmem.path_on_host.clone(),
                size,
            });
        }
        let port = ports.next();
        push_pmem(&mut devs, machine, port, index, pmem, size);
    }
    if let Some(hotplug) = &resources.memory_hotplug {
        let port = ports.next();
        push_memory_hotplug(
            &mut devs,
            machine,
            port,
            hotplug,
            resources.memory_requested_mib,
        );
    }
    for index in 0..ports.total() {
        args.extend(["-device".to_string(), root_port(index)]);
    }
    args.extend(devs);
    args.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", escape_option_value(qmp)),
    ]);
    Ok(args)
}

/// Points QEMU's QMP monitor at a socket squib already listens on (`fd`, inherited by QEMU)
/// instead of a path QEMU binds itself: squib connects the moment QEMU is spawned, and QEMU
/// accepts when it is ready, with no polling for the socket file in between.
/// Returns false when the argv holds no `-qmp` to replace.
pub fn use_qmp_listener(args: &mut Vec<String>, fd: std::os::fd::RawFd) -> bool {
    let Some(at) = args.iter().position(|a| a == "-qmp") else {
        return false;
    };
    args.splice(
        at..(at + 2).min(args.len()),
        [
            "-chardev".to_string(),
            format!("socket,id=qmp,fd={fd},server=on,wait=off"),
            "-mon".to_string(),
            "chardev=qmp,mode=control".to_string(),
        ],
    );
    true
}

/// `-blockdev` (a raw format node over a file node) and its `virtio-blk-device`.
fn push_drive(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    index: usize,
    drive: &Drive,
) {
    let DriveBackend::File {
        path, read_only, ..
    } = &drive.backend
    else {
        return;
    };
    let names = drive_names(index, &drive.id);
    let on_off = |b: bool| if b { "on" } else { "off" };
    let no_flush = matches!(drive.cache_type, CacheType::Unsafe);
    // No image locks, as Firecracker takes none: two microVMs may share a writable image, and a
    // clone may be restored from a snapshot while its source still runs.
    args.push("-blockdev".to_string());
    args.push(format!(
        "driver=raw,node-name={node},read-only={ro},cache.direct=off,cache.no-flush={nf},\
         file.driver=file,file.filename={file},file.aio={aio},file.locking=off",
        node = names.node,
        ro = on_off(*read_only),
        nf = on_off(no_flush),
        file = escape_option_value(path),
        aio = qemu_aio(drive),
    ));
    args.push("-device".to_string());
    args.push(machine.device(
        VirtioKind::Block,
        port,
        &format!("drive={},id={}", names.node, names.device),
    ));
}

/// QEMU's chardev id for the vhost-user drive at `index` (in the resources' order).
pub fn vhost_user_chardev_id(index: usize) -> String {
    format!("vub_{index}")
}

/// A socket chardev connecting to the external vhost-user-blk backend, and the
/// `vhost-user-blk` device over it (the bare virtio device, which plugs into one of microvm's
/// virtio-mmio transports like `virtio-blk-device`). QEMU connects once, at start-up: the
/// backend must already listen. The device has no block node in QEMU: the backend owns the
/// data, its size and its read-only flag.
fn push_vhost_user_drive(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    index: usize,
    id: &str,
    socket: &str,
) {
    let chardev = vhost_user_chardev_id(index);
    args.push("-chardev".to_string());
    args.push(format!(
        "socket,id={chardev},path={}",
        escape_option_value(socket)
    ));
    args.push("-device".to_string());
    args.push(machine.device(
        VirtioKind::VhostUserBlock,
        port,
        &format!("chardev={chardev},id={}", drive_names(index, id).device),
    ));
}

/// The vhost-user socket squib's virtio-net device for the network interface at `index` listens
/// on: beside the QMP socket, in the VM's private runtime directory.
pub fn net_socket(qmp_socket: &Path, index: usize) -> PathBuf {
    qmp_socket.with_file_name(format!("net{index}.sock"))
}

/// The vhost-user socket squib's vsock backend listens on (QEMU connects): beside the QMP
/// socket, in the VM's private runtime directory.
pub fn vsock_socket(qmp_socket: &Path) -> PathBuf {
    qmp_socket.with_file_name("vsock.sock")
}

/// QEMU's netdev id for the network interface at `index` (Firecracker ids need not be valid
/// QEMU ids).
pub fn netdev_id(index: usize) -> String {
    format!("net{index}")
}

/// A socket chardev to squib's virtio-net device (which owns the TAP), the `vhost-user` netdev on
/// it and its virtio-net device; QEMU keeps the config space (MAC, MTU).
fn push_net(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    index: usize,
    config: &NetworkInterfaceConfig,
    socket: &str,
) {
    let id = netdev_id(index);
    args.push("-chardev".to_string());
    args.push(format!(
        "socket,id={id}chr,path={}",
        escape_option_value(socket)
    ));
    args.push("-netdev".to_string());
    args.push(format!("vhost-user,id={id},chardev={id}chr"));
    let mut device = format!("netdev={id},id=nic{index}");
    if let Some(mac) = config.guest_mac {
        device.push_str(&format!(",mac={mac}"));
    }
    if let Some(mtu) = config.mtu {
        device.push_str(&format!(",host_mtu={mtu}"));
    }
    args.push("-device".to_string());
    args.push(machine.device(VirtioKind::Net, port, &device));
}

/// QEMU's `aio=` for a drive: `Sync` is a thread pool, `Async` is io_uring (the engine turns
/// `Async` into `Sync`, with a warning, where the host refuses io_uring).
pub fn qemu_aio(drive: &Drive) -> &'static str {
    match drive.backend {
        DriveBackend::File {
            io_engine: IoEngine::Async,
            ..
        } => "io_uring",
        _ => "threads",
    }
}

/// QOM id of the balloon device (its QOM path is `/machine/peripheral/<id>`).
pub const BALLOON_ID: &str = "balloon0";
/// The I/O thread free page hinting needs in QEMU.
const BALLOON_IOTHREAD: &str = "balloon-iothread";

/// `virtio-balloon-device` with Firecracker's options. Free page hinting needs an I/O thread.
fn push_balloon(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    balloon: &BalloonDeviceConfig,
) {
    let on_off = |b: bool| if b { "on" } else { "off" };
    let mut device = format!(
        "id={BALLOON_ID},deflate-on-oom={},free-page-reporting={}",
        on_off(balloon.deflate_on_oom),
        on_off(balloon.free_page_reporting),
    );
    if balloon.free_page_hinting {
        args.push("-object".to_string());
        args.push(format!("iothread,id={BALLOON_IOTHREAD}"));
        device.push_str(&format!(",free-page-hint=on,iothread={BALLOON_IOTHREAD}"));
    }
    args.push("-device".to_string());
    args.push(machine.device(VirtioKind::Balloon, port, &device));
}

/// `virtio-rng-device` fed by the host's /dev/urandom. The bandwidth bucket becomes QEMU's
/// quota: at most `size` bytes per `refill_time` ms (`max-bytes`/`period`).
fn push_entropy(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    entropy: &EntropyDeviceConfig,
) {
    args.push("-object".to_string());
    args.push("rng-random,id=rng0,filename=/dev/urandom".to_string());
    let mut device = "rng=rng0,id=entropy0".to_string();
    if let Some(bucket) = entropy
        .to_config()
        .rate_limiter
        .and_then(|limiter| limiter.bandwidth)
    {
        device.push_str(&format!(
            ",max-bytes={},period={}",
            bucket.size, bucket.refill_time
        ));
    }
    args.push("-device".to_string());
    args.push(machine.device(VirtioKind::Rng, port, &device));
}

/// virtio-pmem regions are mapped in 2 MiB units.
const PMEM_ALIGN: u64 = 2 << 20;

/// virtio-pmem over the file itself (`share=on`: the guest's writes reach the file, as with
/// upstream's shared mapping); `read_only` maps it read-only.
fn push_pmem(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    index: usize,
    pmem: &PmemConfig,
    size: u64,
) {
    let on_off = |b: bool| if b { "on" } else { "off" };
    args.push("-object".to_string());
    args.push(format!(
        "memory-backend-file,id=pmem_mem{index},mem-path={},size={size},share=on,readonly={}",
        escape_option_value(&pmem.path_on_host),
        on_off(pmem.read_only)
    ));
    args.push("-device".to_string());
    args.push(machine.device(
        VirtioKind::Pmem,
        port,
        &format!("id=pmem{index},memdev=pmem_mem{index}"),
    ));
}

/// QOM id of the virtio-mem device (QOM path `/machine/peripheral/<id>`).
pub const MEMORY_HOTPLUG_ID: &str = "hotplug_mem";

/// virtio-mem over its own private RAM backend of `total_size_mib` (unplugged blocks are
/// discarded from it), in blocks of `block_size_mib` (QEMU's minimum on x86 is 2 MiB, the
/// same as upstream's), starting at `requested_mib` plugged.
fn push_memory_hotplug(
    args: &mut Vec<String>,
    machine: Machine,
    port: Option<usize>,
    hotplug: &MemoryHotplugConfig,
    requested_mib: u32,
) {
    args.push("-object".to_string());
    args.push(format!(
        "memory-backend-ram,id={MEMORY_HOTPLUG_ID}_ram,size={}M",
        hotplug.total_size_mib
    ));
    args.push("-device".to_string());
    args.push(machine.device(
        VirtioKind::Mem,
        port,
        &format!(
            "id={MEMORY_HOTPLUG_ID},memdev={MEMORY_HOTPLUG_ID}_ram,block-size={}M,requested-size={requested_mib}M",
            hotplug.block_size_mib
        ),
    ));
}

/// Where the serial console goes: `serial_out_path` from `PUT /serial` wins over squib's default.
pub fn console_target(resources: &VmResources, default: &ConsoleTarget) -> ConsoleTarget {
    match resources
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref())
    {
        Some(path) => ConsoleTarget::File(PathBuf::from(path)),
        None => default.clone(),
    }
}

fn utf8<'p>(path: &'p Path, what: &'static str) -> Result<&'p str, CmdlineError> {
    path.to_str().ok_or_else(|| CmdlineError::NonUtf8Path {
        what,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use squib_vmm::resources::boot_source::{BootSource, BootSourceConfig, DEFAULT_KERNEL_CMDLINE};
    use squib_vmm::resources::machine_config::MachineConfig;

    fn boot(args: Option<&str>, initrd: Option<&str>) -> BootSource {
        BootSource {
            config: BootSourceConfig {
                kernel_image_path: "/k/vmlinux".into(),
                initrd_path: initrd.map(Into::into),
                boot_args: args.map(Into::into),
            },
        }
    }

    fn file_drive(id: &str, root: bool, path: &str, read_only: bool) -> Drive {
        Drive {
            id: id.into(),
            is_root_device: root,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            backend: DriveBackend::File {
                path: path.into(),
                read_only,
                io_engine: IoEngine::Sync,
                rate_limiter: None,
            },
        }
    }

    fn resources(drives: Vec<Drive>) -> VmResources {
        let mut res = VmResources {
            machine_config: MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..MachineConfig::default()
            },
            boot_source: Some(boot(
                Some("console=ttyS0 reboot=k panic=1"),
                Some("/k/initrd"),
            )),
            ..VmResources::default()
        };
        for d in drives {
            res.drives.insert(d).unwrap();
        }
        res
    }

    fn args(res: &VmResources) -> Vec<String> {
        build_args(
            res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/run/squib/qmp.sock"),
                console: &ConsoleTarget::Stdio,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap()
    }

    /// The value following the `n`-th occurrence of `flag`.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn typical_config_full_argv() {
        let res = resources(vec![
            file_drive("data", false, "/img/data.ext4", false),
            file_drive("rootfs", true, "/img/rootfs.ext4", true),
        ]);
        let expected = [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-S",
            "-M",
            "microvm,acpi=on,pit=on,pic=on,rtc=on,isa-serial=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=ram,size=256M,share=on",
            "-machine",
            "memory-backend=ram",
            "-device",
            "i8042",
            "-kernel",
            "/k/vmlinux",
            "-initrd",
            "/k/initrd",
            "-append",
            "console=ttyS0 reboot=k panic=1 root=/dev/vda ro",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
            "-blockdev",
            "driver=raw,node-name=drive_rootfs,read-only=on,cache.direct=off,cache.no-flush=on,file.driver=file,file.filename=/img/rootfs.ext4,file.aio=threads,file.locking=off",
            "-device",
            "virtio-blk-device,drive=drive_rootfs,id=blk_rootfs",
            "-blockdev",
            "driver=raw,node-name=drive_data,read-only=off,cache.direct=off,cache.no-flush=on,file.driver=file,file.filename=/img/data.ext4,file.aio=threads,file.locking=off",
            "-device",
            "virtio-blk-device,drive=drive_data,id=blk_data",
            "-qmp",
            "unix:/run/squib/qmp.sock,server=on,wait=off",
        ];
        assert_eq!(args(&res), expected);
    }

    #[test]
    fn enable_pci_puts_every_device_in_a_root_port_and_keeps_free_ones() {
        let mut res = resources(vec![
            file_drive("rootfs", true, "/img/rootfs.ext4", false),
            file_drive("data", false, "/img/data.ext4", true),
        ]);
        res.pci_enabled = true;
        res.balloon = Some(BalloonDeviceConfig::default());
        res.entropy = Some(EntropyDeviceConfig::default());
        let argv = args(&res);
        assert_eq!(values(&argv, "-M"), ["q35,sata=off,smbus=off,vmport=off"]);
        // q35 has its own i8042; the root parameters are the same as on microvm.
        assert!(!values(&argv, "-device").contains(&"i8042"));
        assert_eq!(
            values(&argv, "-append"),
            ["console=ttyS0 reboot=k panic=1 root=/dev/vda rw"]
        );
        let devices = values(&argv, "-device");
        let ports: Vec<_> = devices
            .iter()
            .filter(|d| d.starts_with("pcie-root-port,"))
            .collect();
        assert_eq!(ports.len(), 4 + HOTPLUG_PORTS);
        assert_eq!(
            ports[0],
            &"pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x2,io-reserve=0"
        );
        let rest: Vec<&str> = devices
            .iter()
            .copied()
            .filter(|d| !d.starts_with("pcie-root-port,"))
            .collect();
        assert_eq!(
            rest,
            [
                "virtio-blk-pci,bus=rp0,drive=drive_rootfs,id=blk_rootfs",
                "virtio-blk-pci,bus=rp1,drive=drive_data,id=blk_data",
                "virtio-balloon-pci,bus=rp2,id=balloon0,deflate-on-oom=off,free-page-reporting=off",
                "virtio-rng-pci,bus=rp3,rng=rng0,id=entropy0",
            ]
        );
        // Root ports come before the devices that sit in them.
        let first_port = argv
            .iter()
            .position(|a| a.starts_with("pcie-root-port"))
            .unwrap();
        let first_dev = argv
            .iter()
            .position(|a| a.starts_with("virtio-blk-pci"))
            .unwrap();
        assert!(first_port < first_dev);
    }

    #[test]
    fn memory_hotplug_is_a_virtio_mem_device_above_maxmem() {
        let mut res = resources(vec![]);
        res.memory_hotplug = Some(squib_vmm::resources::memory_hotplug::MemoryHotplugConfig {
            total_size_mib: 1024,
            block_size_mib: 4,
            slot_size_mib: 128,
        });
        res.memory_requested_mib = 512;
        let argv = args(&res);
        assert_eq!(values(&argv, "-M"), ["q35,sata=off,smbus=off,vmport=off"]);
        assert_eq!(values(&argv, "-m"), ["256M,slots=1,maxmem=1280M"]);
        assert!(
            values(&argv, "-object").contains(&"memory-backend-ram,id=hotplug_mem_ram,size=1024M")
        );
        assert!(values(&argv, "-device").contains(
            &"virtio-mem-pci,bus=rp0,id=hotplug_mem,memdev=hotplug_mem_ram,block-size=4M,requested-size=512M"
        ));
    }

    #[test]
    fn transport_switch_covers_every_device() {
        use VirtioKind::*;
        for kind in [
            Block,
            VhostUserBlock,
            Net,
            Balloon,
            Rng,
            VhostUserVsock,
            Pmem,
            Mem,
        ] {
            assert!(Machine::Q35.device_type(kind).unwrap().ends_with("-pci"));
        }
        assert_eq!(Machine::Microvm.device_type(Pmem), None);
        assert_eq!(Machine::Microvm.device_type(Mem), None);
        assert_eq!(
            Machine::Q35.device(Net, Some(3), "netdev=net0,id=nic0"),
            "virtio-net-pci,bus=rp3,netdev=net0,id=nic0,romfile="
        );
        assert_eq!(
            Machine::Microvm.device(Net, None, "netdev=net0,id=nic0"),
            "virtio-net-device,netdev=net0,id=nic0"
        );
        // pmem and memory hot-plug need the PCI machine even without --enable-pci.
        let res = VmResources {
            memory_hotplug: Some(squib_vmm::resources::memory_hotplug::MemoryHotplugConfig {
                total_size_mib: 128,
                block_size_mib: 2,
                slot_size_mib: 128,
            }),
            ..VmResources::default()
        };
        assert_eq!(Machine::for_resources(&res), Machine::Q35);
        assert_eq!(
            Machine::for_resources(&VmResources::default()),
            Machine::Microvm
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let res = resources(vec![]);
        let a = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Kvm,
                qmp_socket: Path::new("/q"),
                console: &ConsoleTarget::Stdio,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap();
        assert_eq!(values(&a, "-accel"), ["kvm"]);
        assert_eq!(values(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn no_drive_no_root_and_no_initrd() {
        let mut res = resources(vec![]);
        res.boot_source = Some(boot(Some("console=ttyS0"), None));
        let a = args(&res);
        assert_eq!(values(&a, "-append"), ["console=ttyS0"]);
        assert!(values(&a, "-initrd").is_empty());
        assert!(values(&a, "-blockdev").is_empty());
        assert!(!a.iter().any(|s| s.contains("virtio-blk")));
    }

    #[test]
    fn non_root_drive_adds_no_root_parameter() {
        let res = resources(vec![file_drive("data", false, "/d", true)]);
        let a = args(&res);
        assert_eq!(values(&a, "-append"), ["console=ttyS0 reboot=k panic=1"]);
        assert_eq!(values(&a, "-blockdev").len(), 1);
        assert!(values(&a, "-blockdev")[0].contains("read-only=on"));
    }

    #[test]
    fn root_rules_rw_ro_partuuid() {
        let res = resources(vec![file_drive("root", true, "/r", false)]);
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw"
        );
        let mut d = file_drive("root", true, "/r", true);
        d.partuuid = Some("0eaa91a0-01".into());
        let res = resources(vec![d]);
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            "console=ttyS0 reboot=k panic=1 root=PARTUUID=0eaa91a0-01 ro"
        );
    }

    #[test]
    fn default_and_empty_boot_args() {
        let mut res = resources(vec![file_drive("root", true, "/r", false)]);
        res.boot_source = Some(boot(None, None));
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            format!("{DEFAULT_KERNEL_CMDLINE} root=/dev/vda rw")
        );
        res.boot_source = Some(boot(Some(""), None));
        assert_eq!(kernel_cmdline(&res, None).unwrap(), "root=/dev/vda rw");
    }

    #[test]
    fn tsc_rate_is_added_unless_the_client_set_one() {
        let mut res = resources(vec![]);
        res.boot_source = Some(boot(Some("console=ttyS0"), None));
        assert_eq!(
            kernel_cmdline(&res, Some(2_596_148)).unwrap(),
            "console=ttyS0 tsc_early_khz=2596148"
        );
        res.boot_source = Some(boot(Some("console=ttyS0 tsc_early_khz=1000"), None));
        assert_eq!(
            kernel_cmdline(&res, Some(2_596_148)).unwrap(),
            "console=ttyS0 tsc_early_khz=1000"
        );
    }

    #[test]
    fn root_drive_always_first_and_cache_policy() {
        let mut data = file_drive("data", false, "/d", false);
        data.cache_type = CacheType::Writeback;
        let res = resources(vec![data, file_drive("root", true, "/r", false)]);
        let a = args(&res);
        let blockdevs = values(&a, "-blockdev");
        assert!(blockdevs[0].contains("node-name=drive_root,"));
        assert!(blockdevs[0].contains("cache.no-flush=on"));
        assert!(blockdevs[1].contains("node-name=drive_data,"));
        assert!(blockdevs[1].contains("cache.no-flush=off"));
        assert!(blockdevs[1].contains("read-only=off"));
        let devices: Vec<_> = values(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-blk"))
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-blk-device,drive=drive_root,id=blk_root",
                "virtio-blk-device,drive=drive_data,id=blk_data"
            ]
        );
    }

    #[test]
    fn commas_in_option_values_are_doubled() {
        assert_eq!(escape_option_value("/a,b,,c"), "/a,,b,,,,c");
        assert_eq!(escape_option_value("/plain"), "/plain");
        let mut res = resources(vec![file_drive("root", true, "/img/a,b.ext4", false)]);
        res.boot_source = Some(BootSource {
            config: BootSourceConfig {
                kernel_image_path: "/k,1/vmlinux".into(),
                initrd_path: Some("/k,1/initrd".into()),
                boot_args: Some("console=ttyS0".into()),
            },
        });
        let a = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/run/a,b/qmp.sock"),
                console: &ConsoleTarget::File("/log/c,d.log".into()),
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap();
        assert!(values(&a, "-blockdev")[0].contains("file.filename=/img/a,,b.ext4,file.aio"));
        assert_eq!(
            values(&a, "-qmp"),
            ["unix:/run/a,,b/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            values(&a, "-chardev"),
            ["file,id=console,path=/log/c,,d.log,append=on"]
        );
        // Taken verbatim by QEMU: not escaped.
        assert_eq!(values(&a, "-kernel"), ["/k,1/vmlinux"]);
        assert_eq!(values(&a, "-initrd"), ["/k,1/initrd"]);
    }

    #[test]
    fn qmp_listener_replaces_the_qmp_path() {
        let mut args: Vec<String> = ["-S", "-qmp", "unix:/q,server=on,wait=off", "-x"]
            .map(String::from)
            .to_vec();
        assert!(use_qmp_listener(&mut args, 7));
        assert_eq!(
            args,
            [
                "-S",
                "-chardev",
                "socket,id=qmp,fd=7,server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
                "-x"
            ]
        );
        assert!(!use_qmp_listener(&mut args, 7));
    }

    #[test]
    fn console_targets() {
        let res = resources(vec![]);
        let a = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/q"),
                console: &ConsoleTarget::Null,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap();
        assert_eq!(values(&a, "-chardev"), ["null,id=console"]);
        assert_eq!(values(&a, "-serial"), ["chardev:console"]);
    }

    #[test]
    fn a_relayed_console_is_a_socket_chardev() {
        let res = resources(vec![]);
        let a = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/q"),
                console: &ConsoleTarget::Socket("/run/x,y/serial.sock".into()),
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap();
        assert_eq!(
            values(&a, "-chardev"),
            ["socket,id=console,path=/run/x,,y/serial.sock"]
        );
    }

    #[test]
    fn drive_names_fall_back_to_index() {
        assert_eq!(
            drive_names(3, "rootfs"),
            DriveNames {
                node: "drive_rootfs".into(),
                device: "blk_rootfs".into()
            }
        );
        // Unicode alphanumerics are valid Firecracker ids but not QEMU ids.
        assert_eq!(drive_names(1, "диск").node, "drive1");
        assert_eq!(drive_names(1, "диск").device, "blk1");
        let long = "a".repeat(25);
        assert_eq!(
            drive_names(0, &long[..25]).node,
            format!("drive_{}", &long[..25])
        );
        assert_eq!(drive_names(2, &"a".repeat(26)).node, "drive2");
    }

    #[test]
    fn no_boot_source_is_refused() {
        let mut res = resources(vec![]);
        res.boot_source = None;
        let err = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/q"),
                console: &ConsoleTarget::Stdio,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap_err();
        assert_eq!(err, CmdlineError::NoBootSource);
    }

    fn vhost_drive(id: &str, root: bool, socket: &str) -> Drive {
        Drive {
            id: id.into(),
            is_root_device: root,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            backend: DriveBackend::VhostUser {
                socket: socket.into(),
            },
        }
    }

    #[test]
    fn vhost_user_drive_is_a_socket_chardev_and_a_vhost_user_blk_device() {
        let res = resources(vec![
            file_drive("root", true, "/r", false),
            vhost_drive("vhost0", false, "/run/a,b/vhost.sock"),
            file_drive("data", false, "/d", false),
        ]);
        let a = args(&res);
        // No block node in QEMU for it: only the file drives get a -blockdev.
        let blockdevs = values(&a, "-blockdev");
        assert_eq!(blockdevs.len(), 2);
        assert!(blockdevs[0].contains("node-name=drive_root,"));
        assert!(blockdevs[1].contains("node-name=drive_data,"));
        assert!(values(&a, "-chardev").contains(&"socket,id=vub_1,path=/run/a,,b/vhost.sock"));
        let blk: Vec<_> = values(&a, "-device")
            .into_iter()
            .filter(|d| d.contains("blk"))
            .collect();
        // Device order is the guest's /dev/vdX order.
        assert_eq!(
            blk,
            [
                "virtio-blk-device,drive=drive_root,id=blk_root",
                "vhost-user-blk,chardev=vub_1,id=blk_vhost0",
                "virtio-blk-device,drive=drive_data,id=blk_data",
            ]
        );
        assert_eq!(vhost_user_chardev_id(4), "vub_4");
        assert_eq!(values(&a, "-global"), ["virtio-mmio.force-legacy=false"]);
        // Without one, the transports stay legacy.
        let a = args(&resources(vec![file_drive("root", true, "/r", false)]));
        assert!(values(&a, "-global").is_empty());
    }

    #[test]
    fn vhost_user_root_drive_is_vda_and_rw() {
        let mut root = vhost_drive("root", true, "/s");
        let res = resources(vec![file_drive("data", false, "/d", true), root.clone()]);
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw"
        );
        let a = args(&res);
        let devices: Vec<_> = values(&a, "-device")
            .into_iter()
            .filter(|d| d.contains("blk"))
            .collect();
        assert_eq!(
            devices,
            [
                "vhost-user-blk,chardev=vub_0,id=blk_root",
                "virtio-blk-device,drive=drive_data,id=blk_data",
            ]
        );
        root.partuuid = Some("0eaa91a0-01".into());
        let res = resources(vec![root]);
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            "console=ttyS0 reboot=k panic=1 root=PARTUUID=0eaa91a0-01 rw"
        );
    }

    #[test]
    fn vhost_user_drives_count_toward_the_24_transports() {
        let spec = LaunchSpec {
            accel: Accel::Tcg,
            qmp_socket: Path::new("/q"),
            console: &ConsoleTarget::Stdio,
            tsc_khz: None,
            pmem_sizes: &[],
        };
        let drives = |n: usize| {
            (0..n)
                .map(|i| vhost_drive(&format!("v{i}"), false, &format!("/s{i}")))
                .collect::<Vec<_>>()
        };
        let a = build_args(&resources(drives(24)), &spec).unwrap();
        assert_eq!(
            values(&a, "-device")
                .iter()
                .filter(|d| d.starts_with("vhost-user-blk,"))
                .count(),
            24
        );
        assert_eq!(
            build_args(&resources(drives(25)), &spec).unwrap_err(),
            CmdlineError::TooManyDevices { count: 25, max: 24 }
        );
    }

    #[test]
    fn noapic_or_acpi_off_boot_microvm_without_acpi() {
        for args in [
            "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules",
            "reboot=k panic=1 acpi=off",
        ] {
            let mut res = resources(vec![file_drive("root", true, "/r", false)]);
            res.boot_source = Some(boot(Some(args), None));
            let a = args_of(&res);
            assert_eq!(
                values(&a, "-M"),
                ["microvm,acpi=off,pit=on,pic=on,rtc=off,isa-serial=on,auto-kernel-cmdline=on"]
            );
        }
        // Only whole words count.
        assert!(!legacy_interrupts("noapictimer acpi=offx xacpi=off"));
        assert!(legacy_interrupts("a\tnoapic"));
    }

    #[test]
    fn without_acpi_at_most_8_devices_and_their_parameters_count_against_the_limit() {
        let drives = |n: usize| {
            (0..n)
                .map(|i| file_drive(&format!("d{i}"), false, &format!("/d{i}"), true))
                .collect::<Vec<_>>()
        };
        let mut res = resources(drives(8));
        res.boot_source = Some(boot(Some("noapic"), None));
        assert_eq!(values(&args_of(&res), "-blockdev").len(), 8);
        let mut res = resources(drives(9));
        res.boot_source = Some(boot(Some("noapic"), None));
        let err = build_args(&res, &spec()).unwrap_err();
        assert_eq!(err, CmdlineError::TooManyDevices { count: 9, max: 8 });
        assert_eq!(
            err.to_string(),
            "9 virtio devices are configured, but QEMU's microvm machine offers at most 8 \
             when the kernel command line has `noapic` or `acpi=off`"
        );
        let mut res = resources(drives(2));
        let args = |len: usize| format!("noapic {}", "x".repeat(len - "noapic ".len() - 2 * 37));
        res.boot_source = Some(boot(Some(&args(MAX_CMDLINE_LEN - 1)), None));
        assert!(kernel_cmdline(&res, None).is_ok());
        res.boot_source = Some(boot(Some(&args(MAX_CMDLINE_LEN)), None));
        assert_eq!(
            kernel_cmdline(&res, None),
            Err(CmdlineError::CmdlineTooLong {
                len: MAX_CMDLINE_LEN
            })
        );
    }

    fn spec() -> LaunchSpec<'static> {
        LaunchSpec {
            accel: Accel::Tcg,
            qmp_socket: Path::new("/q"),
            console: &ConsoleTarget::Stdio,
            tsc_khz: None,
            pmem_sizes: &[],
        }
    }

    fn args_of(res: &VmResources) -> Vec<String> {
        build_args(res, &spec()).unwrap()
    }

    #[test]
    fn client_arguments_end_at_a_nul() {
        let mut res = resources(vec![file_drive("root", true, "/r", false)]);
        res.boot_source = Some(boot(Some("console=ttyS0\0 quiet"), None));
        assert_eq!(
            kernel_cmdline(&res, None).unwrap(),
            "console=ttyS0 root=/dev/vda rw"
        );
    }

    #[test]
    fn at_most_24_virtio_devices() {
        let spec = LaunchSpec {
            accel: Accel::Tcg,
            qmp_socket: Path::new("/q"),
            console: &ConsoleTarget::Stdio,
            tsc_khz: None,
            pmem_sizes: &[],
        };
        let drives = |n: usize| {
            (0..n)
                .map(|i| file_drive(&format!("d{i}"), false, &format!("/d{i}"), true))
                .collect::<Vec<_>>()
        };
        let a = build_args(&resources(drives(24)), &spec).unwrap();
        assert_eq!(values(&a, "-blockdev").len(), 24);
        let err = build_args(&resources(drives(25)), &spec).unwrap_err();
        assert_eq!(err, CmdlineError::TooManyDevices { count: 25, max: 24 });
        assert_eq!(
            err.to_string(),
            "25 virtio devices are configured, but QEMU's microvm machine offers at most 24"
        );
    }

    #[test]
    fn network_interfaces_get_a_vhost_user_netdev_and_a_virtio_net_device() {
        let mut res = resources(vec![file_drive("root", true, "/r", false)]);
        let open: squib_vmm::tap::TapOpener =
            std::sync::Arc::new(|name: &str| Ok(squib_vmm::tap::TapHandle::detached(name)));
        for json in [
            r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}"#,
            r#"{"iface_id":"net-1","host_dev_name":"tap1","mtu":9000}"#,
        ] {
            res.net
                .insert(serde_json::from_str(json).unwrap(), &open)
                .unwrap();
        }
        let a = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/run/x,y/qmp.sock"),
                console: &ConsoleTarget::Stdio,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap();
        assert_eq!(
            values(&a, "-netdev"),
            [
                "vhost-user,id=net0,chardev=net0chr",
                "vhost-user,id=net1,chardev=net1chr",
            ]
        );
        assert_eq!(
            values(&a, "-chardev")
                .into_iter()
                .filter(|c| c.contains("chr,"))
                .collect::<Vec<_>>(),
            [
                "socket,id=net0chr,path=/run/x,,y/net0.sock",
                "socket,id=net1chr,path=/run/x,,y/net1.sock",
            ]
        );
        let nics: Vec<_> = values(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-net"))
            .collect();
        assert_eq!(
            nics,
            [
                "virtio-net-device,netdev=net0,id=nic0,mac=06:00:ac:10:00:02",
                "virtio-net-device,netdev=net1,id=nic1,host_mtu=9000",
            ]
        );
        // squib is the vhost-user device; the kernel's vhost-net is never asked for.
        assert!(!a.iter().any(|s| s.contains("vhost=on")));
        assert_eq!(
            net_socket(Path::new("/run/d/qmp.sock"), 3),
            Path::new("/run/d/net3.sock")
        );
        // Drives and interfaces share microvm's 24 transports.
        for i in 2..24 {
            res.net
                .insert(
                    serde_json::from_str(&format!(
                        r#"{{"iface_id":"n{i}","host_dev_name":"tap{i}"}}"#
                    ))
                    .unwrap(),
                    &open,
                )
                .unwrap();
        }
        let err = build_args(
            &res,
            &LaunchSpec {
                accel: Accel::Tcg,
                qmp_socket: Path::new("/q"),
                console: &ConsoleTarget::Stdio,
                tsc_khz: None,
                pmem_sizes: &[],
            },
        )
        .unwrap_err();
        assert_eq!(err, CmdlineError::TooManyDevices { count: 25, max: 24 });
    }

    #[test]
    fn io_engine_async_is_io_uring() {
        let mut d = file_drive("data", false, "/d", false);
        assert_eq!(qemu_aio(&d), "threads");
        if let DriveBackend::File { io_engine, .. } = &mut d.backend {
            *io_engine = IoEngine::Async;
        }
        assert_eq!(qemu_aio(&d), "io_uring");
        let a = args(&resources(vec![d]));
        assert!(values(&a, "-blockdev")[0].ends_with(",file.aio=io_uring,file.locking=off"));
    }

    #[test]
    fn balloon_and_entropy_devices() {
        let mut res = resources(vec![file_drive("root", true, "/r", false)]);
        res.balloon = Some(BalloonDeviceConfig {
            amount_mib: 16,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_hinting: false,
            free_page_reporting: true,
        });
        res.entropy = Some(EntropyDeviceConfig::default());
        let a = args(&res);
        let devices = values(&a, "-device");
        assert_eq!(
            &devices[devices.len() - 2..],
            [
                "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
                "virtio-rng-device,rng=rng0,id=entropy0",
            ]
        );
        assert_eq!(
            values(&a, "-object")[1..],
            ["rng-random,id=rng0,filename=/dev/urandom"]
        );

        res.balloon = Some(BalloonDeviceConfig {
            free_page_hinting: true,
            ..BalloonDeviceConfig::default()
        });
        res.entropy = Some(
            serde_json::from_str(
                r#"{"rate_limiter":{"bandwidth":{"size":1000,"refill_time":100},"ops":{"size":5,"refill_time":10}}}"#,
            )
            .unwrap(),
        );
        let a = args(&res);
        assert!(values(&a, "-object").contains(&"iothread,id=balloon-iothread"));
        let devices = values(&a, "-device");
        assert_eq!(
            &devices[devices.len() - 2..],
            [
                "virtio-balloon-device,id=balloon0,deflate-on-oom=off,free-page-reporting=off,free-page-hint=on,iothread=balloon-iothread",
                "virtio-rng-device,rng=rng0,id=entropy0,max-bytes=1000,period=100",
            ]
        );
    }

    #[test]
    fn balloon_and_entropy_count_as_virtio_devices() {
        let drives = (0..23)
            .map(|i| file_drive(&format!("d{i}"), false, &format!("/d{i}"), true))
            .collect();
        let mut res = resources(drives);
        res.balloon = Some(BalloonDeviceConfig::default());
        let spec = LaunchSpec {
            accel: Accel::Tcg,
            qmp_socket: Path::new("/q"),
            console: &ConsoleTarget::Stdio,
            tsc_khz: None,
            pmem_sizes: &[],
        };
        assert!(build_args(&res, &spec).is_ok());
        res.entropy = Some(EntropyDeviceConfig::default());
        assert_eq!(
            build_args(&res, &spec).unwrap_err(),
            CmdlineError::TooManyDevices { count: 25, max: 24 }
        );
    }

    #[test]
    fn serial_out_path_becomes_the_console_file() {
        let mut res = resources(vec![]);
        assert_eq!(
            console_target(&res, &ConsoleTarget::Stdio),
            ConsoleTarget::Stdio
        );
        res.serial = Some(squib_vmm::resources::serial::SerialConfig {
            serial_out_path: Some("/tmp/serial.log".into()),
            rate_limiter: None,
        });
        assert_eq!(
            console_target(&res, &ConsoleTarget::Stdio),
            ConsoleTarget::File("/tmp/serial.log".into())
        );
    }

    #[test]
    fn cmdline_with_root_parameters_must_fit() {
        let mut res = resources(vec![file_drive("root", true, "/r", false)]);
        res.boot_source = Some(boot(Some(&"x".repeat(MAX_CMDLINE_LEN - 5)), None));
        assert!(matches!(
            kernel_cmdline(&res, None),
            Err(CmdlineError::CmdlineTooLong { .. })
        ));
    }
}
