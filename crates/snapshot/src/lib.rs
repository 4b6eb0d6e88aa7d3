//! squib's snapshot state file: squib's own format (not Firecracker's bitcode). This crate is
//! the container (magic, version, lengths, CRC-64), its bounded reader and the durable writes of
//! a snapshot pair; the resources header inside it is the VMM's (`squib_vmm::snapshot_file`).
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic [`SNAPSHOT_MAGIC`] (`"SQUIBSNP"` read as a `u64`) |
//! | 8 | 6 | format version: major, minor, patch as three `u16` ([`SNAPSHOT_VERSION`]) |
//! | 14 | 4 | `h` = length of the resources header |
//! | 18 | h | the resources header (JSON; its shape is the VMM's) |
//! | 18+h | 8 | `s` = length of the engine's device state |
//! | 26+h | s | the engine's device state (QEMU's migration stream) |
//! | 26+h+s | 8 | CRC-64/XZ of every byte before it |
//!
//! Guest memory is not in this file: it is the memory file next to it.
//! Checks on load run in upstream's order: size, magic, version (upstream decodes its header
//! first), CRC, then the payload; a file without the magic gets upstream's text for a file its
//! decoder cannot read.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `"SQUIBSNP"`, read as a little-endian `u64`.
pub const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"SQUIBSNP");

/// The version of squib's state-file format. 1.1.0: the resources header is the VMM's
/// `VmConfig` (upstream's `GET /vm/config` keys); 1.0.0 files, whose header spelled four keys
/// in snake case, are still read (the VMM upgrades their header).
pub const SNAPSHOT_VERSION: FormatVersion = FormatVersion {
    major: 1,
    minor: 1,
    patch: 0,
};

const CRC_LEN: usize = 8;
const FIXED_HEAD: usize = 8 + 6 + 4;
/// Bounds on what squib writes (the resources header is a few KiB of JSON; QEMU's device state
/// without RAM well under a MiB), so a corrupt or hostile file cannot ask for gigabytes.
const MAX_HEADER_LEN: usize = 1 << 20;
const MAX_DEVICE_STATE_LEN: usize = 64 << 20;
/// The largest state file squib reads.
pub const MAX_STATE_FILE_LEN: u64 =
    (FIXED_HEAD + MAX_HEADER_LEN + 8 + MAX_DEVICE_STATE_LEN + CRC_LEN) as u64;

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

/// A checked state file, borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFile<'a> {
    pub version: FormatVersion,
    /// The resources header, JSON.
    pub header: &'a [u8],
    /// The engine's device state (QEMU's migration stream).
    pub device_state: &'a [u8],
}

/// Why a state file cannot be read; the texts are upstream's `SnapshotError`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("CRC64 validation failed")]
    Crc64,
    #[error("Invalid data version: {0}")]
    InvalidFormatVersion(FormatVersion),
    #[error("IO Error: File too short to contain CRC")]
    InvalidSnapshotSize,
    /// Not a squib state file at all: upstream's text for a file its decoder cannot read.
    #[error("An error occurred during bitcode serialization: bitcode error")]
    Undecodable,
    /// Reading the file failed (upstream's `IO Error: ⟨OS error⟩`, e.g. for a directory).
    #[error("IO Error: {0}")]
    Read(String),
    #[error(
        "Snapshot file is larger than any squib writes: {0} bytes (at most {MAX_STATE_FILE_LEN})."
    )]
    TooLarge(u64),
    #[error("An IO error occurred: {0}")]
    Io(i32),
    #[error("An error occured with serialization/deserialization: {0}")]
    Serde(String),
}

