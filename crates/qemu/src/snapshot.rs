//! Snapshots on QEMU 7.2: guest RAM in shared memory that squib owns, plus migration with
//! `x-ignore-shared`, so QEMU's migration stream holds the device state only.
//!
//! Guest RAM is a memfd created by squib and handed to QEMU as
//! `memory-backend-file,share=on,mem-path=/proc/<squib>/fd/<n>`: shared (vhost-user and
//! `x-ignore-shared` need that), never on a disk, gone with squib even on SIGKILL, and
//! readable/writable by squib without asking QEMU.
//!
//! * Save: `migrate unix:<socket>` with `x-ignore-shared` to a socket squib listens on; squib
//!   writes what arrives into the device-state file; wait for `completed`, then copy the
//!   memfd (sparse) to the memory file.
//! * Restore: QEMU maps the memory file itself, privately (`share=off`: copy-on-write, so
//!   the file is never written and only the pages the guest touches cost memory or time),
//!   starts with the same device set and `-incoming defer` (no kernel: the guest's memory
//!   already holds it), then `migrate-incoming fd:<n>`: the stream waits in a pipe QEMU
//!   inherited, filled by squib before QEMU runs (see [`IncomingPipe`]).
//!   Where a private mapping is unsafe or impossible (see [`private_mapping_allowed`]), a
//!   memfd is filled from the file instead, as for a boot.
//! * Save of a restored guest: its RAM is private, which `x-ignore-shared` does not leave
//!   out. squib copies the memory file with the pages the guest dirtied read from QEMU on
//!   top, and splices QEMU's devices-only state behind the RAM part of the stream the guest
//!   was restored from ([`Snapshottable::save_dirtied`]); where it cannot, QEMU migrates all
//!   of it to squib and [`squib_migration_stream`] splits the RAM pages (into the memory file)
//!   from the device state as the stream arrives.
//!
//! QEMU 7.2 has no `file:` migration URI, and `exec:` would need QEMU to spawn a shell, which
//! its sandbox (`spawn=deny`) forbids and a jail does not contain.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use squib_migration_stream::RamPart;
use squib_snapshot::{copy_sparse, file_len};
use squib_vmm::{EngineError, VmResources};
use tokio::time::Instant;

use crate::accel::Accel;
use crate::caps::Capabilities;
use crate::dirty_pages::CopyError;
use crate::plan::MemoryBackend;
use crate::plan::argv::RAM_ID;
use squib_qmp::{EarlyCommand, QmpClient, QmpError};

/// The migration capability that leaves shared RAM out of the stream.
const IGNORE_SHARED: &str = "x-ignore-shared";
/// The migration capability that makes QEMU report its migration's states as `MIGRATION`
/// events: a restore learns the moment its device state is loaded.
const EVENTS: &str = "events";
/// The most a restore's pipe is asked to hold (Linux's default `pipe-max-size`, what an
/// unprivileged process may ask for); the rest of a longer stream follows as QEMU reads.
const PIPE_MAX: usize = 1 << 20;
/// How long a save or a restore of the device state may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
const MIGRATION_POLL: Duration = Duration::from_millis(5);
/// The first interval of that poll.
const MIGRATION_FIRST_POLL: Duration = Duration::from_micros(250);

/// The guest's RAM: a memfd owned by squib (shared with QEMU), or the user's memory file
/// mapped privately by QEMU.
#[derive(Debug)]
pub(crate) struct GuestRam {
    /// The memfd, or squib's read-only descriptor of the user's memory file (QEMU opens it
    /// through `/proc`, so it maps the very file squib checked).
    file: File,
    size: u64,
    /// True when QEMU maps `file` privately (copy-on-write).
    private: bool,
}

impl GuestRam {
    /// A zeroed memfd of `size` bytes.
    pub(crate) fn new(size: u64) -> Result<Self, EngineError> {
        let name = c"squib-guest-ram";
        // SAFETY: memfd_create with a valid NUL-terminated name and known flags; the new
        // descriptor is owned by the `File` below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(EngineError::Failed(format!(
                "cannot create the guest memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|e| EngineError::Failed(format!("cannot size the guest memory: {e}")))?;
        Ok(Self {
            file,
            size,
            private: false,
        })
    }

