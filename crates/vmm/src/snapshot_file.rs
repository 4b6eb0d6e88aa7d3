//! squib's snapshot state file: squib's own format (not Firecracker's bitcode), holding what
//! is needed to rebuild the identical QEMU command line plus QEMU's migration stream.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic [`SNAPSHOT_MAGIC`] (`"SQUIBSNP"` read as a `u64`) |
//! | 8 | 6 | format version: major, minor, patch as three `u16` ([`SNAPSHOT_VERSION`]) |
//! | 14 | 4 | `h` = length of the resources header |
//! | 18 | h | the resources header: [`SnapshotResources`] as JSON |
//! | 18+h | 8 | `s` = length of the engine's device state |
//! | 26+h | s | the engine's device state (QEMU's migration stream) |
//! | 26+h+s | 8 | CRC-64/XZ of every byte before it |
//!
//! Guest memory is not in this file: it is the memory file next to it.
//! Checks on load run in upstream's order: size, CRC, magic, version, then the payload.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::balloon::BalloonDeviceConfig;
use crate::config::boot_source::BootSourceConfig;
use crate::config::drive::BlockDeviceConfig;
use crate::config::entropy::EntropyDeviceConfig;
use crate::config::machine_config::MachineConfig;
use crate::config::net::NetworkInterfaceConfig;
use crate::resources::VmResources;

/// `"SQUIBSNP"`, read as a little-endian `u64`.
pub const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"SQUIBSNP");

/// The version of squib's state-file format.
pub const SNAPSHOT_VERSION: FormatVersion = FormatVersion {
    major: 1,
    minor: 0,
    patch: 0,
};

const CRC_LEN: usize = 8;
const FIXED_HEAD: usize = 8 + 6 + 4;
/// A sanity bound on the resources header, so a corrupt length cannot ask for gigabytes.
const MAX_HEADER_LEN: usize = 16 << 20;

/// A semver-like format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FormatVersion {
    /// Files of the same major version, not newer than this squib's, can be read.
    fn readable(self) -> bool {
        self.major == SNAPSHOT_VERSION.major
            && (self.minor, self.patch) <= (SNAPSHOT_VERSION.minor, SNAPSHOT_VERSION.patch)
    }
}

/// The VM resources a snapshot needs to rebuild the same device set, as the client's
/// configuration objects (re-validated on load, like a fresh configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResources {
    pub machine_config: MachineConfig,
    /// Kept for the record and for engines whose command line needs it; after a restore the
    /// VM reports an empty boot source, as upstream does.
    pub boot_source: Option<BootSourceConfig>,
    pub drives: Vec<BlockDeviceConfig>,
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    pub balloon: Option<BalloonDeviceConfig>,
    pub entropy: Option<EntropyDeviceConfig>,
}

impl SnapshotResources {
    pub fn from_resources(resources: &VmResources) -> Self {
        Self {
            machine_config: resources.machine_config.clone(),
            boot_source: resources.boot_source.as_ref().map(|b| b.config.clone()),
            drives: resources.drives.iter().map(|d| d.to_config()).collect(),
            network_interfaces: resources.net.iter().map(|n| n.to_config()).collect(),
            balloon: resources.balloon,
            entropy: resources.entropy.map(EntropyDeviceConfig::to_config),
        }
    }
}

/// A parsed state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotState {
    pub version: FormatVersion,
    pub resources: SnapshotResources,
    /// The engine's device state (QEMU's migration stream).
    pub device_state: Vec<u8>,
}

/// Why a state file cannot be read; the texts are upstream's `SnapshotError`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("CRC64 validation failed")]
    Crc64,
    #[error("Invalid data version: {0}")]
    InvalidFormatVersion(FormatVersion),
    #[error("Magic value does not match arch: {0}")]
    InvalidMagic(u64),
    #[error("Snapshot file is smaller than CRC length.")]
    InvalidSnapshotSize,
    #[error("An IO error occurred: {0}")]
    Io(i32),
    #[error("An error occured with serialization/deserialization: {0}")]
    Serde(String),
}

