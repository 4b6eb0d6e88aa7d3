//! microvm's firmware. Upstream QEMU boots microvm with qboot (installed as
//! `bios-microvm.bin`), and so does Debian 12's QEMU 7.2 (`bios-microvm.bin → qboot.rom`).
//! Debian 13's QEMU 10 points `bios-microvm.bin` at SeaBIOS's microvm build instead, which puts
//! the ACPI tables at the top of RAM where QEMU also loads the initrd: the guest reads
//! overwritten tables and hangs. Where QEMU's data directories hold `qboot.rom`, squib names it
//! with `-bios`, so every QEMU boots the guest with the same firmware.
//!
//! Asking QEMU where its data lives (`-L help`) is a whole QEMU start (~0.1 s under load). A
//! QEMU executable (not a wrapper script, which may pass its own `-L`) installed as
//! `<prefix>/bin/…` reads its data from `<prefix>/share/qemu`, which is also where Debian and
//! upstream put qboot: found there, it is used without asking QEMU.

use std::path::{Path, PathBuf};
use std::time::Duration;

const QBOOT: &str = "qboot.rom";
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where QEMU finds qboot: beside an installed QEMU executable, else as `-L help` lists its
/// data directories; part of the engine's [`crate::caps::Capabilities`], probed once.
pub(crate) async fn qboot(qemu: &Path) -> Option<PathBuf> {
    if let Some(found) = beside_executable(qemu) {
        return Some(found);
    }
    let output = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::process::Command::new(qemu)
            .args(["-L", "help"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    in_data_dirs(&String::from_utf8_lossy(&output.stdout))
}

/// `<prefix>/share/qemu/qboot.rom` of a QEMU ELF executable at `<prefix>/bin/…` (looked up
/// on `PATH` when named without a directory), if that file exists.
fn beside_executable(qemu: &Path) -> Option<PathBuf> {
    let program = elf_executable(qemu)?;
    let bin = program.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let qboot = bin.parent()?.join("share/qemu").join(QBOOT);
    qboot.is_file().then_some(qboot)
}

/// The canonical path of `qemu` (looked up on `PATH` when named without a directory) when
/// it is an ELF executable, not a wrapper script (which may run another QEMU, pass its own
/// flags, or change without its own file changing).
pub(crate) fn elf_executable(qemu: &Path) -> Option<PathBuf> {
    let program = if qemu.components().count() == 1 {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(qemu))
            .find(|p| p.is_file())?
    } else {
        qemu.to_path_buf()
    };
    let program = std::fs::canonicalize(program).ok()?;
    is_elf(&program).then_some(program)
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

// The first data directory (one per line, QEMU's search order) that has qboot.
fn in_data_dirs(listing: &str) -> Option<PathBuf> {
    listing
        .lines()
        .map(|l| Path::new(l.trim()).join(QBOOT))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qboot_beside_an_executable_but_not_a_script() {
        let prefix = tempfile::tempdir().unwrap();
        let bin = prefix.path().join("bin");
        let data = prefix.path().join("share/qemu");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let elf = bin.join("qemu-elf");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        let script = bin.join("qemu-script");
        std::fs::write(&script, b"#!/bin/sh\nexec qemu -L /elsewhere \"$@\"\n").unwrap();
        assert_eq!(beside_executable(&elf), None, "no qboot.rom yet");
        std::fs::write(data.join(QBOOT), b"qboot").unwrap();
        assert_eq!(
            beside_executable(&elf),
            Some(std::fs::canonicalize(&data).unwrap().join(QBOOT))
        );
        assert_eq!(beside_executable(&script), None);
        let elsewhere = prefix.path().join("qemu-elf");
        std::fs::copy(&elf, &elsewhere).unwrap();
        assert_eq!(
            beside_executable(&elsewhere),
            None,
            "not in a bin directory"
        );
    }

    #[test]
    fn the_first_directory_with_qboot_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join(QBOOT), b"b").unwrap();
        std::fs::write(c.path().join(QBOOT), b"c").unwrap();
        let listing = format!(
            "{}\n{}\n{}\n",
            a.path().display(),
            b.path().display(),
            c.path().display()
        );
        assert_eq!(in_data_dirs(&listing), Some(b.path().join(QBOOT)));
        assert_eq!(in_data_dirs(&format!("{}\n", a.path().display())), None);
        assert_eq!(in_data_dirs(""), None);
    }

    /// The installed QEMU (or `SQUIB_QEMU`'s) has qboot: Debian ships it with every QEMU.
    #[tokio::test]
    async fn the_installed_qemu_has_qboot() {
        let qemu = std::env::var_os("SQUIB_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::engine::DEFAULT_QEMU_BINARY));
        let found = qboot(&qemu).await;
        if found.is_none() && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!("{} has no qboot here: skipped", qemu.display());
            return;
        }
        assert!(found.expect("qboot.rom under CI").is_file());
    }
}