    /// The user's `memory_file` (exactly `size` bytes), for QEMU to map privately. `None`
    /// when QEMU could not map it: QEMU before 8.2 opens a mapped file read-write even when
    /// it maps it privately, so the file must be writable by squib's user (it is still never
    /// written); later ones open it read-only (see [`MemoryBackend::File`]).
    pub(crate) fn map_private(
        memory_file: &Path,
        size: u64,
        caps: &Capabilities,
    ) -> Result<Option<Self>, EngineError> {
        let file = open_memory_file(memory_file, size)?;
        let reopen = format!("/proc/self/fd/{}", file.as_raw_fd());
        if caps.maps_read_only_files_privately() {
            return Ok(Some(Self {
                file,
                size,
                private: true,
            }));
        }
        if let Err(e) = File::options().read(true).write(true).open(&reopen) {
            tracing::info!(
                "the memory file cannot be mapped copy-on-write ({e}): guest memory is copied"
            );
            return Ok(None);
        }
        Ok(Some(Self {
            file,
            size,
            private: true,
        }))
    }

    /// A memfd holding a copy of `memory_file`, which must be exactly `size` bytes.
    pub(crate) fn from_file(memory_file: &Path, size: u64) -> Result<Self, EngineError> {
        let source = open_memory_file(memory_file, size)?;
        let ram = Self::new(size)?;
        copy_sparse(&source, &ram.file, size)
            .map_err(|e| EngineError::LoadMemory(e.to_string()))?;
        Ok(ram)
    }

    /// squib's memfd (not the user's memory file QEMU maps privately).
    pub(crate) fn memfd(&self) -> Option<&File> {
        (!self.private).then_some(&self.file)
    }

    /// The path QEMU opens to map this memory.
    pub(crate) fn qemu_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    /// The launch plan's guest RAM.
    pub(crate) fn backend(&self, caps: &Capabilities) -> MemoryBackend {
        let path = self.qemu_path();
        if self.private {
            MemoryBackend::File {
                path,
                open_read_only: caps.maps_read_only_files_privately(),
            }
        } else {
            MemoryBackend::Memfd { path }
        }
    }

    /// The RAM of a restore: the memory file mapped privately where allowed (see
    /// [`private_mapping_allowed`]) and possible, a filled memfd otherwise.
    pub(crate) fn for_restore(
        memory_file: &Path,
        size: u64,
        map_privately: bool,
        caps: &Capabilities,
    ) -> Result<Self, EngineError> {
        let private = if map_privately {
            Self::map_private(memory_file, size, caps)?
        } else {
            None
        };
        match private {
            Some(ram) => Ok(ram),
            None => Self::from_file(memory_file, size),
        }
    }
}

/// The user's memory file, read-only, checked to hold exactly `size` bytes.
fn open_memory_file(memory_file: &Path, size: u64) -> Result<File, EngineError> {
    let mut source = File::open(memory_file).map_err(|e| {
        EngineError::LoadMemory(format!(
            "cannot open the memory file {}: {e}",
            memory_file.display()
        ))
    })?;
    let len = file_len(&mut source).map_err(|e| EngineError::Failed(e.to_string()))?;
    if len != size {
        return Err(EngineError::LoadMemory(format!(
            "the memory file is {len} bytes, the snapshot's guest has {size}"
        )));
    }
    Ok(source)
}

/// Whether a restored guest may map the user's memory file privately. Not with a balloon:
/// QEMU 7.2 discards ballooned pages of a file mapping by punching holes into the file,
/// which would write the user's file. Not with vhost-user devices (network interfaces,
/// vsock, vhost-user drives): their backends map guest RAM, which must then be shared.
pub(crate) fn private_mapping_allowed(resources: &VmResources) -> bool {
    resources.balloon.is_none()
        && resources.net.is_empty()
        && resources.vsock.is_none()
        && !resources.drives.iter().any(|d| {
            matches!(
                d.backend,
                squib_vmm::resources::drive::DriveBackend::VhostUser { .. }
            )
        })
}

/// What a QEMU guest needs to be snapshotted: its RAM, and the accelerator and `-cpu` it
/// runs with (a restore must run the same CPU model, whatever the client configures).
#[derive(Debug)]
pub(crate) struct Snapshottable {
    pub(crate) ram: GuestRam,
    pub(crate) meta: EngineMeta,
    /// The RAM part of the stream a restored guest was restored from, for a save that reuses
    /// it (see [`Snapshottable::save_dirtied`]), or why there is none.
    ram_part: Result<RamPart, String>,
}

