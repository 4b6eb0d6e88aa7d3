//! microvm's firmware. Upstream QEMU boots microvm with qboot (installed as
//! `bios-microvm.bin`), and so does Debian 12's QEMU 7.2 (`bios-microvm.bin → qboot.rom`).
//! Debian 13's QEMU 10 points `bios-microvm.bin` at SeaBIOS's microvm build instead, which puts
//! the ACPI tables at the top of RAM where QEMU also loads the initrd: the guest reads
//! overwritten tables and hangs. Where QEMU's data directories hold `qboot.rom`, squib names it
//! with `-bios`, so every QEMU boots the guest with the same firmware.

use std::path::{Path, PathBuf};
use std::time::Duration;

const QBOOT: &str = "qboot.rom";
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where QEMU finds qboot (`-L help` lists its data directories); part of the engine's
/// [`crate::caps::Capabilities`], probed once.
pub(crate) async fn qboot(qemu: &Path) -> Option<PathBuf> {
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
