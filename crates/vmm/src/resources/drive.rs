//! `/drives/{id}`: virtio block devices (file-backed) and vhost-user block devices.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterConfig;
use crate::action::VmmActionError;

/// Host page-cache policy of a drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests from the guest are ignored.
    #[default]
    Unsafe,
    /// Flush requests from the guest reach the host file.
    Writeback,
}

/// How the host performs a drive's I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    Async,
    #[default]
    Sync,
}

/// Body of `PUT /drives/{id}`, and the read-back shape of `GET /vm/config`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    pub drive_id: String,
    pub partuuid: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub cache_type: CacheType,
    pub is_read_only: Option<bool>,
    pub path_on_host: Option<String>,
    pub rate_limiter: Option<RateLimiterConfig>,
    pub io_engine: Option<IoEngine>,
    pub socket: Option<String>,
}

/// Body of `PATCH /drives/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceUpdateConfig {
    pub drive_id: String,
    pub path_on_host: Option<String>,
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Why a drive was refused; the display text is the client-visible message.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("A root block device already exists!")]
    RootBlockDeviceAlreadyAdded,
    #[error("Attempt to add block as a root device while the root device defined as a pmem device")]
    AddingSecondRootDevice,
    #[error(
        "Unable to patch the block device: Failed perform action on device: Device not found Please verify the request arguments."
    )]
    PatchDeviceNotFound,
    #[error(
        "Unable to patch the block device: Block: Running method expected different backend. Please verify the request arguments."
    )]
    PatchDifferentBackend,
    #[error(
        "Unable to patch the block device: Block: Virtio backend error: Error manipulating the backing file: {0} {1} Please verify the request arguments."
    )]
    PatchBackingFile(io::Error, String),
    #[error("Unable to patch the block device: {0} Please verify the request arguments.")]
    PatchEngine(String),
    #[error("Unable to create the virtio block device: Invalid block config.")]
    InvalidBlockConfig,
    #[error(
        "Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {0} {1}"
    )]
    BackingFile(io::Error, String),
    #[error(
        "Unable to create the virtio block device: Vhost user backend error: Vhost-user error: Failed to connect to UDS Unix stream: {0}"
    )]
    BackendConnect(io::Error),
}

/// Where a validated drive's data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveBackend {
    /// A host file served by squib's engine as virtio-blk.
    File {
        path: String,
        read_only: bool,
        io_engine: IoEngine,
        rate_limiter: Option<RateLimiterConfig>,
    },
    /// An external vhost-user-blk backend listening on `socket`, connected when the drive was
    /// configured (as upstream does); QEMU gets the connection at start.
    VhostUser {
        socket: String,
        connection: BackendConnection,
    },
}

/// A connection to a vhost-user backend, shared by every copy of the drive's resources. Two
/// are equal only if they are the same connection.
#[derive(Clone, Debug)]
pub struct BackendConnection(Arc<OwnedFd>);

impl BackendConnection {
    /// Connects without ever waiting: a listener whose backlog is full refuses at once
    /// (`EAGAIN`) instead of stalling the VMM loop until it accepts. Nothing is sent: QEMU's
    /// vhost-user front-end speaks first, at start.
    pub fn connect(socket: &str) -> io::Result<Self> {
        let stream = mio::net::UnixStream::connect(socket)?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        Ok(Self(Arc::new(OwnedFd::from(stream))))
    }

    /// The descriptor QEMU inherits.
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<OwnedFd> for BackendConnection {
    fn from(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }
}

impl PartialEq for BackendConnection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BackendConnection {}

/// Opens a drive's backing file to check it, as upstream does, without ever waiting: a FIFO
/// (which would block an open until a writer comes), a socket or a character device is
/// refused; a regular file or a block device is accepted. Nothing is written or truncated.
pub(crate) fn open_backing_file(path: &str, writable: bool) -> io::Result<std::fs::File> {
    open_checked(path, writable, false)
}

/// `PUT /drives` before boot: as [`open_backing_file`], but a directory given read-only is
/// accepted as upstream accepts it (it opens read-only; writable it fails with `EISDIR`
/// there too). QEMU cannot use one, so `InstanceStart` refuses it
/// ([`Drives::check_usable`]); a hot-plug or a swap refuses it at once.
fn open_backing_file_at_put(path: &str, writable: bool) -> io::Result<std::fs::File> {
    open_checked(path, writable, true)
}

fn open_checked(path: &str, writable: bool, directory: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_block_device() || (directory && kind.is_dir())) {
        return Err(not_a_disk());
    }
    Ok(file)
}

