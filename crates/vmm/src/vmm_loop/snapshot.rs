//! `PUT /snapshot/create` and `PUT /snapshot/load` in the VMM loop.
//!
//! Create: the engine writes its device state into a temporary file next to `snapshot_path`
//! and the guest memory into a temporary file next to `mem_file_path` (each taking the mode
//! and owner of the file it replaces); squib then writes its state file
//! ([`crate::snapshot_file`]) to a temporary file, and the pair is committed together
//! ([`squib_snapshot::commit_pair`]): a failure leaves the previous pair as it was. A user
//! file at either path is replaced atomically, never half-written.
//!
//! Load: the state file is read and checked, the resources are rebuilt from it
//! ([`VmResources::restored`](crate::VmResources): every saved value through the rules of
//! its endpoint, network overrides applied), and the engine restores the guest from a
//! private copy of the memory file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use squib_snapshot::{PairFile, ReadStateError, TempFile};

use super::{METRICS_PERIOD, Vmm};
use crate::action::{
    ActionResult, CreateSnapshotError, LoadSnapshotError, VmmActionError, VmmData,
};
use crate::engine::{Engine, EngineError, RestoreSource, RunningVm};
use crate::resources::drive::DriveBackend;
use crate::resources::snapshot::{
    CreateSnapshotParams, LoadSnapshotParams, MemBackendType, SnapshotType,
};
use crate::snapshot_file::{self, SnapshotState, StateHeader};
use crate::state::VmState;