/// Serializes a state file.
pub fn encode(resources: &SnapshotResources, device_state: &[u8]) -> Vec<u8> {
    // Serializing plain configuration structs into JSON cannot fail.
    let header = serde_json::to_vec(resources).unwrap_or_default();
    let mut out = Vec::with_capacity(FIXED_HEAD + header.len() + 8 + device_state.len() + 8);
    out.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    for part in [
        SNAPSHOT_VERSION.major,
        SNAPSHOT_VERSION.minor,
        SNAPSHOT_VERSION.patch,
    ] {
        out.extend_from_slice(&part.to_le_bytes());
    }
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(device_state.len() as u64).to_le_bytes());
    out.extend_from_slice(device_state);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks size, CRC, magic and version; returns the version and the payload after them.
fn check(bytes: &[u8]) -> Result<(FormatVersion, &[u8]), SnapshotFormatError> {
    if bytes.len() < CRC_LEN {
        return Err(SnapshotFormatError::InvalidSnapshotSize);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u64::from_le_bytes(trailer.try_into().unwrap_or_default());
    if crc64(body) != stored {
        return Err(SnapshotFormatError::Crc64);
    }
    let mut reader = Reader(body);
    let magic = reader.u64()?;
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotFormatError::InvalidMagic(magic));
    }
    let version = FormatVersion {
        major: reader.u16()?,
        minor: reader.u16()?,
        patch: reader.u16()?,
    };
    if !version.readable() {
        return Err(SnapshotFormatError::InvalidFormatVersion(version));
    }
    Ok((version, reader.0))
}

/// Parses a state file.
pub fn decode(bytes: &[u8]) -> Result<SnapshotState, SnapshotFormatError> {
    let (version, payload) = check(bytes)?;
    let mut reader = Reader(payload);
    let header_len = reader.u32()? as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(SnapshotFormatError::Serde(format!(
            "resources header of {header_len} bytes"
        )));
    }
    let header = reader.take(header_len)?;
    let resources: SnapshotResources =
        serde_json::from_slice(header).map_err(|e| SnapshotFormatError::Serde(e.to_string()))?;
    let state_len = usize::try_from(reader.u64()?)
        .map_err(|_| SnapshotFormatError::Serde("device state too large".into()))?;
    let device_state = reader.take(state_len)?.to_vec();
    if !reader.0.is_empty() {
        return Err(SnapshotFormatError::Serde(format!(
            "{} unexpected bytes after the device state",
            reader.0.len()
        )));
    }
    Ok(SnapshotState {
        version,
        resources,
        device_state,
    })
}

