//! The plan's mapping from resources, checked on the argv [`super::argv::render`] gives
//! QEMU.

use std::path::Path;

use super::argv::{escape_option_value, render};
use super::*;
use crate::caps::Capabilities;
use crate::snapshot::EngineMeta;
use squib_vmm::resources::balloon::BalloonDeviceConfig;
use squib_vmm::resources::boot_source::{BootSource, BootSourceConfig, DEFAULT_KERNEL_CMDLINE};
use squib_vmm::resources::entropy::EntropyDeviceConfig;
use squib_vmm::resources::machine_config::{MachineConfig, StaticCpuTemplate};

/// The launch facts of the old builder; the rest of [`LaunchInputs`] is fixed for the tests.
struct LaunchSpec<'a> {
    accel: Accel,
    qmp_socket: &'a Path,
    console: &'a ConsoleTarget,
    tsc_khz: Option<u64>,
    pmem_sizes: &'a [u64],
}

const RAM: &str = "/proc/1/fd/7";

fn inputs<'a>(spec: &'a LaunchSpec<'a>, caps: &'a Capabilities) -> LaunchInputs<'a> {
    LaunchInputs {
        accel: spec.accel,
        caps,
        runtime_dir: spec.qmp_socket.parent().unwrap(),
        qmp_listener: 3,
        console: spec.console.clone(),
        tsc_khz: spec.tsc_khz,
        pmem_sizes: spec.pmem_sizes,
        memory: MemoryBackend::Memfd { path: RAM.into() },
        sandbox: false,
        restore: None,
    }
}

/// The argv QEMU receives for booting `resources`.
fn build_args(resources: &VmResources, spec: &LaunchSpec<'_>) -> Result<Vec<String>, PlanError> {
    let caps = Capabilities::default();
    LaunchPlan::new(resources, &inputs(spec, &caps)).map(|plan| render(&plan))
}

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
            qmp_socket: Path::new("/run/squib/qmp.sock"),
            ..spec()
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
fn a_boot_starts_paused_only_for_settings_made_over_qmp() {
    let running = args(&resources(vec![file_drive("rootfs", true, "/r", true)]));
    assert!(!running.iter().any(|s| s == "-S"), "{running:?}");
    let mut limited = file_drive("rootfs", true, "/r", true);
    if let DriveBackend::File { rate_limiter, .. } = &mut limited.backend {
        *rate_limiter = Some(Default::default());
    }
    let paused = args(&resources(vec![limited]));
    assert!(paused.iter().any(|s| s == "-S"), "{paused:?}");
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
        "-M",
        "microvm,acpi=on,pit=on,pic=on,rtc=on,isa-serial=on",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-accel",
        "tcg,tb-size=32",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "256M",
        "-object",
        "memory-backend-file,id=ram,size=256M,share=on,mem-path=/proc/1/fd/7",
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
        "-chardev",
        "socket,id=qmp,fd=3,server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
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
    assert!(values(&argv, "-object").contains(&"memory-backend-ram,id=hotplug_mem_ram,size=1024M"));
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
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(values(&a, "-accel"), ["kvm"]);
    assert_eq!(values(&a, "-cpu"), ["host"]);
}