impl<E: Engine> Vmm<E> {
    /// `PUT /snapshot/create` on a paused VM (checked by the caller).
    pub(super) async fn create_snapshot(&mut self, params: CreateSnapshotParams) -> ActionResult {
        let started = Instant::now();
        if params.snapshot_type == SnapshotType::Diff {
            return Err(CreateSnapshotError::DiffUnsupported.into());
        }
        // The guest state of a vhost-user device lives in its external backend: upstream
        // refuses to save it, before any file is touched.
        let mut unsupported: Vec<String> = self
            .resources
            .drives
            .iter()
            .filter(|d| matches!(d.backend, DriveBackend::VhostUser { .. }))
            .map(|d| format!("vhost-user-block(id: {})", d.id))
            .collect();
        // squib's vsock runs behind QEMU's vhost-user-vsock, which QEMU cannot migrate
        // (docs/deviations.md); upstream snapshots it.
        if self.resources.vsock.is_some() {
            unsupported.push("vsock (squib cannot snapshot its vhost-user vsock yet)".to_string());
        }
        if !unsupported.is_empty() {
            return Err(
                CreateSnapshotError::DevicesWithoutSnapshotSupport(unsupported.join(", ")).into(),
            );
        }
        let unplugging = self.running_vm()?.unplugging();
        if !unplugging.is_empty() {
            return Err(CreateSnapshotError::UnplugPending(unplugging.join(", ")).into());
        }
        let snapshot_path = Path::new(&params.snapshot_path);
        let mem_path = Path::new(&params.mem_file_path);
        let state_err = |op: &'static str| {
            move |e: std::io::Error| CreateSnapshotError::SnapshotBackingFile(op, e.into())
        };
        let mem_err = |op: &'static str| {
            move |e: std::io::Error| CreateSnapshotError::MemoryBackingFile(op, e.into())
        };
        if snapshot_path == mem_path {
            return Err(CreateSnapshotError::SnapshotBackingFile(
                "open",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the snapshot file and the memory file are the same path",
                )
                .into(),
            )
            .into());
        }
        let device_state = TempFile::create_for(snapshot_path).map_err(state_err("open"))?;
        let memory = TempFile::create_for(mem_path).map_err(mem_err("open"))?;
        let engine_started = Instant::now();
        self.running_vm()?
            .save_snapshot(&device_state.path, &memory.file)
            .await
            .map_err(|e| match e {
                EngineError::WriteMemory(why) => CreateSnapshotError::Memory(why),
                e => CreateSnapshotError::MicrovmState(e),
            })?;
        let engine_us = engine_started.elapsed().as_micros() as u64;
        let resources = StateHeader::from_resources(&self.resources);
        let (state_target, mem_target) = (snapshot_path.to_path_buf(), mem_path.to_path_buf());
        // File work (reading the engine's stream, writing, fsyncs, renames) runs off the
        // async threads.
        tokio::task::spawn_blocking(move || -> Result<(), CreateSnapshotError> {
            let stream = std::fs::read(&device_state.path).map_err(state_err("read"))?;
            drop(device_state);
            let bytes = snapshot_file::encode(&resources, &stream);
            let mut state = TempFile::create_for(&state_target).map_err(state_err("open"))?;
            std::io::Write::write_all(&mut state.file, &bytes).map_err(state_err("write"))?;
            squib_snapshot::commit_pair(memory, &mem_target, state, &state_target).map_err(|e| {
                match e.file {
                    PairFile::State => {
                        CreateSnapshotError::SnapshotBackingFile(e.op, e.error.into())
                    }
                    PairFile::Memory => {
                        CreateSnapshotError::MemoryBackingFile(e.op, e.error.into())
                    }
                }
            })
        })
        .await
        .map_err(|e| {
            CreateSnapshotError::SnapshotBackingFile(
                "write",
                std::io::Error::other(e.to_string()).into(),
            )
        })??;
        let latencies = &self.metrics.values.latencies_us;
        latencies.vmm_full_create_snapshot.set(engine_us);
        latencies
            .full_create_snapshot
            .set(started.elapsed().as_micros() as u64);
        tracing::info!(
            snapshot = %snapshot_path.display(),
            memory = %mem_path.display(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot created"
        );
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/load` (the boot-path rule is checked by the caller). Any failure is
    /// fatal (docs/api-contract.md §4.3).
    pub(super) async fn load_snapshot(&mut self, params: LoadSnapshotParams) -> ActionResult {
        let started = Instant::now();
        match self.try_load_snapshot(params).await {
            Ok(engine_us) => {
                let latencies = &self.metrics.values.latencies_us;
                latencies.vmm_load_snapshot.set(engine_us);
                latencies
                    .load_snapshot
                    .set(started.elapsed().as_micros() as u64);
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    state = ?self.state,
                    "snapshot loaded"
                );
                if self.metrics.is_installed() {
                    if let Err(e) = self.flush_metrics().await {
                        tracing::warn!("{e}");
                    }
                    let mut timer = tokio::time::interval_at(
                        tokio::time::Instant::now() + METRICS_PERIOD,
                        METRICS_PERIOD,
                    );
                    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    self.metrics_timer = Some(timer);
                }
                Ok(VmmData::Empty)
            }
            Err(error) => {
                self.fatal = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Returns the engine's share of the time, in µs.
    async fn try_load_snapshot(
        &mut self,
        params: LoadSnapshotParams,
    ) -> Result<u64, VmmActionError> {
        if params.clock_realtime {
            tracing::warn!(
                "clock_realtime is not honoured: the guest's clock resumes where it was saved"
            );
        }
        if params.track_dirty_pages {
            tracing::warn!("track_dirty_pages is not honoured: squib takes Full snapshots only");
        }
        let state = read_state(Path::new(&params.snapshot_path).to_path_buf()).await?;
        // Upstream reads the state file before it looks at the memory backend.
        if params.mem_backend.backend_type == MemBackendType::Uffd {
            return Err(LoadSnapshotError::UffdUnsupported.into());
        }
        // A FIFO (or device) as the memory file would block the engine's open: refused here.
        let mem_path = Path::new(&params.mem_backend.backend_path);
        if std::fs::metadata(mem_path).is_ok_and(|m| !m.is_file()) {
            return Err(LoadSnapshotError::GuestMemory(format!(
                "the memory file {} is not a regular file",
                mem_path.display()
            ))
            .into());
        }
        let resources = self
            .resources
            .restored(&state.resources, &params, &self.open_tap)?;
        let engine_started = Instant::now();
        let (vm, exit) = self
            .engine
            .restore(
                &resources,
                RestoreSource {
                    device_state: &state.device_state,
                    memory_file: Path::new(&params.mem_backend.backend_path),
                },
            )
            .await
            .map_err(|e| LoadSnapshotError::Restore(e.to_string()))?;
        self.resources = resources;
        self.adopt_vm(vm, exit, VmState::Paused);
        if params.resume_vm {
            self.running_vm()?
                .resume()
                .await
                .map_err(LoadSnapshotError::Resume)?;
            self.state = VmState::Running;
        }
        Ok(engine_started.elapsed().as_micros() as u64)
    }
}

/// Reads and decodes a state file on a blocking thread: the VMM loop and the API never wait
/// on the file (a FIFO, a slow disk).
async fn read_state(path: PathBuf) -> Result<SnapshotState, LoadSnapshotError> {
    tokio::task::spawn_blocking(move || {
        let bytes = squib_snapshot::read_state_file(&path).map_err(|e| match e {
            ReadStateError::Open(e) => LoadSnapshotError::OpenStateFile(e.into()),
            ReadStateError::Format(e) => LoadSnapshotError::LoadStateFile(e),
        })?;
        snapshot_file::decode(&bytes).map_err(LoadSnapshotError::LoadStateFile)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoadSnapshotError::Restore(format!(
            "reading the state file failed: {e}"
        )))
    })
}
