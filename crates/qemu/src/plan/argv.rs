//! [`render`]: a [`LaunchPlan`] as QEMU's argv (without the program name). Pure and total:
//! every check happened when the plan was built.

use crate::accel::Accel;

use super::{
    BALLOON_ID, ConsoleTarget, Device, LaunchPlan, MEMORY_HOTPLUG_ID, Machine, MemoryBackend,
    PlacedDevice, VirtioKind, netdev_id, root_port_id,
};

/// QEMU's seccomp sandbox: on (QEMU's own syscall blacklist), and no obsolete syscalls, no
/// set*id/capability changes, no fork/exec, no scheduler/affinity/priority changes. QEMU
/// installs it on every thread before the guest runs.
pub(crate) const SANDBOX: [&str; 2] = [
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
];

/// QEMU's id of the guest RAM object (and of its RAM block in the migration stream).
pub(crate) const RAM_ID: &str = "ram";
/// The I/O thread free page hinting needs in QEMU.
const BALLOON_IOTHREAD: &str = "balloon-iothread";

/// Escapes a value for QEMU's `key=value,…` option syntax: a comma is written doubled.
pub(crate) fn escape_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// TCG's translation cache, in MiB. QEMU's default (1 GiB, at most an eighth of host RAM) is
/// only touched as it fills, but a booted guest leaves ~50 MiB of translated code in every
/// QEMU; 32 MiB holds a boot's hot code (measured: boot CPU within noise, ~16 MiB less
/// private memory per microVM; 16 MiB boots ~15% slower).
const TCG_TB_SIZE_MIB: u32 = 32;

/// The argv QEMU is started with.
pub(crate) fn render(plan: &LaunchPlan) -> Vec<String> {
    let mut args = Argv::default();
    if plan.sandbox {
        args.push(&SANDBOX);
    }
    args.push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if plan.paused {
        args.push(&["-S"]);
    }
    let machine = plan.machine.kind;
    // q35 without the SATA controller, SMBus and VMware port nobody uses (ACPI stays on: the
    // guest finds its PCI hot-plug slots there); its i8042 is built in.
    args.push(&[
        "-M",
        match machine {
            Machine::Microvm if plan.machine.legacy_interrupts => {
                "microvm,acpi=off,pit=on,pic=on,rtc=off,isa-serial=on,auto-kernel-cmdline=on"
            }
            Machine::Microvm => "microvm,acpi=on,pit=on,pic=on,rtc=on,isa-serial=on",
            Machine::Q35 => "q35,sata=off,smbus=off,vmport=off",
        },
    ]);
    if plan.machine.modern_mmio {
        args.push(&["-global", "virtio-mmio.force-legacy=false"]);
    }
    let accel = match plan.accel {
        Accel::Tcg => format!("tcg,tb-size={TCG_TB_SIZE_MIB}"),
        Accel::Kvm => plan.accel.qemu_name().to_string(),
    };
    args.push(&["-accel", &accel, "-cpu", &plan.cpu]);
    let mem = format!("{}M", plan.memory.size_mib);
    let m = match plan.memory.max_mib {
        // Memory devices live above the boot RAM, in the room `maxmem` reserves.
        Some(max) => format!("{mem},slots=1,maxmem={max}M"),
        None => mem.clone(),
    };
    args.push(&["-smp", &plan.vcpus.to_string(), "-m", &m]);
    let (path, share) = match &plan.memory.backend {
        MemoryBackend::Memfd { path } => (path, "on"),
        MemoryBackend::File {
            path,
            open_read_only: false,
        } => (path, "off"),
        MemoryBackend::File {
            path,
            open_read_only: true,
        } => (path, "off,readonly=on,rom=off"),
    };
    args.push(&[
        "-object",
        &format!(
            "memory-backend-file,id={RAM_ID},size={mem},share={share},mem-path={}",
            escape_option_value(path)
        ),
        "-machine",
        &format!("memory-backend={RAM_ID}"),
    ]);
    if machine == Machine::Microvm {
        // The i8042 controller is what Ctrl+Alt+Del goes through (q35 has one built in).
        args.push(&["-device", "i8042"]);
    }
    if let Some(boot) = &plan.kernel {
        // -kernel, -initrd and -append take their argument verbatim: no option-syntax escaping.
        args.push(&["-kernel", &boot.kernel]);
        if let Some(initrd) = &boot.initrd {
            args.push(&["-initrd", initrd]);
        }
        args.push(&["-append", &boot.cmdline]);
    }
    let console = match &plan.console {
        ConsoleTarget::Stdio => "stdio,id=console,signal=off".to_string(),
        ConsoleTarget::File(path) => format!(
            "file,id=console,path={},append=on",
            escape_option_value(&path.to_string_lossy())
        ),
        ConsoleTarget::Null => "null,id=console".to_string(),
        ConsoleTarget::Socket(path) => format!(
            "socket,id=console,path={}",
            escape_option_value(&path.to_string_lossy())
        ),
    };
    args.push(&["-chardev", &console, "-serial", "chardev:console"]);
    // A device's bus must exist when QEMU creates it: the root ports come first.
    for index in 0..plan.root_ports {
        args.push(&["-device", &root_port(index)]);
    }
    for device in &plan.devices {
        push_device(&mut args, machine, device);
    }
    // squib already listens on QMP's socket and QEMU inherits it: squib connects the moment
    // QEMU is spawned, and QEMU accepts when it is ready, with no polling in between.
    args.push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={},server=on,wait=off", plan.qmp_listener),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    if let Some(firmware) = &plan.firmware {
        args.push(&["-bios", &firmware.to_string_lossy()]);
    }
    if plan.incoming {
        args.push(&["-incoming", "defer"]);
    }
    args.0
}