#[test]
fn a_cpu_template_adjusts_the_accelerators_cpu_model() {
    let mut res = resources(vec![]);
    assert_eq!(values(&args_of(&res), "-cpu"), ["max"]);
    res.machine_config.cpu_template = Some(StaticCpuTemplate::T2);
    // The mapping itself is squib_cpu_template's (and tested there).
    let t2 = squib_cpu_template::CpuModel::for_resources(&res).unwrap();
    assert_eq!(values(&args_of(&res), "-cpu"), [t2.qemu_cpu("max")]);
    assert!(t2.qemu_cpu("max").starts_with("max,-dtes64,"));
    let kvm = build_args(
        &res,
        &LaunchSpec {
            accel: Accel::Kvm,
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(values(&kvm, "-cpu"), [t2.qemu_cpu("host")]);
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
            qmp_socket: Path::new("/run/a,b/qmp.sock"),
            console: &ConsoleTarget::File("/log/c,d.log".into()),
            ..spec()
        },
    )
    .unwrap();
    assert!(values(&a, "-blockdev")[0].contains("file.filename=/img/a,,b.ext4,file.aio"));
    assert_eq!(
        values(&a, "-chardev"),
        [
            "file,id=console,path=/log/c,,d.log,append=on",
            "socket,id=qmp,fd=3,server=on,wait=off"
        ]
    );
    // Taken verbatim by QEMU: not escaped.
    assert_eq!(values(&a, "-kernel"), ["/k,1/vmlinux"]);
    assert_eq!(values(&a, "-initrd"), ["/k,1/initrd"]);
}

