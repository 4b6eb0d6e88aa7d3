//! Boots the real test guest under QEMU (TCG) through the engine.
//!
//! Needs QEMU (`scripts/install-deps.sh`) and the guest (`guest/build.sh`); a missing piece is a
//! failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use squib_qemu::{AccelChoice, ConsoleTarget, EngineConfig, QemuEngine};
use squib_vmm::resources::boot_source::{BootSource, BootSourceConfig};
use squib_vmm::resources::drive::{BlockDeviceConfig, Drive};
use squib_vmm::resources::machine_config::MachineConfig;
use squib_vmm::{Engine, ExitWatch, RunningVm, VmExit, VmResources};
use tempfile::TempDir;

/// Generous: TCG on a loaded machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One guest at a time: parallel TCG guests on a small host starve each other.
static ONE_GUEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Guest {
    kernel: String,
    initrd: String,
    rootfs: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qemu_binary() -> PathBuf {
    let qemu = std::env::var_os("SQUIB_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| "qemu-system-x86_64".into());
    let works = Command::new(&qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "QEMU `{}` cannot run: install it with scripts/install-deps.sh (or set SQUIB_QEMU)",
        qemu.display()
    );
    qemu
}

/// The guest built by `guest/build.sh`, as listed in its `guest.env`.
fn guest() -> Guest {
    let dir = std::env::var_os("SQUIB_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guest/out"));
    let env_file = dir.join("guest.env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "the test guest is missing ({}: {e}): run guest/build.sh from the repository root",
            env_file.display()
        )
    });
    let get = |key: &str| {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{} has no {key}: run guest/build.sh", env_file.display()))
            .trim()
            .to_string();
        assert!(
            Path::new(&value).is_file(),
            "{value} (from {}) is missing: run guest/build.sh",
            env_file.display()
        );
        value
    };
    Guest {
        kernel: get("KERNEL"),
        initrd: get("INITRD"),
        rootfs: get("ROOTFS"),
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("squib_qemu=debug")
        .try_init();
}

/// An engine on TCG whose console goes to a file the test can read.
fn engine(dir: &TempDir) -> (QemuEngine, PathBuf) {
    let console = dir.path().join("console.log");
    let engine = QemuEngine::new(EngineConfig {
        qemu_binary: qemu_binary(),
        accel: AccelChoice::Tcg,
        console: ConsoleTarget::File(console.clone()),
        ..EngineConfig::default()
    });
    (engine, console)
}

fn resources(guest: &Guest, boot_args: &str) -> VmResources {
    VmResources {
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 256,
            ..MachineConfig::default()
        },
        boot_source: Some(
            BootSource::try_from(BootSourceConfig {
                kernel_image_path: guest.kernel.clone(),
                initrd_path: Some(guest.initrd.clone()),
                boot_args: Some(boot_args.to_string()),
            })
            .unwrap(),
        ),
        ..VmResources::default()
    }
}

async fn wait_exit(exit: ExitWatch, console: &Path) -> VmExit {
    match tokio::time::timeout(GUEST_TIMEOUT, exit).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => panic!("the exit watch was dropped"),
        Err(_) => panic!(
            "the guest did not end within {GUEST_TIMEOUT:?}; console:\n{}",
            console_text(console)
        ),
    }
}