/// Whether a save of this restored guest may reuse the RAM part of the stream it was
/// restored from (its RAM block list and the pages of the blocks that are not guest RAM).
/// Only where that part cannot have changed since: on microvm without PCI the RAM blocks
/// are fixed when QEMU starts (nothing can be hot-plugged) and those other than guest RAM
/// are firmware and ACPI tables the guest cannot write. A PCI machine may have gained
/// devices with option ROMs (RAM blocks of their own) and virtio-mem's block changes with
/// the plugged size: those guests are saved through QEMU's migration, which lists the
/// blocks as they are.
pub(crate) fn may_reuse_ram_part(resources: &VmResources, pci: bool) -> bool {
    !pci && resources.memory_hotplug.is_none()
}

/// The engine's header inside the device state: `u32` length, this as JSON, then QEMU's
/// migration stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EngineMeta {
    pub accel: String,
    pub cpu: String,
    /// microvm without ACPI (see [`crate::plan::legacy_interrupts`]); absent in the
    /// snapshots of older squibs, whose restores always ran microvm with ACPI.
    #[serde(default)]
    pub legacy_interrupts: bool,
    /// Modern virtio-mmio transports (see [`crate::plan::MachineOptions::modern_mmio`]);
    /// absent in the snapshots of older squibs, which derived it from the devices.
    #[serde(default)]
    pub modern_mmio: Option<bool>,
}

/// Prefixes QEMU's migration stream with the engine's header.
pub(crate) fn encode_device_state(meta: &EngineMeta, stream: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + header.len() + stream.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(stream);
    out
}

/// Splits the device state into the engine's header and QEMU's migration stream.
pub(crate) fn decode_device_state(bytes: &[u8]) -> Result<(EngineMeta, &[u8]), EngineError> {
    let bad =
        |why: String| EngineError::Failed(format!("the engine's device state is invalid: {why}"));
    let len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("too short".into()))?;
    let header = bytes
        .get(4..4usize.saturating_add(len))
        .ok_or_else(|| bad("truncated header".into()))?;
    let meta = serde_json::from_slice(header).map_err(|e| bad(e.to_string()))?;
    Ok((meta, &bytes[4 + len..]))
}

impl Snapshottable {
    /// `restored_from`: the stream of a restore whose RAM part a save may reuse (see
    /// [`may_reuse_ram_part`]); its RAM part is kept (tens of KiB) only when QEMU maps the
    /// RAM privately.
    pub(crate) fn new(ram: GuestRam, meta: EngineMeta, restored_from: Option<&[u8]>) -> Self {
        let ram_part = match restored_from {
            _ if !ram.private => Err("its RAM is shared".to_string()),
            None => Err(
                "a PCI machine or memory hot-plug may have changed its RAM blocks since the load"
                    .to_string(),
            ),
            Some(stream) => RamPart::of(stream, RAM_ID)
                .map_err(|e| format!("the stream it was restored from: {e}")),
        };
        Self {
            ram,
            meta,
            ram_part,
        }
    }