/// Serializes a state file around a resources header (JSON) and the engine's device state.
pub fn encode(header: &[u8], device_state: &[u8]) -> Vec<u8> {
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
    out.extend_from_slice(header);
    out.extend_from_slice(&(device_state.len() as u64).to_le_bytes());
    out.extend_from_slice(device_state);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks size, magic, version and CRC, in upstream's order (it decodes the header, checks
/// its magic and version, then the CRC); returns the version and the payload after them.
fn check(bytes: &[u8]) -> Result<(FormatVersion, &[u8]), SnapshotFormatError> {
    if bytes.len() < CRC_LEN {
        return Err(SnapshotFormatError::InvalidSnapshotSize);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
    let version = check_head(body)?;
    let stored = u64::from_le_bytes(trailer.try_into().unwrap_or_default());
    if crc64(body) != stored {
        return Err(SnapshotFormatError::Crc64);
    }
    Ok((version, &body[FIXED_HEAD - 4..]))
}

/// Magic and version at the start of `head`: a file without squib's magic is one upstream's
/// decoder could not read either.
fn check_head(head: &[u8]) -> Result<FormatVersion, SnapshotFormatError> {
    let mut reader = Reader(head);
    let (Ok(magic), Ok(major), Ok(minor), Ok(patch)) =
        (reader.u64(), reader.u16(), reader.u16(), reader.u16())
    else {
        return Err(SnapshotFormatError::Undecodable);
    };
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotFormatError::Undecodable);
    }
    let version = FormatVersion {
        major,
        minor,
        patch,
    };
    if !version.readable() {
        return Err(SnapshotFormatError::InvalidFormatVersion(version));
    }
    Ok(version)
}

/// Checks a state file and splits it into its parts; the header is not parsed here.
pub fn decode(bytes: &[u8]) -> Result<StateFile<'_>, SnapshotFormatError> {
    let (version, payload) = check(bytes)?;
    let mut reader = Reader(payload);
    let header_len = reader.u32()? as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(SnapshotFormatError::Serde(format!(
            "resources header of {header_len} bytes"
        )));
    }
    let header = reader.take(header_len)?;
    let state_len = usize::try_from(reader.u64()?)
        .ok()
        .filter(|len| *len <= MAX_DEVICE_STATE_LEN)
        .ok_or_else(|| SnapshotFormatError::Serde("device state too large".into()))?;
    let device_state = reader.take(state_len)?;
    if !reader.0.is_empty() {
        return Err(SnapshotFormatError::Serde(format!(
            "{} unexpected bytes after the device state",
            reader.0.len()
        )));
    }
    Ok(StateFile {
        version,
        header,
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

/// CRC-64/XZ (ECMA-182 polynomial, reflected, init and xorout all ones): the checksum
/// squib's state files have always carried.
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// The CRC-64/XZ of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A not-yet-existing temporary path in `target`'s directory (so a rename is atomic).
fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.squib-tmp-{}-{n}", std::process::id()))
}

/// A temporary file next to its target (so a rename is atomic), removed unless it was
/// renamed into place; `tempfile` picks the unique name and removes it on drop.
pub struct TempFile {
    pub path: tempfile::TempPath,
    pub file: File,
}

impl TempFile {
    /// Creates a fresh temporary file next to `target`, empty. When `target` exists, the
    /// temporary file takes its mode and owner before anything is written to it, so that
    /// replacing a user's file never makes its content more readable.
    pub fn create_for(target: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // 0666 less the umask, as a plain create would give: tempfile's default is 0600.
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!(".{name}.squib-tmp-"))
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)?
            .into_parts();
        if let Ok(existing) = std::fs::metadata(target) {
            let mine = file.metadata()?;
            if (existing.uid(), existing.gid()) != (mine.uid(), mine.gid()) {
                std::os::unix::fs::fchown(&file, Some(existing.uid()), Some(existing.gid()))?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(existing.mode() & 0o7777))?;
        }
        Ok(Self { path, file })
    }

    /// fsync, rename over `target`, fsync the directory.
    pub fn persist(self, target: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        self.path.persist(target).map_err(|e| e.error)?;
        sync_dir_of(target)
    }
}

/// fsyncs the directory holding `path`, so that a rename in it is durable.
fn sync_dir_of(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Which file of a snapshot pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    State,
    Memory,
}

