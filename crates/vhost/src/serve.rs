//! Serving one backend on its vhost-user socket, from bind to the last joined thread.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::thread::{ThreadRole, enter};
use crate::{GuestMemory, Vring};

/// Why a backend could not be served.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot bind the vhost-user socket {path}: {source}")]
    Bind {
        path: String,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot start the {device} backend: {why}")]
    Start { device: String, why: String },
}

/// Where a served backend is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendStatus {
    /// Bound; QEMU has not connected yet.
    Waiting,
    /// QEMU is connected.
    Connected,
    /// Over: `None` after QEMU hung up or squib stopped it, `Some(why)` after a failure.
    Ended(Option<String>),
}

struct Shared {
    status: Mutex<BackendStatus>,
    stopping: AtomicBool,
    connection: Mutex<Option<ShutdownHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backend being served. Dropping it stops the backend and joins its threads.
pub struct BackendHandle {
    device: String,
    shared: Arc<Shared>,
    stop: EventNotifier,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendHandle")
            .field("device", &self.device)
            .field("status", &self.status())
            .finish()
    }
}

impl BackendHandle {
    pub fn status(&self) -> BackendStatus {
        lock(&self.shared.status).clone()
    }

    /// Shuts QEMU's connection (if any) and joins every thread of the backend.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.notify();
        if let Some(connection) = lock(&self.shared.connection).as_ref() {
            connection.shutdown();
        }
        if let Some(thread) = self.supervisor.take()
            && thread.join().is_err()
        {
            tracing::error!(device = %self.device, "vhost-user backend supervisor panicked");
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `socket` and serves `backend` on it to the one QEMU that connects, on threads named
/// after `device` (see the crate documentation). Returns once the socket listens.
pub fn serve<B>(device: &str, socket: &Path, backend: B) -> Result<BackendHandle, BackendError>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
    serve_with_workers(device, socket, backend, |_| {})
}

/// A vring worker's event loop, for a device that waits on descriptors of its own (sockets, a
/// TAP, timers) on the same thread as its queues.
#[derive(Clone)]
pub struct WorkerEpoll(Arc<dyn EpollCtl>);

impl std::fmt::Debug for WorkerEpoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerEpoll")
    }
}