    /// Saves the paused guest: device state (engine header + migration stream) into
    /// `device_state`, memory into `memory` (fsynced).
    pub(crate) async fn save(
        &self,
        qmp: &QmpClient,
        qemu_pid: Option<u32>,
        device_state: &Path,
        memory: &File,
    ) -> Result<(), EngineError> {
        if self.ram.private {
            let dirtied = match (&self.ram_part, qemu_pid) {
                (Ok(part), Some(pid)) => {
                    self.save_dirtied(qmp, pid, part, device_state, memory)
                        .await
                }
                (Err(why), _) => Err(why.clone()),
                (_, None) => Err("QEMU's process id is unknown".to_string()),
            };
            // QEMU's state is as it was in every case: no migration ran, the guest is plainly
            // paused.
            match dirtied {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(dirtied)) => {
                    tracing::info!(
                        "snapshot of the restored guest: its {} MiB of dirtied pages over the memory file",
                        dirtied.div_ceil(1 << 20)
                    );
                    return Ok(());
                }
                Err(why) => tracing::info!("{FULL_SAVE}: {why}"),
            }
        }
        let copied = if self.ram.private {
            match self.save_through_squib(qmp, device_state, memory).await {
                Ok(()) => Ok(()),
                // QEMU did not complete its migration: the guest is still plainly paused.
                Err(SaveFailure::Migration(e)) => return Err(e),
                Err(SaveFailure::Output(e)) => Err(e),
            }
        } else {
            self.save_shared(qmp, device_state, memory).await?
        };
        // After a save QEMU leaves the guest `postmigrate`, its drives inactive, and refuses
        // another save until the guest ran again. A moment's run once the memory is copied
        // (whether or not that worked) brings it back to a plain pause, so the client can
        // retry a failed create, take another one or swap a drive.
        let rearmed = async {
            qmp.cont().await?;
            qmp.stop().await
        }
        .await
        .map_err(|e| {
            EngineError::Failed(format!("cannot pause the guest again after the save: {e}"))
        });
        copied.and(rearmed)
    }

    /// Saves a guest whose RAM is squib's memfd: the device state through QEMU's migration
    /// (shared RAM left out), then the memfd copied. The outer error: QEMU's migration
    /// failed; the inner one: the files could not be written.
    async fn save_shared(
        &self,
        qmp: &QmpClient,
        device_state: &Path,
        memory: &File,
    ) -> Result<Result<(), EngineError>, EngineError> {
        save_device_state(qmp, device_state).await?;
        let clone = |f: &File| {
            f.try_clone()
                .map_err(|e| EngineError::Failed(e.to_string()))
        };
        let (ram, out) = (clone(&self.ram.file)?, clone(memory)?);
        let size = self.ram.size;
        let (meta, device_state) = (self.meta.clone(), device_state.to_path_buf());
        // File work runs off the async threads.
        let copied = tokio::task::spawn_blocking(move || {
            let stream = std::fs::read(&device_state).map_err(|e| {
                EngineError::Failed(format!("cannot read QEMU's device state: {e}"))
            })?;
            std::fs::write(&device_state, encode_device_state(&meta, &stream))
                .map_err(|e| EngineError::Failed(format!("cannot write the device state: {e}")))?;
            copy_sparse(&ram, &out, size)
                .and_then(|()| out.sync_all())
                .map_err(|e| EngineError::WriteMemory(e.to_string()))
        })
        .await
        .map_err(|e| EngineError::WriteMemory(e.to_string()))
        .and_then(|copied| copied);
        Ok(copied)
    }
}

impl Snapshottable {
    /// Saves a restored guest (RAM: the memory file mapped privately) from what changed since
    /// its restore: the memory file is the user's one copied (sparse) with the pages QEMU
    /// holds its own copy of on top, read from QEMU's process; the device state is QEMU's
    /// devices without RAM (`xen-save-devices-state`) behind the RAM part of the stream the
    /// guest was restored from. Its cost follows the memory file's data and the dirtied
    /// pages, not the guest's size. Returns the bytes of dirtied pages. Changes nothing in
    /// QEMU. The outer error: why this way cannot work, the caller saves through QEMU's
    /// migration instead (which rewrites both files); the inner one: the files could not be
    /// written.
    async fn save_dirtied(
        &self,
        qmp: &QmpClient,
        pid: u32,
        part: &RamPart,
        device_state: &Path,
        memory: &File,
    ) -> Result<Result<u64, EngineError>, String> {
        let clone = |f: &File| f.try_clone().map_err(|e| e.to_string());
        let (ram, out) = (clone(&self.ram.file)?, clone(memory)?);
        let size = self.ram.size;
        // Before QEMU is asked anything: can squib see and read QEMU's memory at all?
        let start = {
            let ram = clone(&ram)?;
            blocking(move || {
                let start = crate::dirty_pages::find_mapping(pid, &ram, size)
                    .map_err(|e| format!("QEMU's mapping of the memory file: {e}"))?;
                crate::dirty_pages::probe(pid, start)
                    .map_err(|e| format!("QEMU's memory cannot be read: {e}"))?;
                Ok(start)
            })
            .await?
        };
        let dir = tempfile::Builder::new()
            .prefix("squib-save-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for QEMU's device state: {e}"))?;
        let devices_path = dir.path().join("devices");
        let devices_arg = devices_path
            .to_str()
            .ok_or("the temporary directory's path is not UTF-8")?
            .to_string();
        qmp.save_devices_state(&devices_arg)
            .await
            .map_err(|e| e.to_string())?;
        let (part, meta, device_state) =
            (part.clone(), self.meta.clone(), device_state.to_path_buf());
        blocking(move || {
            use std::io::Read;
            let mut devices = Vec::new();
            File::open(&devices_path)
                .and_then(|f| {
                    f.take(MAX_DEVICES_STATE + 1)
                        .read_to_end(&mut devices)
                        .map(drop)
                })
                .map_err(|e| format!("cannot read QEMU's device state: {e}"))?;
            drop(dir);
            let stream = part
                .splice(&devices)
                .map_err(|e| format!("cannot splice QEMU's device state: {e}"))?;
            // Read after QEMU saved its devices: nothing of the paused guest changes since.
            let dirtied = crate::dirty_pages::dirty_ranges(pid, start, size)
                .map_err(|e| format!("cannot read QEMU's page map: {e}"))?;
            // From here on, a failure to write the files is the answer: a migration would
            // fail to write them too (a full disk), after reading all of the guest.
            let write = |e: std::io::Error| EngineError::WriteMemory(e.to_string());
            if let Err(e) = out.set_len(0).and_then(|()| copy_sparse(&ram, &out, size)) {
                return Ok(Err(write(e)));
            }
            let copied = match crate::dirty_pages::copy_ranges(pid, start, &dirtied, &out) {
                Ok(copied) => copied,
                Err(CopyError::Read(e)) => {
                    return Err(format!("cannot read the guest's dirtied pages: {e}"));
                }
                Err(CopyError::Write(e)) => return Ok(Err(write(e))),
            };
            Ok(out
                .sync_all()
                .map_err(write)
                .and_then(|()| {
                    std::fs::write(&device_state, encode_device_state(&meta, &stream)).map_err(
                        |e| EngineError::Failed(format!("cannot write the device state: {e}")),
                    )
                })
                .map(|()| copied))
        })
        .await
    }
}