/// The format version of a state file (`--describe-snapshot`), after the integrity checks.
pub fn describe(bytes: &[u8]) -> Result<FormatVersion, SnapshotFormatError> {
    check(bytes).map(|(version, _)| version)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotFormatError> {
        if self.0.len() < n {
            return Err(SnapshotFormatError::Serde(format!(
                "truncated: {n} bytes expected, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, SnapshotFormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotFormatError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, SnapshotFormatError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected, init and xorout all ones).
pub fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0xC96C_5795_D787_0F42;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        table
    });
    let mut crc = !0u64;
    for &byte in data {
        crc = table[((crc ^ byte as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A not-yet-existing temporary path in `target`'s directory (so a rename is atomic).
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.squib-tmp-{}-{n}", std::process::id()))
}

/// A temporary file that is removed unless [`TempFile::persist`] renamed it into place.
pub struct TempFile {
    pub path: PathBuf,
    pub file: File,
    persisted: bool,
}

impl TempFile {
    /// Creates a fresh temporary file next to `target`.
    pub fn create_for(target: &Path) -> io::Result<Self> {
        let path = temp_path_for(target);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            file,
            persisted: false,
        })
    }

    /// fsync, rename over `target`, fsync the directory.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.path, target)?;
        self.persisted = true;
        if let Some(dir) = target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `target` atomically: temp file, fsync, rename (never a half file).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = TempFile::create_for(target)?;
    temp.file.write_all(bytes)?;
    temp.persist(target)
}

/// Reads a whole state file.
pub fn read_state_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Copies `len` bytes of `src` into `dst` (both from offset 0), skipping holes of `src`
/// (`SEEK_DATA`/`SEEK_HOLE`): `dst` must read as zeros where nothing is written (a fresh
/// file, or a file first sized with `set_len`). `dst` ends up exactly `len` bytes long.
pub fn copy_sparse(src: &File, dst: &File, len: u64) -> io::Result<()> {
    dst.set_len(len)?;
    let mut offset: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while offset < len {
        let data = match seek(src, offset, libc::SEEK_DATA) {
            Ok(pos) => pos,
            // No data after `offset`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // A file system without SEEK_DATA: copy everything.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => offset,
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = seek(src, data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut pos = data;
        while pos < hole {
            let chunk = ((hole - pos) as usize).min(buf.len());
            read_exact_at(src, &mut buf[..chunk], pos)?;
            write_all_at(dst, &buf[..chunk], pos)?;
            pos += chunk as u64;
        }
        offset = hole;
    }
    Ok(())
}

fn seek(file: &File, offset: u64, whence: i32) -> io::Result<u64> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a valid, owned descriptor; no memory is passed.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if pos < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pos as u64)
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

/// The size of a file, through a seek (works for every kind of descriptor squib copies).
pub fn file_len(file: &mut File) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotResources {
        SnapshotResources::from_resources(&VmResources::default())
    }

    #[test]
    fn crc64_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn round_trip() {
        let mut resources = sample();
        resources.machine_config.mem_size_mib = 256;
        resources.machine_config.vcpu_count = 2;
        let bytes = encode(&resources, b"QEVM\x00stream");
        let state = decode(&bytes).unwrap();
        assert_eq!(state.version, SNAPSHOT_VERSION);
        assert_eq!(state.resources, resources);
        assert_eq!(state.device_state, b"QEVM\x00stream");
        assert_eq!(describe(&bytes).unwrap().to_string(), "1.0.0");
    }

    /// Re-seals a modified body with a valid CRC, to reach the checks after it.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - CRC_LEN;
        let crc = crc64(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn bad_magic() {
        let mut bytes = encode(&sample(), b"x");
        bytes[0] = b'X';
        let bytes = reseal(bytes);
        let magic = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            format!("Magic value does not match arch: {magic}")
        );
    }

    #[test]
    fn bad_version() {
        let mut bytes = encode(&sample(), b"x");
        bytes[8] = 9;
        let bytes = reseal(bytes);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Invalid data version: 9.0.0"
        );
    }

    #[test]
    fn bad_crc() {
        let mut bytes = encode(&sample(), b"some device state");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        assert_eq!(decode(&bytes).unwrap_err(), SnapshotFormatError::Crc64);
        assert_eq!(
            SnapshotFormatError::Crc64.to_string(),
            "CRC64 validation failed"
        );
    }

    #[test]
    fn truncated_files_fail_cleanly() {
        let bytes = encode(&sample(), b"some device state");
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            if len < CRC_LEN {
                assert_eq!(err, SnapshotFormatError::InvalidSnapshotSize);
            } else {
                assert_eq!(err, SnapshotFormatError::Crc64, "at {len}");
            }
        }
        // Lengths that lie, behind a valid CRC, are caught too.
        let mut lying = encode(&sample(), b"abc");
        let header_len_at = FIXED_HEAD - 4;
        lying[header_len_at..FIXED_HEAD].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&reseal(lying)).unwrap_err(),
            SnapshotFormatError::Serde(_)
        ));
        let mut garbage = vec![0u8; 64];
        garbage[..8].copy_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
        garbage[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode(&reseal(garbage)).unwrap_err(),
            SnapshotFormatError::Serde(_)
        ));
    }

    #[test]
    fn atomic_write_and_sparse_copy() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let src_path = dir.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.set_len(8 << 20).unwrap();
        write_all_at(&src, b"hello", 3 << 20).unwrap();
        write_all_at(&src, b"end", (8 << 20) - 3).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst_path = dir.path().join("dst");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst_path)
            .unwrap();
        copy_sparse(&src, &dst, 8 << 20).unwrap();
        assert_eq!(
            std::fs::read(&src_path).unwrap(),
            std::fs::read(&dst_path).unwrap()
        );
    }
}