impl WorkerEpoll {
    /// Watches `fd` for `events` (level-triggered): the worker then calls the backend's
    /// `handle_event` with `device_event = id`. Ids up to the device's queue count are reserved
    /// (the queues and the exit event): use `num_queues() + 1` and above.
    pub fn add(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()> {
        self.0.add(fd, events, id)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()> {
        self.0.remove(fd, events, id)
    }
}

trait EpollCtl: Send + Sync {
    fn add(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()>;
    fn remove(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()>;
}

impl<T> EpollCtl for vhost_user_backend::VringEpollHandler<T>
where
    T: VhostUserBackend<Bitmap = (), Vring = Vring> + 'static,
{
    fn add(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()> {
        self.register_listener(fd, events, id)
    }
    fn remove(&self, fd: std::os::fd::RawFd, events: EventSet, id: u64) -> std::io::Result<()> {
        self.unregister_listener(fd, events, id)
    }
}

/// [`serve`], and `attach` is given each vring worker's event loop (index = worker thread) before
/// QEMU can connect, to add the device's own descriptors to it.
pub fn serve_with_workers<B>(
    device: &str,
    socket: &Path,
    backend: B,
    attach: impl FnOnce(Vec<WorkerEpoll>) + Send + 'static,
) -> Result<BackendHandle, BackendError>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
    let listener = Listener::new(socket, true).map_err(|source| BackendError::Bind {
        path: socket.display().to_string(),
        source,
    })?;
    let start_error = |why: String| BackendError::Start {
        device: device.to_string(),
        why,
    };
    let (stop_consumer, stop) =
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
            .map_err(|e| start_error(e.to_string()))?;
    let shared = Arc::new(Shared {
        status: Mutex::new(BackendStatus::Waiting),
        stopping: AtomicBool::new(false),
        connection: Mutex::new(None),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let supervisor = {
        let shared = shared.clone();
        let device = device.to_string();
        let role = ThreadRole::Supervisor {
            device: device.clone(),
        };
        std::thread::Builder::new()
            .name(role.thread_name())
            .spawn(move || {
                enter(|| role);
                supervise(
                    device,
                    listener,
                    backend,
                    attach,
                    stop_consumer,
                    shared,
                    ready_tx,
                )
            })
            .map_err(|e| start_error(e.to_string()))?
    };
    let mut handle = BackendHandle {
        device: device.to_string(),
        shared,
        stop,
        supervisor: Some(supervisor),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(why)) => {
            handle.stop_and_join();
            Err(start_error(why))
        }
        Err(_) => {
            handle.stop_and_join();
            Err(start_error("the supervisor thread ended".to_string()))
        }
    }
}

fn supervise<B>(
    device: String,
    mut listener: Listener,
    backend: B,
    attach: impl FnOnce(Vec<WorkerEpoll>),
    stop: EventConsumer,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(), String>>,
) where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
    let end = |why: Option<String>| {
        if let Some(why) = &why {
            tracing::error!(%device, %why, "vhost-user backend failed");
        }
        *lock(&shared.status) = BackendStatus::Ended(why);
    };
    let memory = GuestMemory::new(vm_memory::GuestMemoryMmap::new());
    // The daemon spawns the vring workers now; dropping it (end of this function) joins them.
    let hooked = Hooked {
        device: Arc::from(device.as_str()),
        inner: backend,
    };
    let requests = ThreadRole::Requests {
        device: device.clone(),
    }
    .thread_name();
    let mut daemon = match VhostUserDaemon::new(requests, hooked, memory) {
        Ok(daemon) => daemon,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return end(Some(e.to_string()));
        }
    };
    attach(
        daemon
            .get_epoll_handlers()
            .into_iter()
            .map(|h| WorkerEpoll(h as Arc<dyn EpollCtl>))
            .collect(),
    );
    let _ = ready.send(Ok(()));
    if !wait_for_connection(&listener, &stop) || shared.stopping.load(Ordering::SeqCst) {
        return end(None);
    }
    if let Err(e) = daemon.start(&mut listener) {
        return end(Some(e.to_string()));
    }
    *lock(&shared.connection) = daemon.shutdown_handle();
    *lock(&shared.status) = BackendStatus::Connected;
    tracing::debug!(%device, "QEMU connected to the vhost-user backend");
    if shared.stopping.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    let result = daemon.wait();
    lock(&shared.connection).take();
    match result {
        // QEMU closing its end is how a VM's device ends.
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::SocketBroken(_),
        )) => end(None),
        Err(e) => end(Some(e.to_string())),
    }
}

/// Blocks until QEMU connects (true) or squib stops the backend (false).
fn wait_for_connection(listener: &Listener, stop: &EventConsumer) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

/// The device's backend with the layer's duties added: every entry point names its thread and
/// runs the thread hook first; every worker gets an exit event so dropping the daemon ends it.
#[derive(Clone)]
struct Hooked<B> {
    device: Arc<str>,
    inner: B,
}

impl<B> Hooked<B> {
    fn requests(&self) {
        enter(|| ThreadRole::Requests {
            device: self.device.to_string(),
        });
    }
}

impl<B> VhostUserBackend for Hooked<B>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring>,
{
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.inner.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        self.inner.max_queue_size()
    }

    fn features(&self) -> u64 {
        self.requests();
        self.inner.features()
    }

    fn acked_features(&self, features: u64) {
        self.requests();
        self.inner.acked_features(features)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.requests();
        self.inner.protocol_features()
    }