/// squib's log line when a restored guest is saved through QEMU's migration, with the reason.
const FULL_SAVE: &str = "the restored guest is saved through QEMU's migration of all its memory";

/// QEMU's device state without RAM is tens of KiB; more is not squib's guest.
const MAX_DEVICES_STATE: u64 = 64 << 20;

/// Runs file and `/proc` work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())
        .and_then(|result| result)
}

/// How a save of a privately mapped guest failed.
enum SaveFailure {
    /// Before QEMU completed its migration.
    Migration(EngineError),
    /// After it: the files could not be written.
    Output(EngineError),
}

impl Snapshottable {
    /// Saves a guest whose RAM QEMU maps privately: the migration (RAM included) comes to
    /// squib over a socket, its RAM pages go to `memory`, the rest is the device state.
    async fn save_through_squib(
        &self,
        qmp: &QmpClient,
        device_state: &Path,
        memory: &File,
    ) -> Result<(), SaveFailure> {
        let io = |what: &str, e: std::io::Error| EngineError::Failed(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("squib-migrate-")
            .tempdir()
            .map_err(|e| io("cannot create the migration socket's directory", e))
            .map_err(SaveFailure::Migration)?;
        let socket = dir.path().join("migrate.sock");
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| io("cannot create the migration socket", e))
            .map_err(SaveFailure::Migration)?;
        let err = |e: QmpError| SaveFailure::Migration(EngineError::Failed(e.to_string()));
        qmp.migrate_set_capability(IGNORE_SHARED, true)
            .await
            .map_err(err)?;
        qmp.migrate(&format!("unix:{}", socket.display()))
            .await
            .map_err(err)?;
        let (stream, _) = tokio::time::timeout(MIGRATION_TIMEOUT, listener.accept())
            .await
            .map_err(|_| EngineError::Failed("QEMU did not connect its migration stream".into()))
            .and_then(|accepted| {
                accepted.map_err(|e| io("cannot accept QEMU's migration stream", e))
            })
            .map_err(SaveFailure::Migration)?;
        let stream = stream
            .into_std()
            .and_then(|s| {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(MIGRATION_TIMEOUT))?;
                Ok(s)
            })
            .map_err(|e| io("cannot read QEMU's migration stream", e))
            .map_err(SaveFailure::Migration)?;
        let out = memory
            .try_clone()
            .map_err(|e| SaveFailure::Migration(EngineError::WriteMemory(e.to_string())))?;
        let size = self.ram.size;
        // QEMU stops writing once the split fails (its socket closes), and the split ends
        // once QEMU's migration does: neither waits on the other for ever.
        let split = tokio::task::spawn_blocking(move || {
            squib_migration_stream::split_ram(
                std::io::BufReader::with_capacity(1 << 20, stream),
                &out,
                RAM_ID,
                size,
            )
        });
        let migrated = wait_for_migration(qmp).await;
        let stream = split
            .await
            .map_err(|e| EngineError::Failed(format!("the migration reader failed: {e}")));
        migrated.map_err(SaveFailure::Migration)?;
        let written = stream.and_then(|split| {
            let stream = split.map_err(|e| match e {
                squib_migration_stream::SplitError::Memory(e) => {
                    EngineError::WriteMemory(e.to_string())
                }
                squib_migration_stream::SplitError::Stream(e) => {
                    io("cannot split QEMU's migration stream", e)
                }
            })?;
            std::fs::write(device_state, encode_device_state(&self.meta, &stream))
                .map_err(|e| io("cannot write the device state", e))?;
            memory
                .sync_all()
                .map_err(|e| EngineError::WriteMemory(e.to_string()))
        });
        written.map_err(SaveFailure::Output)
    }
}

