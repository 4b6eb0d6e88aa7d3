//! What squib needs from the host inside the jail: the QEMU binary it runs, the shared
//! libraries of QEMU and of squib, QEMU's firmware, data and modules. All of it is
//! bind-mounted read-only into the jail (never copied), one file or directory at a time, so
//! nothing else of the host's filesystem is reachable from inside.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::JailerError;

/// squib's default QEMU (see squib's `--qemu`).
const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Where QEMU looks for firmware, data and loadable modules on Debian-like hosts; the ones
/// that exist are bound. A QEMU outside /usr also finds its data in `<prefix>/share/qemu`.
const QEMU_DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
    "/usr/lib/x86_64-linux-gnu/qemu",
];

/// squib's `--accel auto` picks KVM only when a hardware KVM module is loaded; these (when
/// present) keep that decision the same inside the jail, which has no /sys otherwise.
const KVM_MODULE_DIRS: &[&str] = &["/sys/module/kvm_intel", "/sys/module/kvm_amd"];

/// One read-only bind mount: `source` on the host at `target` inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// The QEMU binary squib will run: `--qemu PATH` (or `--qemu=PATH`) among squib's flags, else
/// squib's default looked up on the jailer's `PATH`.
pub(crate) fn qemu_binary(
    squib_args: &[String],
    path_var: Option<&str>,
) -> Result<PathBuf, JailerError> {
    let mut given = None;
    let mut iter = squib_args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--qemu" {
            given = iter.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--qemu=") {
            given = Some(value.to_string());
        }
    }
    let name = given.unwrap_or_else(|| DEFAULT_QEMU.to_string());
    if name.contains('/') {
        return std::fs::canonicalize(&name).map_err(|e| JailerError::QemuNotFound(name, e));
    }
    let dirs = path_var.unwrap_or("/usr/bin:/bin");
    std::env::split_paths(dirs)
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| JailerError::QemuNotFound(name, std::io::ErrorKind::NotFound.into()))
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit ELF file, `None` for a static binary.
pub(crate) fn elf_interpreter(path: &Path) -> Result<Option<PathBuf>, JailerError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes))
        .map_err(|e| JailerError::Open(path.into(), e))?;
    let bad = || JailerError::Libraries(path.into(), "not a 64-bit ELF file".into());
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    let phoff = u64_at(0x20).ok_or_else(bad)?;
    let phentsize = u16_at(0x36).ok_or_else(bad)?;
    let phnum = u16_at(0x38).ok_or_else(bad)?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = bytes.get(ph..ph + 4).ok_or_else(bad)?;
        if p_type == 3u32.to_le_bytes() {
            let offset = u64_at(ph + 8).ok_or_else(bad)?;
            let size = u64_at(ph + 32).ok_or_else(bad)?;
            let raw = bytes.get(offset..offset + size).ok_or_else(bad)?;
            let text = raw.split(|b| *b == 0).next().unwrap_or_default();
            return Ok(Some(PathBuf::from(
                String::from_utf8_lossy(text).into_owned(),
            )));
        }
    }
    Ok(None)
}

/// The shared libraries `binary` loads, as its dynamic loader resolves them on this host
/// (`<interpreter> --list`), each at the path the loader will look for it.
fn libraries(binary: &Path, interpreter: &Path) -> Result<Vec<PathBuf>, JailerError> {
    let output = Command::new(interpreter)
        .arg("--list")
        .arg(binary)
        .env_clear()
        .output()
        .map_err(|e| JailerError::Libraries(binary.into(), e.to_string()))?;
    if !output.status.success() {
        return Err(JailerError::Libraries(
            binary.into(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path == "not found" {
            return Err(JailerError::Libraries(binary.into(), line.to_string()));
        }
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A host path bound at the same place inside the jail.
fn same_place(path: &Path) -> Result<Bind, JailerError> {
    let source =
        std::fs::canonicalize(path).map_err(|e| JailerError::Canonicalize(path.into(), e))?;
    Ok(Bind {
        source,
        target: path.to_path_buf(),
    })
}

/// What `binary` needs to run: itself (unless it is copied into the jail instead), its
/// interpreter and its libraries.
fn runtime_of(binary: &Path, include_self: bool, out: &mut Vec<Bind>) -> Result<(), JailerError> {
    if include_self {
        out.push(same_place(binary)?);
    }
    if let Some(interpreter) = elf_interpreter(binary)? {
        for lib in libraries(binary, &interpreter)? {
            out.push(same_place(&lib)?);
        }
        out.push(same_place(&interpreter)?);
    }
    Ok(())
}

/// Every bind mount the jail needs for `exec_file` (squib) to run `qemu`.
pub(crate) fn binds(exec_file: &Path, qemu: &Path) -> Result<Vec<Bind>, JailerError> {
    let mut out = Vec::new();
    runtime_of(exec_file, false, &mut out)?;
    runtime_of(qemu, true, &mut out)?;
    let prefix_data = qemu
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("share/qemu"));
    for dir in QEMU_DATA_DIRS
        .iter()
        .chain(KVM_MODULE_DIRS)
        .map(PathBuf::from)
        .chain(prefix_data)
    {
        if dir.is_dir() {
            out.push(same_place(&dir)?);
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.target == b.target);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_from_squib_flags_or_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu-system-x86_64");
        std::fs::write(&fake, b"").unwrap();
        let canonical = std::fs::canonicalize(&fake).unwrap();
        let path_var = dir.path().to_str().unwrap();
        assert_eq!(qemu_binary(&[], Some(path_var)).unwrap(), canonical);
        let flag = vec!["--qemu".to_string(), fake.to_str().unwrap().to_string()];
        assert_eq!(qemu_binary(&flag, None).unwrap(), canonical);
        let eq = vec![format!("--qemu={}", fake.display())];
        assert_eq!(qemu_binary(&eq, None).unwrap(), canonical);
        let missing = vec!["--qemu".to_string(), "/nonexistent/qemu".to_string()];
        assert!(
            qemu_binary(&missing, None)
                .unwrap_err()
                .to_string()
                .starts_with("Failed to find the QEMU binary /nonexistent/qemu")
        );
    }

    #[test]
    fn interpreter_of_this_test_binary() {
        let me = std::env::current_exe().unwrap();
        let interp = elf_interpreter(&me)
            .unwrap()
            .expect("a dynamic test binary");
        assert!(interp.is_absolute());
        let libs = libraries(&me, &interp).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        assert!(elf_interpreter(not_elf.path()).is_err());
    }

    /// squib as `make release` builds it is a static PIE: no interpreter, so none of its
    /// libraries are bound into the jail (only QEMU's).
    #[test]
    fn a_static_executable_needs_no_libraries() {
        let mut header = vec![0u8; 64];
        header[..5].copy_from_slice(b"\x7fELF\x02");
        // e_phoff 64, e_phentsize 56, e_phnum 1: one PT_LOAD, no PT_INTERP.
        header[0x20] = 64;
        header[0x36] = 56;
        header[0x38] = 1;
        let mut load = vec![0u8; 56];
        load[0] = 1;
        header.extend(load);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &header).unwrap();
        assert_eq!(elf_interpreter(file.path()).unwrap(), None);
        let mut binds = Vec::new();
        runtime_of(file.path(), false, &mut binds).unwrap();
        assert!(binds.is_empty());
    }
}