fn not_a_disk() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file or a block device",
    )
}

/// A file-backed drive's path that is a directory (accepted read-only at `PUT`, as upstream).
fn directory_backed(drive: &Drive) -> Result<(), DriveError> {
    match &drive.backend {
        DriveBackend::File { path, .. } if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) => {
            Err(DriveError::BackingFile(not_a_disk(), path.clone()))
        }
        _ => Ok(()),
    }
}

/// A drive whose shape is valid and whose backing file could be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub is_root_device: bool,
    pub partuuid: Option<String>,
    pub cache_type: CacheType,
    pub backend: DriveBackend,
}

impl TryFrom<BlockDeviceConfig> for Drive {
    type Error = DriveError;

    fn try_from(cfg: BlockDeviceConfig) -> Result<Self, Self::Error> {
        let backend = match (&cfg.path_on_host, &cfg.socket) {
            (Some(path), None) => {
                let read_only = cfg.is_read_only.unwrap_or(false);
                open_backing_file_at_put(path, !read_only)
                    .map_err(|e| DriveError::BackingFile(e, path.clone()))?;
                DriveBackend::File {
                    path: path.clone(),
                    read_only,
                    io_engine: cfg.io_engine.unwrap_or_default(),
                    rate_limiter: cfg.rate_limiter.and_then(RateLimiterConfig::normalized),
                }
            }
            (None, Some(socket))
                if cfg.is_read_only.is_none()
                    && cfg.rate_limiter.is_none()
                    && cfg.io_engine.is_none() =>
            {
                DriveBackend::VhostUser {
                    socket: socket.clone(),
                    connection: BackendConnection::connect(socket)
                        .map_err(DriveError::BackendConnect)?,
                }
            }
            _ => return Err(DriveError::InvalidBlockConfig),
        };
        Ok(Self {
            id: cfg.drive_id,
            is_root_device: cfg.is_root_device,
            partuuid: cfg.partuuid,
            cache_type: cfg.cache_type,
            backend,
        })
    }
}

impl Drive {
    /// The shape `GET /vm/config` shows: every field, nulls included.
    pub fn to_config(&self) -> BlockDeviceConfig {
        let mut cfg = BlockDeviceConfig {
            drive_id: self.id.clone(),
            partuuid: self.partuuid.clone(),
            is_root_device: self.is_root_device,
            cache_type: self.cache_type,
            ..Default::default()
        };
        match &self.backend {
            DriveBackend::File {
                path,
                read_only,
                io_engine,
                rate_limiter,
            } => {
                cfg.is_read_only = Some(*read_only);
                cfg.path_on_host = Some(path.clone());
                cfg.rate_limiter = *rate_limiter;
                cfg.io_engine = Some(*io_engine);
            }
            DriveBackend::VhostUser { socket, .. } => cfg.socket = Some(socket.clone()),
        }
        cfg
    }

    pub fn is_read_only(&self) -> bool {
        matches!(
            self.backend,
            DriveBackend::File {
                read_only: true,
                ..
            }
        )
    }
}

/// The configured drives, root device first, in insertion order otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drives {
    list: Vec<Drive>,
}

impl Drives {
    /// At `InstanceStart`: every drive can back a QEMU disk. A directory, accepted read-only at
    /// `PUT` as upstream does, cannot (upstream boots and the guest's reads fail).
    pub(crate) fn check_usable(&self) -> Result<(), DriveError> {
        self.list.iter().try_for_each(directory_backed)
    }

    /// Whether a drive of this id may be (or stay) the root device. Upstream checks this
    /// before it opens the backing file or connects to the backend, so its text wins over
    /// theirs.
    pub(crate) fn check_root(&self, cfg: &BlockDeviceConfig) -> Result<(), DriveError> {
        let other_root = self
            .list
            .iter()
            .any(|d| d.is_root_device && d.id != cfg.drive_id);
        if cfg.is_root_device && other_root {
            return Err(DriveError::RootBlockDeviceAlreadyAdded);
        }
        Ok(())
    }