/// The engine's header and QEMU's migration stream of a restore, checked against the
/// accelerator this squib runs: the header's `-cpu` reaches QEMU's command line.
pub(crate) fn decode_restore(
    device_state: &[u8],
    accel: Accel,
) -> Result<(EngineMeta, &[u8]), EngineError> {
    let (meta, stream) = decode_device_state(device_state)?;
    if meta.accel != accel.qemu_name() {
        return Err(EngineError::Failed(format!(
            "the snapshot was taken with the {} accelerator, this squib runs {}",
            meta.accel,
            accel.qemu_name()
        )));
    }
    if !squib_cpu_template::is_own_cpu_argument(&meta.cpu, accel.cpu_model()) {
        return Err(EngineError::Failed(format!(
            "the engine's device state is invalid: {:?} is not a CPU model squib writes",
            meta.cpu
        )));
    }
    Ok((meta, stream))
}

/// A private directory for a migration socket (squib's temporary directory: `/tmp` in a jail).
fn socket_dir() -> Result<tempfile::TempDir, EngineError> {
    tempfile::Builder::new()
        .prefix("squib-migrate-")
        .tempdir()
        .map_err(|e| {
            EngineError::Failed(format!(
                "cannot create the migration socket's directory: {e}"
            ))
        })
}

/// Saves the paused guest's device state into `device_state` (an existing file): QEMU
/// migrates to a socket squib listens on, squib writes the stream into the file.
pub(crate) async fn save_device_state(
    qmp: &QmpClient,
    device_state: &Path,
) -> Result<(), EngineError> {
    let err = |e: QmpError| EngineError::Failed(e.to_string());
    let dir = socket_dir()?;
    let socket = dir.path().join("migrate.sock");
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| {
        EngineError::Failed(format!("cannot listen for QEMU's migration stream: {e}"))
    })?;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(device_state)
        .await
        .map_err(|e| EngineError::Failed(format!("cannot open the device-state file: {e}")))?;
    let receive = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        tokio::io::copy(&mut stream, &mut out).await?;
        out.sync_all().await
    });
    let started = async {
        qmp.migrate_set_capability(IGNORE_SHARED, true)
            .await
            .map_err(err)?;
        qmp.migrate(&format!("unix:{}", socket.display()))
            .await
            .map_err(err)?;
        wait_for_migration(qmp).await
    }
    .await;
    if let Err(e) = started {
        receive.abort();
        return Err(e);
    }
    match tokio::time::timeout(MIGRATION_TIMEOUT, receive).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(EngineError::Failed(format!(
            "cannot write QEMU's device state: {e}"
        ))),
        Ok(Err(e)) => Err(EngineError::Failed(format!(
            "the migration receiver failed: {e}"
        ))),
        Err(_) => Err(EngineError::Failed(
            "QEMU's migration stream did not end".to_string(),
        )),
    }
}

/// A restore's migration stream on its way to QEMU: a pipe whose read end QEMU inherits
/// (`migrate-incoming fd:<n>`), filled before QEMU runs as far as the pipe holds it, so
/// that QEMU loads the device state the moment it is told to, with no connection to accept
/// and nothing to wait for; the rest of a longer stream follows as QEMU reads
/// ([`IncomingPipe::finish`]).
pub(crate) struct IncomingPipe {
    read: OwnedFd,
    write: tokio::net::unix::pipe::Sender,
    /// What the pipe did not hold.
    rest: Vec<u8>,
}

