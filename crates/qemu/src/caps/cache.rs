//! The probe's answers, kept per QEMU executable in the user's cache directory
//! (`$XDG_CACHE_HOME/squib`, else `~/.cache/squib`). squib runs once per microVM, so a probe
//! "once per process" was one extra QEMU start per microVM, and a client's first
//! `InstanceStart` or snapshot load waited for it. What a QEMU executable offers changes only
//! when the executable does: the entry is keyed on its canonical path, device, inode, size,
//! modification and change times, so an upgrade (new inode) or an edit in place misses.
//!
//! Only ELF executables are cached: a wrapper script may run another QEMU that changes while
//! the script does not. Anything unexpected (no home, a directory or file not owned by this
//! user or writable by others, garbage, another key) is a miss: squib then probes as before.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Capabilities;

/// Bumped when the stored shape changes in a way strict parsing would not notice.
const FORMAT: u32 = 1;
/// An entry is a few hundred names; anything larger is not squib's.
const MAX_ENTRY_BYTES: u64 = 1 << 20;

/// What identifies one QEMU executable's contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    key: Key,
    caps: Capabilities,
}

/// Where the capabilities of one QEMU executable are (or would be) kept.
#[derive(Debug)]
pub(crate) struct Entry {
    dir: PathBuf,
    key: Key,
}

impl Entry {
    /// The entry for `qemu` (as squib's `--qemu` names it) in the user's cache directory;
    /// `None` when there is none or `qemu` is not an ELF executable.
    pub(crate) fn for_qemu(qemu: &Path) -> Option<Self> {
        Self::in_dir(user_cache_dir()?, qemu)
    }

    fn in_dir(dir: PathBuf, qemu: &Path) -> Option<Self> {
        let path = crate::firmware::elf_executable(qemu)?;
        let meta = std::fs::metadata(&path).ok()?;
        let key = Key {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        Some(Self { dir, key })
    }

    /// One file per executable path; its name also hashes the rest of the key, so that a
    /// changed executable misses without reading anything.
    fn file_name(&self) -> String {
        format!(
            "qemu-{:016x}-{:016x}.json",
            hash(&self.key.path),
            hash(&self.key)
        )
    }

    fn prefix(&self) -> String {
        format!("qemu-{:016x}-", hash(&self.key.path))
    }

    /// Whether an entry for this very executable exists (no parsing).
    pub(crate) fn exists(&self) -> bool {
        trusted(&self.dir, true) && trusted(&self.dir.join(self.file_name()), false)
    }

    /// The stored capabilities, if present, trusted and of this very executable.
    pub(crate) fn read(&self) -> Option<Capabilities> {
        let file = self.dir.join(self.file_name());
        if !trusted(&self.dir, true) || !trusted(&file, false) {
            return None;
        }
        let mut text = String::new();
        std::fs::File::open(&file)
            .ok()?
            .take(MAX_ENTRY_BYTES)
            .read_to_string(&mut text)
            .ok()?;
        let stored: Stored = match serde_json::from_str(&text) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(file = %file.display(), %e, "ignoring a bad capability cache entry");
                return None;
            }
        };
        (stored.format == FORMAT && stored.key == self.key).then_some(Capabilities {
            known: true,
            ..stored.caps
        })
    }

    /// Stores `caps` (only what a successful probe found), replacing the entries of earlier
    /// executables at the same path. Failing to store is not an error: the next squib
    /// probes again.
    pub(crate) fn write(&self, caps: &Capabilities) {
        if !caps.known {
            return;
        }
        if let Err(e) = self.try_write(caps) {
            tracing::debug!(dir = %self.dir.display(), %e, "cannot cache QEMU's capabilities");
        }
    }

    fn try_write(&self, caps: &Capabilities) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if !trusted(&self.dir, true) {
            return Err(std::io::Error::other(
                "the cache directory is not this user's alone",
            ));
        }
        let stored = Stored {
            format: FORMAT,
            key: self.key.clone(),
            caps: Capabilities {
                qboot: None,
                ..caps.clone()
            },
        };
        // A private temporary file renamed into place: readers never see half an entry,
        // and concurrent squibs each write a whole one.
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        temp.write_all(serde_json::to_string(&stored)?.as_bytes())?;
        let name = self.file_name();
        temp.persist(self.dir.join(&name)).map_err(|e| e.error)?;
        let prefix = self.prefix();
        for old in std::fs::read_dir(&self.dir)?.flatten() {
            let old_name = old.file_name();
            let old_name = old_name.to_string_lossy();
            if old_name.starts_with(&prefix) && old_name != name {
                let _ = std::fs::remove_file(old.path());
            }
        }
        Ok(())
    }
}