    /// Adds a drive, or replaces the one with the same id. At most one root device.
    pub fn insert(&mut self, drive: Drive) -> Result<(), DriveError> {
        let existing = self.list.iter().position(|d| d.id == drive.id);
        let other_root = self
            .list
            .iter()
            .any(|d| d.is_root_device && d.id != drive.id);
        if drive.is_root_device && other_root {
            return Err(DriveError::RootBlockDeviceAlreadyAdded);
        }
        match existing {
            Some(index) => self.list[index] = drive,
            None => self.list.push(drive),
        }
        if let Some(index) = self.list.iter().position(|d| d.is_root_device) {
            let root = self.list.remove(index);
            self.list.insert(0, root);
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Drive> {
        self.list.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Drive> {
        self.list.iter().find(|d| d.id == id)
    }

    /// Takes the drive with this id out (hot-unplug).
    pub fn remove(&mut self, id: &str) -> Option<Drive> {
        let at = self.list.iter().position(|d| d.id == id)?;
        Some(self.list.remove(at))
    }

    pub fn root(&self) -> Option<&Drive> {
        self.list.first().filter(|d| d.is_root_device)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl super::VmResources {
    /// `PUT /drives/{id}`: one root device across drives and pmem.
    pub(crate) fn insert_drive(&mut self, cfg: BlockDeviceConfig) -> Result<(), DriveError> {
        if cfg.is_root_device && self.pmem.has_root() {
            return Err(DriveError::AddingSecondRootDevice);
        }
        self.drives.check_root(&cfg)?;
        let drive = Drive::try_from(cfg)?;
        self.drives.insert(drive)
    }

    /// `PUT /drives/{id}` after boot (hot-plug): a new id, never the root device; the checked
    /// drive, for the engine to plug before it is recorded.
    pub(crate) fn drive_for_hotplug(
        &self,
        cfg: BlockDeviceConfig,
    ) -> Result<Drive, VmmActionError> {
        if self.drives.get(&cfg.drive_id).is_some() {
            return Err(VmmActionError::DeviceIdInUse);
        }
        if cfg.is_root_device {
            return Err(DriveError::RootBlockDeviceAlreadyAdded.into());
        }
        let drive = Drive::try_from(cfg)?;
        directory_backed(&drive)?;
        Ok(drive)
    }

    /// `PATCH /drives/{id}`: what changes, checked (a new backing file is opened first); the
    /// caller applies it to the running guest, then records [`DrivePatch::drive`].
    pub(crate) fn drive_patch(
        &self,
        update: &BlockDeviceUpdateConfig,
    ) -> Result<Option<DrivePatch>, DriveError> {
        let Some(mut drive) = self.drives.get(&update.drive_id).cloned() else {
            return Err(DriveError::PatchDeviceNotFound);
        };
        let refresh = update.path_on_host.is_none() && update.rate_limiter.is_none();
        let DriveBackend::File {
            path,
            read_only,
            rate_limiter,
            ..
        } = &mut drive.backend
        else {
            // A vhost-user drive: neither field is upstream's config refresh (re-read the
            // backend's capacity and tell the guest). QEMU's vhost-user-blk already does that
            // by itself whenever the backend signals a config change, so there is nothing
            // left to do. A new path or rate limiter is for virtio drives only, as upstream.
            return if refresh {
                Ok(None)
            } else {
                Err(DriveError::PatchDifferentBackend)
            };
        };
        if refresh {
            // Upstream's vhost-user config refresh, on a virtio drive.
            return Err(DriveError::PatchDifferentBackend);
        }
        if let Some(new_path) = &update.path_on_host {
            open_backing_file(new_path, !*read_only)
                .map_err(|e| DriveError::PatchBackingFile(e, new_path.clone()))?;
            *path = new_path.clone();
        }
        let limiter = update.rate_limiter.map(|update| {
            RateLimiterConfig::merged(*rate_limiter, Some(update))
                .and_then(RateLimiterConfig::normalized)
        });
        if let Some(limiter) = limiter {
            *rate_limiter = limiter;
        }
        Ok(Some(DrivePatch {
            new_backing_file: update.path_on_host.is_some(),
            limiter,
            drive,
        }))
    }
}

/// A checked `PATCH /drives/{id}` on a virtio drive.
pub(crate) struct DrivePatch {
    /// The drive as it is once the patch is applied.
    pub(crate) drive: Drive,
    /// The engine must reopen the backing file.
    pub(crate) new_backing_file: bool,
    /// The engine must apply this limiter (`None` inside: unlimited).
    pub(crate) limiter: Option<Option<RateLimiterConfig>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool, path: &str) -> Drive {
        Drive::try_from(BlockDeviceConfig {
            drive_id: id.into(),
            is_root_device: root,
            path_on_host: Some(path.into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn shape_rules() {
        let both = BlockDeviceConfig {
            drive_id: "a".into(),
            path_on_host: Some("/x".into()),
            socket: Some("/s".into()),
            ..Default::default()
        };
        assert!(matches!(
            Drive::try_from(both),
            Err(DriveError::InvalidBlockConfig)
        ));
        let neither = BlockDeviceConfig {
            drive_id: "a".into(),
            ..Default::default()
        };
        assert!(matches!(
            Drive::try_from(neither),
            Err(DriveError::InvalidBlockConfig)
        ));
        let vhost = BlockDeviceConfig {
            drive_id: "a".into(),
            socket: Some("/s".into()),
            is_read_only: Some(true),
            ..Default::default()
        };
        assert!(matches!(
            Drive::try_from(vhost),
            Err(DriveError::InvalidBlockConfig)
        ));
    }

    #[test]
    fn vhost_user_backend_is_connected_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vu.sock");
        let socket = path.to_str().unwrap().to_string();
        let cfg = BlockDeviceConfig {
            drive_id: "vu".into(),
            socket: Some(socket.clone()),
            ..Default::default()
        };
        // An absent backend is refused with upstream's text.
        assert_eq!(
            Drive::try_from(cfg.clone()).unwrap_err().to_string(),
            "Unable to create the virtio block device: Vhost user backend error: Vhost-user error: Failed to connect to UDS Unix stream: No such file or directory (os error 2)"
        );
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let drive = Drive::try_from(cfg.clone()).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        let DriveBackend::VhostUser { connection, .. } = &drive.backend else {
            panic!("not a vhost-user drive: {drive:?}");
        };
        assert_eq!(
            drive.clone().backend,
            drive.backend,
            "copies share the connection"
        );
        assert_ne!(
            Drive::try_from(cfg.clone()).unwrap().backend,
            drive.backend,
            "a second configuration is a second connection"
        );
        assert!(connection.raw_fd() >= 0);
        assert_eq!(drive.to_config().socket.as_deref(), Some(socket.as_str()));
        // A listener that never accepts and whose backlog is full refuses at once instead of
        // blocking the caller.
        drop(listener);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        let refused = loop {
            match Drive::try_from(cfg.clone()) {
                Ok(drive) => held.push(drive),
                Err(e) => break e,
            }
            assert!(held.len() < 100_000, "the backlog never filled");
        };
        assert!(
            refused
                .to_string()
                .ends_with("Resource temporarily unavailable (os error 11)"),
            "{refused}"
        );
        drop(listener);
    }

    #[test]
    fn missing_file_message() {
        let cfg = BlockDeviceConfig {
            drive_id: "a".into(),
            path_on_host: Some("/nonexistent/disk".into()),
            ..Default::default()
        };
        assert_eq!(
            Drive::try_from(cfg).unwrap_err().to_string(),
            "Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent/disk"
        );
    }

    #[test]
    fn root_first_single_root_and_replace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let mut drives = Drives::default();
        drives.insert(drive("data", false, path)).unwrap();
        drives.insert(drive("rootfs", true, path)).unwrap();
        assert_eq!(drives.root().unwrap().id, "rootfs");
        assert!(matches!(
            drives.insert(drive("other", true, path)),
            Err(DriveError::RootBlockDeviceAlreadyAdded)
        ));
        // Replacing the root with a non-root drive of the same id is allowed.
        drives.insert(drive("rootfs", false, path)).unwrap();
        assert!(drives.root().is_none());
        assert_eq!(drives.len(), 2);
        let ids: Vec<_> = drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
    }

    #[test]
    fn read_back_has_every_field() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let d = drive("rootfs", true, file.path().to_str().unwrap());
        let json = serde_json::to_value(d.to_config()).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 9);
        assert_eq!(json["io_engine"], "Sync");
        assert_eq!(json["socket"], serde_json::Value::Null);
    }
}