impl IncomingPipe {
    /// A pipe holding `stream`, or as much of it as it takes. Call on the runtime.
    pub(crate) fn new(stream: &[u8]) -> Result<Self, EngineError> {
        let failed = |e: std::io::Error| {
            EngineError::Failed(format!("cannot pass the device state to QEMU: {e}"))
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`, owned below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Room for the whole stream where the host allows it (the size is only a wish).
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                stream.len().min(PIPE_MAX) as libc::c_int,
            )
        };
        // Non-blocking for squib's end only: QEMU's end is another open file.
        // SAFETY: F_SETFL on a pipe this function owns.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        let write = File::from(write);
        let mut sent = 0;
        while sent < stream.len() {
            match std::io::Write::write(&mut &write, &stream[sent..]) {
                // A pipe never takes nothing; were it to, the task writes the rest.
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
            }
        }
        let write = tokio::net::unix::pipe::Sender::from_file(write).map_err(failed)?;
        Ok(Self {
            read,
            write,
            rest: stream[sent..].to_vec(),
        })
    }

    /// The descriptor QEMU inherits (under the same number) and reads the stream from.
    pub(crate) fn qemu_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Once QEMU runs: squib's copy of the read end is closed (QEMU's is the only one, so a
    /// QEMU that dies ends the writing), and what the pipe did not hold is written as QEMU
    /// reads, then the pipe is closed.
    pub(crate) fn finish(self) {
        let Self { read, write, rest } = self;
        drop(read);
        if rest.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let mut write = write;
            // A failure here (QEMU gone) shows as QEMU's failed migration.
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut write, &rest).await {
                tracing::debug!(%e, "the rest of the device state did not reach QEMU");
            }
        });
    }
}

/// The commands that start loading a restore's device state (QEMU waits with `-incoming
/// defer`) from the pipe QEMU inherited as `fd`: sent with QMP's negotiation (see
/// [`QmpClient::connect_with`]), so QEMU loads the stream as soon as its monitor runs;
/// [`wait_for_migration`] sees the load end.
pub(crate) fn incoming_commands(fd: RawFd) -> Vec<EarlyCommand> {
    let on = |name| serde_json::json!({ "capability": name, "state": true });
    vec![
        EarlyCommand {
            name: "migrate-set-capabilities",
            arguments: serde_json::json!({ "capabilities": [on(IGNORE_SHARED), on(EVENTS)] }),
        },
        EarlyCommand {
            name: "migrate-incoming",
            arguments: serde_json::json!({ "uri": format!("fd:{fd}") }),
        },
    ]
}

/// Waits until QEMU's migration ends: `query-migrate` at once, then again at growing
/// intervals up to [`MIGRATION_POLL`] (a restore's device state loads within a millisecond
/// or two, a save of a large guest takes seconds), unless a `MIGRATION` event (with the
/// `events` capability) says it completed first.
pub(crate) async fn wait_for_migration(qmp: &QmpClient) -> Result<(), EngineError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    let mut interval = MIGRATION_FIRST_POLL;
    // Only events from now on count: an earlier migration's are in already (events come
    // in order with the replies).
    let mut events = qmp.migration_events();
    events.mark_unchanged();
    loop {
        let info = qmp
            .query_migrate()
            .await
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        match info["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info["error-desc"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string();
                return Err(EngineError::Failed(format!(
                    "QEMU's migration failed: {why}"
                )));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Failed(format!(
                "QEMU's migration did not complete within {MIGRATION_TIMEOUT:?}"
            )));
        }
        // The next poll, or an event before it (any other state than `completed` polls at
        // once, for a failure's reason).
        if let Ok(changed) = tokio::time::timeout(interval, events.changed()).await {
            if changed.is_ok() && events.borrow_and_update().as_deref() == Some("completed") {
                return Ok(());
            }
        } else {
            interval = (interval * 2).min(MIGRATION_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_state_carries_the_cpu_and_rejects_garbage() {
        let meta = EngineMeta {
            accel: "tcg".into(),
            cpu: "max,-avx".into(),
            legacy_interrupts: true,
            modern_mmio: Some(true),
        };
        let bytes = encode_device_state(&meta, b"QEVM");
        let (back, stream) = decode_device_state(&bytes).unwrap();
        assert_eq!((back, stream), (meta.clone(), &b"QEVM"[..]));
        for bad in [&b""[..], b"\xff\xff\xff\x7f", b"\x02\0\0\0{x"] {
            assert!(decode_device_state(bad).is_err());
        }
        // An older squib's header has no machine options: microvm with ACPI.
        let header = br#"{"accel":"tcg","cpu":"max"}"#;
        let mut old = (header.len() as u32).to_le_bytes().to_vec();
        old.extend_from_slice(header);
        let (old_meta, _) = decode_restore(&old, Accel::Tcg).unwrap();
        assert!(!old_meta.legacy_interrupts);
        // Nor the transports' mode: the plan derives it as those squibs did.
        assert_eq!(old_meta.modern_mmio, None);
        let kvm = EngineMeta {
            accel: "kvm".into(),
            cpu: "host".into(),
            legacy_interrupts: false,
            modern_mmio: None,
        };
        let err = decode_restore(&encode_device_state(&kvm, b""), Accel::Tcg).unwrap_err();
        assert!(err.to_string().contains("kvm accelerator"), "{err}");
        let crafted = EngineMeta {
            cpu: "max -device x".into(),
            ..meta
        };
        let err = decode_restore(&encode_device_state(&crafted, b""), Accel::Tcg).unwrap_err();
        assert!(
            err.to_string().contains("not a CPU model squib writes"),
            "{err}"
        );
    }

    #[test]
    fn ram_is_filled_from_the_memory_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mut content = vec![0u8; 1 << 20];
        content[4096..4100].copy_from_slice(b"data");
        std::fs::write(&path, &content).unwrap();
        let ram = GuestRam::from_file(&path, 1 << 20).unwrap();
        assert!(GuestRam::from_file(&path, 2 << 20).is_err());
        assert!(!ram.private);
        // What QEMU maps through that path.
        assert_eq!(std::fs::read(ram.qemu_path()).unwrap(), content);
    }

    #[test]
    fn a_private_mapping_pins_the_checked_file_and_never_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, vec![3u8; 1 << 20]).unwrap();
        let caps = Capabilities::default();
        assert!(GuestRam::map_private(&path, 2 << 20, &caps).is_err());
        let ram = GuestRam::map_private(&path, 1 << 20, &caps)
            .unwrap()
            .unwrap();
        assert!(ram.private);
        assert!(matches!(
            ram.backend(&caps),
            MemoryBackend::File {
                open_read_only: false,
                ..
            }
        ));
        // Renaming another file over the path does not change what QEMU would map.
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        std::fs::rename(dir.path().join("other"), &path).unwrap();
        assert_eq!(std::fs::read(ram.qemu_path()).unwrap().len(), 1 << 20);
        // squib's own descriptor is read-only.
        use std::io::Write;
        assert!((&ram.file).write(b"x").is_err());
    }

    /// What QEMU reads from its end of an [`IncomingPipe`] holding `stream`.
    async fn through_the_pipe(stream: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let pipe = IncomingPipe::new(stream).unwrap();
        // QEMU's copy of the read end.
        // SAFETY: dup of a descriptor the pipe owns; the new one is owned by the File.
        let mut qemu = unsafe { File::from_raw_fd(libc::dup(pipe.qemu_fd())) };
        let in_pipe = stream.len() - pipe.rest.len();
        pipe.finish();
        let read = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            qemu.read_to_end(&mut got).map(|_| got)
        });
        let got = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the pipe was closed")
            .unwrap()
            .unwrap();
        assert!(in_pipe > 0);
        got
    }

    #[tokio::test]
    async fn the_device_state_reaches_qemu_whole_through_its_pipe() {
        let small: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
        assert_eq!(through_the_pipe(&small).await, small);
        // Longer than any pipe holds: the rest follows as the reader reads.
        let large: Vec<u8> = (0..3 * PIPE_MAX as u32).map(|i| (i / 7) as u8).collect();
        assert_eq!(through_the_pipe(&large).await, large);
    }

    #[test]
    fn balloons_and_vhost_user_drives_keep_shared_ram() {
        let mut resources = VmResources::default();
        assert!(private_mapping_allowed(&resources));
        resources.balloon = Some(Default::default());
        assert!(!private_mapping_allowed(&resources));
    }
}