#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn push(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(|s| s.to_string()));
    }
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

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// A device's back-end objects, then the device itself.
fn push_device(args: &mut Argv, machine: Machine, placed: &PlacedDevice) {
    let port = placed.port;
    let (kind, props) = match &placed.device {
        Device::Drive {
            names,
            path,
            read_only,
            no_flush,
            aio,
        } => {
            // No image locks, as Firecracker takes none: two microVMs may share a writable
            // image, and a clone may be restored from a snapshot while its source still runs.
            args.push(&[
                "-blockdev",
                &format!(
                    "driver=raw,node-name={node},read-only={ro},cache.direct=off,cache.no-flush={nf},\
                     file.driver=file,file.filename={file},file.aio={aio},file.locking=off",
                    node = names.node,
                    ro = on_off(*read_only),
                    nf = on_off(*no_flush),
                    file = escape_option_value(path),
                    aio = aio.qemu_name(),
                ),
            ]);
            (
                VirtioKind::Block,
                format!("drive={},id={}", names.node, names.device),
            )
        }
        Device::VhostUserDrive {
            chardev,
            device_id,
            connection,
        } => {
            args.push(&["-chardev", &format!("socket,id={chardev},fd={connection}")]);
            (
                VirtioKind::VhostUserBlock,
                format!("chardev={chardev},id={device_id}"),
            )
        }
        Device::Net {
            index,
            socket,
            mac,
            mtu,
            intx,
        } => {
            let id = netdev_id(*index);
            args.push(&[
                "-chardev",
                &format!("socket,id={id}chr,path={}", escape_option_value(socket)),
                "-netdev",
                &format!("vhost-user,id={id},chardev={id}chr"),
            ]);
            let mut device = format!("netdev={id},id=nic{index}");
            if let Some(mac) = mac {
                device.push_str(&format!(",mac={mac}"));
            }
            if let Some(mtu) = mtu {
                device.push_str(&format!(",host_mtu={mtu}"));
            }
            if *intx && machine.is_pci() {
                device.push_str(",vectors=0");
            }
            (VirtioKind::Net, device)
        }
        Device::Balloon {
            deflate_on_oom,
            free_page_reporting,
            free_page_hinting,
        } => {
            let mut device = format!(
                "id={BALLOON_ID},deflate-on-oom={},free-page-reporting={}",
                on_off(*deflate_on_oom),
                on_off(*free_page_reporting),
            );
            if *free_page_hinting {
                args.push(&["-object", &format!("iothread,id={BALLOON_IOTHREAD}")]);
                device.push_str(&format!(",free-page-hint=on,iothread={BALLOON_IOTHREAD}"));
            }
            (VirtioKind::Balloon, device)
        }
        Device::Rng { quota } => {
            args.push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
            let mut device = "rng=rng0,id=entropy0".to_string();
            if let Some((max_bytes, period)) = quota {
                device.push_str(&format!(",max-bytes={max_bytes},period={period}"));
            }
            (VirtioKind::Rng, device)
        }
        Device::Vsock { socket } => {
            args.push(&[
                "-chardev",
                &format!("socket,id=vsock,path={}", escape_option_value(socket)),
            ]);
            (
                VirtioKind::VhostUserVsock,
                "chardev=vsock,id=vsock".to_string(),
            )
        }
        Device::Pmem {
            index,
            path,
            size,
            read_only,
            memaddr,
        } => {
            args.push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=pmem_mem{index},mem-path={},size={size},share=on,readonly={}",
                    escape_option_value(path),
                    on_off(*read_only)
                ),
            ]);
            (
                VirtioKind::Pmem,
                format!(
                    "id=pmem{index},memdev=pmem_mem{index}{}",
                    memaddr_prop(*memaddr)
                ),
            )
        }
        Device::Mem {
            total_mib,
            block_mib,
            requested_mib,
            memaddr,
        } => {
            args.push(&[
                "-object",
                &format!("memory-backend-ram,id={MEMORY_HOTPLUG_ID}_ram,size={total_mib}M"),
            ]);
            (
                VirtioKind::Mem,
                format!(
                    "id={MEMORY_HOTPLUG_ID},memdev={MEMORY_HOTPLUG_ID}_ram,block-size={block_mib}M,requested-size={requested_mib}M{}",
                    memaddr_prop(*memaddr)
                ),
            )
        }
    };
    args.push(&["-device", &machine.device(kind, port, &props)]);
}

/// `,memaddr=…` for a memory device a restore puts back where it was.
fn memaddr_prop(memaddr: Option<u64>) -> String {
    memaddr
        .map(|addr| format!(",memaddr={addr}"))
        .unwrap_or_default()
}