fn user_cache_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .map(|base| base.join("squib"))
}

/// `path` is a directory (or a regular file) of this user's that nobody else may write.
fn trusted(path: &Path, directory: bool) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    let kind = if directory {
        meta.is_dir()
    } else {
        meta.is_file()
    };
    kind && meta.uid() == me && meta.mode() & 0o022 == 0
}

fn hash(value: &impl Hash) -> u64 {
    // Stable within one squib build; another build may name entries differently and then
    // probes once more.
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::caps::QemuVersion;

    fn probed() -> Capabilities {
        Capabilities {
            known: true,
            version: Some(QemuVersion {
                major: 10,
                minor: 0,
                micro: 2,
            }),
            machines: BTreeSet::from(["microvm".to_string()]),
            devices: BTreeSet::from(["virtio-blk-device".to_string()]),
            migration: BTreeSet::from(["x-ignore-shared".to_string()]),
            ram_file_properties: BTreeSet::from(["rom".to_string()]),
            qboot: Some(PathBuf::from("/not/cached")),
        }
    }

    fn fake_qemu(dir: &Path) -> PathBuf {
        let qemu = dir.join("qemu-system-x86_64");
        std::fs::write(&qemu, b"\x7fELF\x02\x01\x01 one build").unwrap();
        qemu
    }

    #[test]
    fn an_entry_is_read_back_until_the_executable_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(tmp.path());
        let cache = tmp.path().join("cache/squib");
        let entry = Entry::in_dir(cache.clone(), &qemu).unwrap();
        assert!(!entry.exists());
        assert_eq!(entry.read(), None);
        entry.write(&probed());
        assert!(entry.exists());
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let read = entry.read().unwrap();
        assert_eq!(
            read,
            Capabilities {
                qboot: None,
                ..probed()
            }
        );

        // An upgrade replaces the file: another inode and size, a miss, and the new entry
        // replaces the old one.
        std::fs::remove_file(&qemu).unwrap();
        std::fs::write(&qemu, b"\x7fELF\x02\x01\x01 another build").unwrap();
        let upgraded = Entry::in_dir(cache.clone(), &qemu).unwrap();
        assert!(!upgraded.exists());
        assert_eq!(upgraded.read(), None);
        upgraded.write(&probed());
        assert!(upgraded.read().is_some());
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[test]
    fn scripts_failed_probes_and_untrusted_entries_are_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("qemu-wrapper");
        std::fs::write(&script, b"#!/bin/sh\nexec qemu-system-x86_64 \"$@\"\n").unwrap();
        assert!(Entry::in_dir(tmp.path().join("c"), &script).is_none());

        let qemu = fake_qemu(tmp.path());
        let cache = tmp.path().join("c");
        let entry = Entry::in_dir(cache.clone(), &qemu).unwrap();
        entry.write(&Capabilities::default());
        assert!(!entry.exists(), "an unknown probe outcome is not stored");

        entry.write(&probed());
        let file = cache.join(entry.file_name());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(entry.read(), None, "a file others may write is not trusted");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(entry.read(), None, "nor a directory others may write");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(entry.read().is_some());

        std::fs::write(&file, b"{\"format\": 1, \"key\": 7}").unwrap();
        assert_eq!(entry.read(), None, "garbage is a miss");
    }
}