fn console_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for_console(path: &Path, marker: &str) {
    let deadline = tokio::time::Instant::now() + GUEST_TIMEOUT;
    while !console_text(path).contains(marker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{marker}` on the console within {GUEST_TIMEOUT:?}; console:\n{}",
            console_text(path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_is_a_guest_shutdown() {
    init_logs();
    let guest = guest();
    let _one = ONE_GUEST.lock().await;
    let dir = TempDir::new().unwrap();
    let (mut engine, console) = engine(&dir);
    let res = resources(
        &guest,
        "console=ttyS0 reboot=k panic=1 squib.action=poweroff",
    );
    let (vm, exit) = engine.start(&res).await.expect("the guest starts");
    assert!(vm.pid().is_some());
    assert_eq!(wait_exit(exit, &console).await, VmExit::GuestShutdown);
    let text = console_text(&console);
    assert!(text.contains("SQUIB-GUEST-INIT-OK"), "console:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_drive_is_vda() {
    init_logs();
    let guest = guest();
    let _one = ONE_GUEST.lock().await;
    let dir = TempDir::new().unwrap();
    // A private copy in a directory whose name needs QEMU's comma escaping.
    let disks = dir.path().join("disks,1");
    std::fs::create_dir(&disks).unwrap();
    let rootfs = disks.join("root,fs.ext4");
    std::fs::copy(&guest.rootfs, &rootfs).unwrap();
    let (mut engine, console) = engine(&dir);
    let mut res = resources(
        &guest,
        "console=ttyS0 reboot=k panic=1 squib.action=poweroff",
    );
    res.drives
        .insert(
            Drive::try_from(BlockDeviceConfig {
                drive_id: "rootfs".into(),
                is_root_device: true,
                is_read_only: Some(true),
                path_on_host: Some(rootfs.to_str().unwrap().into()),
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
    let (vm, exit) = engine.start(&res).await.expect("the guest starts");
    assert_eq!(vm.drive_names("rootfs").unwrap().node, "drive_rootfs");
    assert_eq!(wait_exit(exit, &console).await, VmExit::GuestShutdown);
    let text = console_text(&console);
    assert!(text.contains("root=/dev/vda ro"), "console:\n{text}");
    assert!(text.contains("[vda]"), "console:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_root_drive_is_mounted_from_vda() {
    init_logs();
    let guest = guest();
    let _one = ONE_GUEST.lock().await;
    let dir = TempDir::new().unwrap();
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::copy(&guest.rootfs, &rootfs).unwrap();
    let (mut engine, console) = engine(&dir);
    let mut res = resources(
        &guest,
        "console=ttyS0 reboot=k panic=1 squib.action=poweroff",
    );
    res.drives
        .insert(
            Drive::try_from(BlockDeviceConfig {
                drive_id: "rootfs".into(),
                is_root_device: true,
                is_read_only: Some(false),
                path_on_host: Some(rootfs.to_str().unwrap().into()),
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
    let (_vm, exit) = engine.start(&res).await.expect("the guest starts");
    assert_eq!(wait_exit(exit, &console).await, VmExit::GuestShutdown);
    let text = console_text(&console);
    assert!(text.contains("root=/dev/vda rw"), "console:\n{text}");
    assert!(text.contains("SQUIB-ROOTFS-OK"), "console:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_then_ctrl_alt_del() {
    init_logs();
    let guest = guest();
    let _one = ONE_GUEST.lock().await;
    let dir = TempDir::new().unwrap();
    let (mut engine, console) = engine(&dir);
    let res = resources(&guest, "console=ttyS0 reboot=k panic=1 squib.action=wait");
    let (mut vm, exit) = engine.start(&res).await.expect("the guest starts");
    wait_for_console(&console, "SQUIB-ACTION wait").await;

    vm.pause().await.expect("pause");
    assert!(!vm.is_running().await.unwrap());
    vm.resume().await.expect("resume");
    assert!(vm.is_running().await.unwrap());
    // Let the guest settle after resuming before it gets the key press.
    tokio::time::sleep(Duration::from_millis(500)).await;

    vm.send_ctrl_alt_del().await.expect("ctrl-alt-del");
    assert_eq!(wait_exit(exit, &console).await, VmExit::GuestShutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_refusing_the_kernel_fails_start_with_its_reason() {
    init_logs();
    let dir = TempDir::new().unwrap();
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"nothing bootable here").unwrap();
    let (mut engine, _console) = engine(&dir);
    let res = VmResources {
        boot_source: Some(BootSource {
            config: BootSourceConfig {
                kernel_image_path: bogus.to_str().unwrap().into(),
                initrd_path: None,
                boot_args: None,
            },
        }),
        ..VmResources::default()
    };
    let err = match engine.start(&res).await {
        Err(err) => err,
        Ok(_) => panic!("QEMU booted a text file"),
    };
    assert!(
        err.to_string()
            .starts_with("QEMU ended before the guest started: QEMU exited with status 1: "),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_vm_kills_qemu() {
    init_logs();
    let guest = guest();
    let _one = ONE_GUEST.lock().await;
    let dir = TempDir::new().unwrap();
    let (mut engine, _console) = engine(&dir);
    let res = resources(&guest, "console=ttyS0 reboot=k panic=1 squib.action=wait");
    let (vm, exit) = engine.start(&res).await.expect("the guest starts");
    let pid = vm.pid().unwrap();
    drop(vm);
    let outcome = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .expect("QEMU goes away")
        .unwrap();
    assert_eq!(
        outcome,
        VmExit::EngineFailed("QEMU was stopped by squib".into())
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} survived"
    );
}