/// Why a snapshot pair could not be committed: the file, the operation and the error.
#[derive(Debug)]
pub struct CommitError {
    pub file: PairFile,
    pub op: &'static str,
    pub error: io::Error,
}

/// Puts a fully written, fsynced pair in place: the memory file first, then the state file.
/// A failure on the way leaves the previous pair (or the absence of one) as it was — the
/// previous memory file is kept through a hard link until the state file is in place — and
/// the error says so. The directories are fsynced last; their errors are reported too (the
/// new pair is then in place, but maybe not durable).
pub fn commit_pair(
    memory: TempFile,
    mem_path: &Path,
    state: TempFile,
    state_path: &Path,
) -> Result<(), CommitError> {
    let fail = |file, op, error: io::Error| CommitError { file, op, error };
    let intact = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{e}; the previous snapshot files were left as they were"),
        )
    };
    memory
        .file
        .sync_all()
        .map_err(|e| fail(PairFile::Memory, "sync", e))?;
    state
        .file
        .sync_all()
        .map_err(|e| fail(PairFile::State, "sync", e))?;
    let backup = temp_path_for(mem_path);
    let had_memory = match std::fs::hard_link(mem_path, &backup) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(fail(PairFile::Memory, "link", intact(e))),
    };
    let drop_backup = || {
        if had_memory {
            let _ = std::fs::remove_file(&backup);
        }
    };
    if let Err(e) = memory.path.persist(mem_path) {
        drop_backup();
        return Err(fail(PairFile::Memory, "rename", intact(e.error)));
    }
    if let Err(e) = state.path.persist(state_path) {
        let e = e.error;
        // Put the previous memory file back (or take the new one away).
        let undone = if had_memory {
            std::fs::rename(&backup, mem_path)
        } else {
            std::fs::remove_file(mem_path)
        };
        return Err(match undone {
            Ok(()) => fail(PairFile::State, "rename", intact(e)),
            Err(undo) => fail(
                PairFile::State,
                "rename",
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; restoring the previous memory file failed too ({undo}): the memory file is the new one"
                    ),
                ),
            ),
        });
    }
    drop_backup();
    sync_dir_of(mem_path).map_err(|e| fail(PairFile::Memory, "sync", e))?;
    sync_dir_of(state_path).map_err(|e| fail(PairFile::State, "sync", e))?;
    Ok(())
}

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadStateError {
    /// It cannot be opened, or it is not a regular file.
    #[error(transparent)]
    Open(io::Error),
    /// Its content is refused.
    #[error(transparent)]
    Format(SnapshotFormatError),
}

/// Reads a state file, bounded: a FIFO, socket or device is refused without reading from it
/// (opened non-blocking, so nothing waits for a writer), a file larger than squib ever writes
/// is refused from its size, and the header is checked before the rest is read. A file
/// whose header does not add up is refused after a streaming CRC pass (upstream's order: CRC
/// before magic), never held in memory. Blocking: call it off the async threads.
pub fn read_state_file(path: &Path) -> Result<Vec<u8>, ReadStateError> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadStateError::Open)?;
    let meta = file.metadata().map_err(ReadStateError::Open)?;
    if meta.is_dir() {
        // Upstream opens a directory, then fails to read it.
        return Err(ReadStateError::Format(SnapshotFormatError::Read(
            io::Error::from_raw_os_error(libc::EISDIR).to_string(),
        )));
    }
    if !meta.file_type().is_file() {
        return Err(ReadStateError::Open(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file: a snapshot state file must be one",
                path.display()
            ),
        )));
    }
    let len = meta.len();
    if len < CRC_LEN as u64 {
        return Err(ReadStateError::Format(
            SnapshotFormatError::InvalidSnapshotSize,
        ));
    }
    if len > MAX_STATE_FILE_LEN {
        return Err(ReadStateError::Format(SnapshotFormatError::TooLarge(len)));
    }
    let mut head = [0u8; FIXED_HEAD - 4];
    let head_len = (len - CRC_LEN as u64).min(head.len() as u64) as usize;
    file.read_exact_at(&mut head[..head_len], 0)
        .map_err(ReadStateError::Open)?;
    check_head(&head[..head_len]).map_err(ReadStateError::Format)?;
    if !header_adds_up(&file, len) {
        let stored_at = len - CRC_LEN as u64;
        let mut crc = CRC64.digest();
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = 0u64;
        while pos < stored_at {
            let chunk = ((stored_at - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..chunk], pos)
                .map_err(ReadStateError::Open)?;
            crc.update(&buf[..chunk]);
            pos += chunk as u64;
        }
        let mut stored = [0u8; CRC_LEN];
        file.read_exact_at(&mut stored, stored_at)
            .map_err(ReadStateError::Open)?;
        if crc.finalize() != u64::from_le_bytes(stored) {
            return Err(ReadStateError::Format(SnapshotFormatError::Crc64));
        }
        // A valid CRC over a header that does not add up: crafted. It is within the size
        // bound; `decode` names what is wrong.
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(ReadStateError::Open)?;
    Ok(bytes)
}