    fn reset_device(&self) {
        self.requests();
        self.inner.reset_device()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.requests();
        self.inner.set_event_idx(enabled)
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.requests();
        self.inner.get_config(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        self.requests();
        self.inner.set_config(offset, buf)
    }

    fn update_memory(&self, mem: GuestMemory) -> std::io::Result<()> {
        self.requests();
        self.inner.update_memory(mem)
    }

    fn set_backend_req_fd(&self, backend: vhost::vhost_user::Backend) {
        self.requests();
        self.inner.set_backend_req_fd(backend)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.inner.queues_per_thread()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit_event(thread_index).or_else(|| {
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
        })
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        self.requests();
        self.inner.stop_vring(queue_index)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        enter(|| ThreadRole::Worker {
            device: self.device.to_string(),
            index: thread_id,
        });
        self.inner
            .handle_event(device_event, evset, vrings, thread_id)
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> std::io::Result<Option<File>> {
        self.requests();
        self.inner.set_device_state_fd(direction, phase, file)
    }

    fn check_device_state(&self) -> std::io::Result<()> {
        self.requests();
        self.inner.check_device_state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use vhost::vhost_user::Frontend;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
    use vm_memory::GuestMemoryAtomic;

    /// A two-queue device that counts what reaches it.
    #[derive(Clone, Default)]
    struct Probe {
        memory_updates: Arc<std::sync::atomic::AtomicUsize>,
        events: Arc<Mutex<Vec<u16>>>,
    }

    impl VhostUserBackend for Probe {
        type Bitmap = ();
        type Vring = Vring;
        fn num_queues(&self) -> usize {
            2
        }
        fn max_queue_size(&self) -> usize {
            256
        }
        fn features(&self) -> u64 {
            1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
                | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        }
        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::CONFIG
        }
        fn set_event_idx(&self, _: bool) {}
        fn update_memory(&self, _: GuestMemory) -> std::io::Result<()> {
            self.memory_updates.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn handle_event(&self, id: u16, _: EventSet, _: &[Vring], _: usize) -> std::io::Result<()> {
            self.events.lock().unwrap().push(id);
            Ok(())
        }
    }

    fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect()
    }

    #[test]
    fn serves_a_frontend_then_stops_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("probe.sock");
        let probe = Probe::default();
        let handle = serve("probe", &socket, probe.clone()).unwrap();
        assert_eq!(handle.status(), BackendStatus::Waiting);

        let frontend = Frontend::connect(&socket, 2).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        assert_eq!(features, probe.features());
        // A memory table with one region backed by a memfd, as QEMU sends it.
        let memfd = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        memfd.set_len(1 << 20).unwrap();
        // SAFETY: a fresh anonymous mapping the test owns and unmaps when it ends.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: 1 << 20,
            userspace_addr: addr as u64,
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        };
        frontend.set_mem_table(&[region]).unwrap();
        wait_for(|| probe.memory_updates.load(Ordering::SeqCst) == 1);
        assert_eq!(handle.status(), BackendStatus::Connected);
        let names = thread_names();
        assert!(names.iter().any(|n| n == "squib-probe"), "{names:?}");
        assert!(names.iter().any(|n| n == "squib-probe-vu"), "{names:?}");

        handle.stop();
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(addr, 1 << 20) };
        let _ = GuestMemoryAtomic::new(vm_memory::GuestMemoryMmap::<()>::new());
    }

    #[test]
    fn ends_when_qemu_hangs_up_and_stops_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("a.sock");
        let handle = serve("hangup", &socket, Probe::default()).unwrap();
        let frontend = Frontend::connect(&socket, 2).unwrap();
        frontend.set_owner().unwrap();
        drop(frontend);
        wait_for(|| matches!(handle.status(), BackendStatus::Ended(_)));
        assert_eq!(handle.status(), BackendStatus::Ended(None));
        drop(handle);

        let idle = serve("idle", &dir.path().join("b.sock"), Probe::default()).unwrap();
        let started = Instant::now();
        idle.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn device_descriptors_reach_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Probe::default();
        let (event_consumer, event) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        let fd = event_consumer.as_raw_fd();
        let handle =
            serve_with_workers("own", &dir.path().join("c.sock"), probe.clone(), move |w| {
                assert_eq!(w.len(), 1);
                assert!(
                    w[0].add(fd, EventSet::IN, 2).is_err(),
                    "ids up to num_queues are reserved"
                );
                w[0].add(fd, EventSet::IN, 3).unwrap();
            })
            .unwrap();
        event.notify().unwrap();
        wait_for(|| probe.events.lock().unwrap().contains(&3));
        let _ = event_consumer.consume();
        let names = thread_names();
        assert!(names.iter().any(|n| n == "squib-own-w0"), "{names:?}");
        drop(handle);
    }

    #[test]
    fn an_unbindable_socket_is_an_error() {
        let err = serve(
            "nowhere",
            Path::new("/nonexistent-dir/x.sock"),
            Probe::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot bind the vhost-user socket /nonexistent-dir/x.sock"),
            "{err}"
        );
    }
}