#[test]
fn console_targets() {
    let res = resources(vec![]);
    let a = build_args(
        &res,
        &LaunchSpec {
            console: &ConsoleTarget::Null,
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(values(&a, "-chardev")[0], "null,id=console");
    assert_eq!(values(&a, "-serial"), ["chardev:console"]);
}

#[test]
fn a_relayed_console_is_a_socket_chardev() {
    let res = resources(vec![]);
    let a = build_args(
        &res,
        &LaunchSpec {
            console: &ConsoleTarget::Socket("/run/x,y/serial.sock".into()),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(
        values(&a, "-chardev")[0],
        "socket,id=console,path=/run/x,,y/serial.sock"
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
    let err = build_args(&res, &spec()).unwrap_err();
    assert_eq!(err, PlanError::NoBootSource);
}

fn vhost_drive(id: &str, root: bool, socket: &str) -> Drive {
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    Drive {
        id: id.into(),
        is_root_device: root,
        partuuid: None,
        cache_type: CacheType::Unsafe,
        backend: DriveBackend::VhostUser {
            socket: socket.into(),
            connection: std::os::fd::OwnedFd::from(ours).into(),
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
    let DriveBackend::VhostUser { connection, .. } = &res.drives.get("vhost0").unwrap().backend
    else {
        unreachable!()
    };
    let chardev = format!("socket,id=vub_1,fd={}", connection.raw_fd());
    assert!(values(&a, "-chardev").contains(&chardev.as_str()));
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
    // Without one too: every microVM's transports are modern (VERSION_1), as Firecracker's.
    let a = args(&resources(vec![file_drive("root", true, "/r", false)]));
    assert_eq!(values(&a, "-global"), ["virtio-mmio.force-legacy=false"]);
}

#[test]
fn a_restore_keeps_the_transport_mode_its_snapshot_ran_with() {
    let plain = resources(vec![file_drive("root", true, "/r", false)]);
    let with_vhost = resources(vec![vhost_drive("root", true, "/s")]);
    let caps = Capabilities::default();
    let spec = spec();
    let modern = |res: &VmResources, modern_mmio: Option<bool>| {
        let mut res = res.clone();
        res.boot_source = None;
        let meta = EngineMeta {
            accel: "tcg".into(),
            cpu: "max".into(),
            legacy_interrupts: false,
            modern_mmio,
        };
        let plan = LaunchPlan::new(
            &res,
            &LaunchInputs {
                restore: Some(&meta),
                ..inputs(&spec, &caps)
            },
        )
        .unwrap();
        let modern = !values(&render(&plan), "-global").is_empty();
        // What a snapshot of the restored guest records in turn.
        assert_eq!(plan.engine_meta().modern_mmio, Some(modern));
        modern
    };
    assert!(modern(&plain, Some(true)));
    assert!(!modern(&plain, Some(false)));
    // Older squibs recorded nothing: they ran modern only with vsock or a vhost-user drive.
    assert!(!modern(&plain, None));
    assert!(modern(&with_vhost, None));
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
    let spec = spec();
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
        PlanError::TooManyDevices { count: 25, max: 24 }
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
    assert_eq!(err, PlanError::TooManyDevices { count: 9, max: 8 });
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
        Err(PlanError::CmdlineTooLong {
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
    let spec = spec();
    let drives = |n: usize| {
        (0..n)
            .map(|i| file_drive(&format!("d{i}"), false, &format!("/d{i}"), true))
            .collect::<Vec<_>>()
    };
    let a = build_args(&resources(drives(24)), &spec).unwrap();
    assert_eq!(values(&a, "-blockdev").len(), 24);
    let err = build_args(&resources(drives(25)), &spec).unwrap_err();
    assert_eq!(err, PlanError::TooManyDevices { count: 25, max: 24 });
    assert_eq!(
        err.to_string(),
        "25 virtio devices are configured, but QEMU's microvm machine offers at most 24"
    );
}

#[test]
fn network_interfaces_get_a_vhost_user_netdev_and_a_virtio_net_device() {
    let mut res = resources(vec![file_drive("root", true, "/r", false)]);
    let open: squib_net::tap::TapOpener =
        std::sync::Arc::new(|name: &str| Ok(squib_net::tap::TapHandle::detached(name)));
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
            qmp_socket: Path::new("/run/x,y/qmp.sock"),
            ..spec()
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
        net_socket(Path::new("/run/d"), 3),
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
    let err = build_args(&res, &spec()).unwrap_err();
    assert_eq!(err, PlanError::TooManyDevices { count: 25, max: 24 });
}

#[test]
fn a_pci_card_has_no_msi_x_on_qemu_7_or_under_tcg() {
    let mut res = resources(vec![file_drive("root", true, "/r", false)]);
    let open: squib_net::tap::TapOpener =
        std::sync::Arc::new(|name: &str| Ok(squib_net::tap::TapHandle::detached(name)));
    res.net
        .insert(
            serde_json::from_str(r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#).unwrap(),
            &open,
        )
        .unwrap();
    let nic = |res: &VmResources, accel: Accel, major: Option<u32>| {
        let caps = Capabilities {
            version: major.map(|major| crate::caps::QemuVersion {
                major,
                minor: 2,
                micro: 0,
            }),
            ..Capabilities::default()
        };
        let spec = LaunchSpec { accel, ..spec() };
        let argv = render(&LaunchPlan::new(res, &inputs(&spec, &caps)).unwrap());
        values(&argv, "-device")
            .into_iter()
            .find(|d| d.starts_with("virtio-net"))
            .unwrap()
            .to_string()
    };
    // microvm's virtio-mmio has no MSI-X to turn off.
    assert_eq!(
        nic(&res, Accel::Tcg, Some(7)),
        "virtio-net-device,netdev=net0,id=nic0"
    );
    res.pci_enabled = true;
    const INTX: &str = "virtio-net-pci,bus=rp1,netdev=net0,id=nic0,vectors=0,romfile=";
    assert_eq!(nic(&res, Accel::Kvm, Some(7)), INTX);
    assert_eq!(nic(&res, Accel::Kvm, None), INTX);
    // Under TCG on any QEMU: a restored guest would lose its receive interrupts.
    assert_eq!(nic(&res, Accel::Tcg, Some(10)), INTX);
    assert_eq!(
        nic(&res, Accel::Kvm, Some(10)),
        "virtio-net-pci,bus=rp1,netdev=net0,id=nic0,romfile="
    );
}

#[test]
fn io_engine_async_is_io_uring() {
    let mut d = file_drive("data", false, "/d", false);
    assert_eq!(Aio::of(&d), Aio::Threads);
    if let DriveBackend::File { io_engine, .. } = &mut d.backend {
        *io_engine = IoEngine::Async;
    }
    assert_eq!(Aio::of(&d), Aio::IoUring);
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
    let spec = spec();
    assert!(build_args(&res, &spec).is_ok());
    res.entropy = Some(EntropyDeviceConfig::default());
    assert_eq!(
        build_args(&res, &spec).unwrap_err(),
        PlanError::TooManyDevices { count: 25, max: 24 }
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
        Err(PlanError::CmdlineTooLong { .. })
    ));
}

#[test]
fn a_restore_runs_the_saved_cpu_and_machine_without_a_kernel_and_waits_for_migration() {
    let mut res = resources(vec![file_drive("root", true, "/r", false)]);
    // Restored resources have no boot source.
    res.boot_source = None;
    let meta = EngineMeta {
        accel: "tcg".into(),
        cpu: "max,-avx".into(),
        legacy_interrupts: true,
        modern_mmio: Some(true),
    };
    let caps = Capabilities::default();
    let spec = spec();
    let plan = LaunchPlan::new(
        &res,
        &LaunchInputs {
            memory: MemoryBackend::File {
                path: "/proc/1/fd/9".into(),
                open_read_only: true,
            },
            restore: Some(&meta),
            ..inputs(&spec, &caps)
        },
    )
    .unwrap();
    assert_eq!(plan.engine_meta(), meta);
    let a = render(&plan);
    for flag in ["-kernel", "-initrd", "-append"] {
        assert!(!a.iter().any(|s| s == flag), "{flag} in {a:?}");
    }
    assert_eq!(values(&a, "-cpu"), ["max,-avx"]);
    assert_eq!(
        values(&a, "-M"),
        ["microvm,acpi=off,pit=on,pic=on,rtc=off,isa-serial=on,auto-kernel-cmdline=on"]
    );
    assert_eq!(
        values(&a, "-object")[0],
        "memory-backend-file,id=ram,size=256M,share=off,readonly=on,rom=off,mem-path=/proc/1/fd/9"
    );
    assert_eq!(a[a.len() - 2..], ["-incoming", "defer"]);
    assert!(a.iter().any(|s| s == "-S"));
}

#[test]
fn sandbox_first_firmware_last() {
    let res = resources(vec![]);
    let caps = Capabilities {
        qboot: Some("/usr/share/qemu/qboot.rom".into()),
        ..Capabilities::default()
    };
    let spec = spec();
    let plan = LaunchPlan::new(
        &res,
        &LaunchInputs {
            sandbox: true,
            ..inputs(&spec, &caps)
        },
    )
    .unwrap();
    let a = render(&plan);
    assert_eq!(a[..2], super::argv::SANDBOX);
    assert_eq!(a[a.len() - 2..], ["-bios", "/usr/share/qemu/qboot.rom"]);
    // q35 keeps QEMU's own firmware.
    let mut res = res;
    res.pci_enabled = true;
    let plan = LaunchPlan::new(&res, &inputs(&spec, &caps)).unwrap();
    assert!(!render(&plan).iter().any(|s| s == "-bios"));
}

#[test]
fn a_device_the_qemu_lacks_is_refused_before_qemu_runs() {
    let mut res = resources(vec![file_drive("root", true, "/r", false)]);
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    let caps = Capabilities {
        known: true,
        version: Some(crate::caps::QemuVersion {
            major: 7,
            minor: 2,
            micro: 0,
        }),
        machines: names(&["microvm", "q35"]),
        devices: names(&["virtio-blk-device", "i8042"]),
        ..Capabilities::default()
    };
    let spec = spec();
    assert!(LaunchPlan::new(&res, &inputs(&spec, &caps)).is_ok());
    res.entropy = Some(EntropyDeviceConfig::default());
    let err = LaunchPlan::new(&res, &inputs(&spec, &caps)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "this QEMU (7.2.0) has no device `virtio-rng-device`, which the configured VM needs"
    );
    res.pci_enabled = true;
    let caps = Capabilities {
        machines: names(&["microvm"]),
        ..caps
    };
    let err = LaunchPlan::new(&res, &inputs(&spec, &caps)).unwrap_err();
    assert!(err.to_string().contains("no machine `q35`"), "{err}");
}