/// True when the file's magic and version are squib's and the declared lengths add up to
/// exactly `len` within the bounds.
fn header_adds_up(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; FIXED_HEAD];
    if file.read_exact_at(&mut head, 0).is_err() {
        return false;
    }
    let mut reader = Reader(&head);
    let (Ok(magic), Ok(major), Ok(minor), Ok(patch), Ok(header_len)) = (
        reader.u64(),
        reader.u16(),
        reader.u16(),
        reader.u16(),
        reader.u32(),
    ) else {
        return false;
    };
    let version = FormatVersion {
        major,
        minor,
        patch,
    };
    let header_len = header_len as usize;
    if magic != SNAPSHOT_MAGIC || !version.readable() || header_len > MAX_HEADER_LEN {
        return false;
    }
    let mut state_len = [0u8; 8];
    if file
        .read_exact_at(&mut state_len, (FIXED_HEAD + header_len) as u64)
        .is_err()
    {
        return false;
    }
    let state_len = u64::from_le_bytes(state_len);
    state_len <= MAX_DEVICE_STATE_LEN as u64
        && (FIXED_HEAD + header_len + 8 + CRC_LEN) as u64 + state_len == len
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
    use std::io::Write;

    use super::*;

    fn sample() -> Vec<u8> {
        br#"{"machine-config":{"vcpu_count":1}}"#.to_vec()
    }

    #[test]
    fn crc64_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample(), b"QEVM\x00stream");
        let state = decode(&bytes).unwrap();
        assert_eq!(state.version, SNAPSHOT_VERSION);
        assert_eq!(state.header, sample());
        assert_eq!(state.device_state, b"QEVM\x00stream");
        assert_eq!(describe(&bytes).unwrap().to_string(), "1.1.0");
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
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "An error occurred during bitcode serialization: bitcode error"
        );
    }

    #[test]
    fn bad_version() {
        let mut bytes = encode(&sample(), b"x");
        bytes[8] = 9;
        let bytes = reseal(bytes);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Invalid data version: 9.1.0"
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
            } else if len < CRC_LEN + FIXED_HEAD - 4 {
                // No room for the magic and version before the CRC.
                assert_eq!(err, SnapshotFormatError::Undecodable, "at {len}");
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
    fn sparse_copy() {
        let dir = tempfile::tempdir().unwrap();
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

    #[test]
    fn state_files_are_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, encode(&sample(), b"device state")).unwrap();
        let bytes = read_state_file(&good).unwrap();
        assert_eq!(decode(&bytes).unwrap().device_state, b"device state");

        // A FIFO with no writer: refused at once, never waited on.
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = read_state_file(&fifo).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a regular file: a snapshot state file must be one"),
            "{err}"
        );

        // 1 GiB (sparse): refused from its size.
        let huge = dir.path().join("huge");
        File::create(&huge).unwrap().set_len(1 << 30).unwrap();
        assert!(matches!(
            read_state_file(&huge).unwrap_err(),
            ReadStateError::Format(SnapshotFormatError::TooLarge(len)) if len == 1 << 30
        ));

        // Not a state file at all: upstream's text for what its decoder cannot read, before
        // any CRC.
        let bogus = dir.path().join("bogus");
        std::fs::write(&bogus, vec![0x5a; 3 << 20]).unwrap();
        assert!(matches!(
            read_state_file(&bogus).unwrap_err(),
            ReadStateError::Format(SnapshotFormatError::Undecodable)
        ));
        // Squib's magic and version, then a header that does not add up: the CRC is checked
        // streaming, upstream's text.
        let mut head = encode(&sample(), b"x")[..FIXED_HEAD].to_vec();
        head.resize(3 << 20, 0x5a);
        std::fs::write(&bogus, head).unwrap();
        assert!(matches!(
            read_state_file(&bogus).unwrap_err(),
            ReadStateError::Format(SnapshotFormatError::Crc64)
        ));
        // A directory opens, then cannot be read, as upstream reports it.
        assert_eq!(
            read_state_file(dir.path()).unwrap_err().to_string(),
            "IO Error: Is a directory (os error 21)"
        );
        // Shorter than a CRC.
        std::fs::write(&bogus, b"abc").unwrap();
        assert_eq!(
            read_state_file(&bogus).unwrap_err().to_string(),
            "IO Error: File too short to contain CRC"
        );
        // Lengths that lie behind a valid CRC still reach `decode`, which names them.
        let mut lying = encode(&sample(), b"abc");
        lying[FIXED_HEAD - 4..FIXED_HEAD].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(&bogus, reseal(lying)).unwrap();
        let bytes = read_state_file(&bogus).unwrap();
        assert!(matches!(decode(&bytes), Err(SnapshotFormatError::Serde(_))));
    }

    fn temp_with(target: &Path, content: &[u8]) -> TempFile {
        let mut temp = TempFile::create_for(target).unwrap();
        temp.file.write_all(content).unwrap();
        temp
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_pair_is_committed_whole_with_the_targets_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (mem, state) = (dir.path().join("vm.mem"), dir.path().join("vm.state"));
        std::fs::write(&mem, b"old memory").unwrap();
        std::fs::write(&state, b"old state").unwrap();
        std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (new_mem, new_state) = (
            temp_with(&mem, b"new memory"),
            temp_with(&state, b"new state"),
        );
        // The temporary files are as closed as their targets before any byte is written.
        assert_eq!(mode(&new_mem.path), 0o600);
        commit_pair(new_mem, &mem, new_state, &state).unwrap();
        assert_eq!(std::fs::read(&mem).unwrap(), b"new memory");
        assert_eq!(std::fs::read(&state).unwrap(), b"new state");
        assert_eq!((mode(&mem), mode(&state)), (0o600, 0o640));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_failed_commit_leaves_the_previous_pair() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("vm.mem");
        std::fs::write(&mem, b"old memory").unwrap();
        // A directory where the state file goes: its rename fails after the memory file's.
        let state = dir.path().join("vm.state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("keep"), b"x").unwrap();
        let (new_mem, new_state) = (temp_with(&mem, b"new memory"), temp_with(&state, b"new"));
        let err = commit_pair(new_mem, &mem, new_state, &state).unwrap_err();
        assert_eq!((err.file, err.op), (PairFile::State, "rename"));
        assert!(
            err.error
                .to_string()
                .ends_with("the previous snapshot files were left as they were"),
            "{}",
            err.error
        );
        assert_eq!(std::fs::read(&mem).unwrap(), b"old memory");
        // Nothing left behind: no temporary file, no backup link.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        // Without a previous memory file, the new one is taken away again.
        std::fs::remove_file(&mem).unwrap();
        let (new_mem, new_state) = (temp_with(&mem, b"new memory"), temp_with(&state, b"new"));
        commit_pair(new_mem, &mem, new_state, &state).unwrap_err();
        assert!(!mem.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
