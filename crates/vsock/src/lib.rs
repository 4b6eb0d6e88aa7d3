//! squib's vsock device: a vhost-user backend (served through [`squib_vhost`]) behind QEMU's
//! `vhost-user-vsock-device`, speaking Firecracker's hybrid vsock protocol on the host side.
//!
//! - Host-initiated: a client connects to `uds_path`, writes `CONNECT <port>\n`, and reads
//!   `OK <host_port>\n` once the guest accepted; then the socket is the byte stream. No guest
//!   listener (the guest resets) or no answer within 2 s: the client's socket is closed.
//! - Guest-initiated: the guest connects to CID 2, port P; squib connects to `<uds_path>_P`. No
//!   listener there: the guest gets a reset.
//! - Credit-based flow control both ways (64 KiB per connection, as upstream), half-close both
//!   ways, at most 1023 connections, RX buffers handed out round-robin between connections.
//!
//! Everything runs on the device's vring worker thread (`squib-vsock-w0`) without ever blocking:
//! every host socket is non-blocking and watched by the muxer's epoll, which the worker watches.
//! The virtqueues go through `virtio-queue`, the packets through `virtio-vsock`.

mod conn;
mod metrics;
mod muxer;
mod proto;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use squib_vhost::{BackendHandle, GuestMemory, Vring, VringT};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

pub use metrics::VsockMetrics;
use muxer::Muxer;
use proto::MAX_PKT_BUF_SIZE;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// QEMU's vhost-user-vsock hands the backend the RX and TX queues; the event queue stays in
/// QEMU (it sends the transport reset itself).
const NUM_QUEUES: usize = 2;
/// The worker event id of the muxer's epoll (ids up to `NUM_QUEUES` are the library's).
const MUXER_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// QEMU's vhost-user-vsock asks for 1024-entry queues.
const QUEUE_SIZE: usize = 1024;

/// Why the device could not start.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot set up the vsock muxer: {0}")]
    Muxer(std::io::Error),
    #[error(transparent)]
    Backend(#[from] squib_vhost::BackendError),
}

/// What the device needs from the VM's configuration.
pub struct VsockSpec<'a> {
    pub guest_cid: u32,
    pub uds_path: &'a str,
    /// `uds_path`, bound when the client configured the device.
    pub listener: &'a UnixListener,
}

/// A running vsock device; dropping it stops the backend.
pub struct Vsock {
    metrics: Arc<VsockMetrics>,
    _handle: BackendHandle,
}

impl Vsock {
    /// Serves the device on `socket` (QEMU's `-chardev socket,path=…`), before QEMU starts.
    pub fn start(spec: &VsockSpec<'_>, socket: &Path) -> Result<Self, VsockError> {
        let metrics = Arc::new(VsockMetrics::default());
        let listener = spec.listener.try_clone().map_err(VsockError::Muxer)?;
        let muxer = Muxer::new(
            u64::from(spec.guest_cid),
            spec.uds_path.to_string(),
            listener,
            metrics.clone(),
        )
        .map_err(VsockError::Muxer)?;
        let muxer_fd = muxer.epoll_fd();
        let device = VsockDevice(Arc::new(Inner {
            guest_cid: u64::from(spec.guest_cid),
            muxer: Mutex::new(muxer),
            memory: Mutex::new(None),
            event_idx: AtomicBool::new(false),
            metrics: metrics.clone(),
        }));
        let failed = metrics.clone();
        let handle = squib_vhost::serve_with_workers("vsock", socket, device, move |workers| {
            let added = workers
                .first()
                .map(|w| w.add(muxer_fd, EventSet::IN, u64::from(MUXER_EVENT)));
            if !matches!(added, Some(Ok(()))) {
                failed.inc(&failed.activate_fails);
                tracing::error!("vsock: cannot watch the muxer from the vring worker");
            }
        })?;
        Ok(Self {
            metrics,
            _handle: handle,
        })
    }

    /// The device's counters (the `vsock` metrics section).
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }
}

struct Inner {
    guest_cid: u64,
    muxer: Mutex<Muxer>,
    memory: Mutex<Option<GuestMemory>>,
    event_idx: AtomicBool,
    metrics: Arc<VsockMetrics>,
}

#[derive(Clone)]
struct VsockDevice(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl squib_vhost::VhostUserBackend for VsockDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
            | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // QEMU reads the guest CID from the backend's config space.
        VhostUserProtocolFeatures::CONFIG
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.0.guest_cid.to_le_bytes();
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, memory: GuestMemory) -> std::io::Result<()> {
        *lock(&self.0.memory) = Some(memory);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let [rx, tx] = vrings else {
            return Ok(());
        };
        let metrics = &self.0.metrics;
        let mut muxer = lock(&self.0.muxer);
        // The muxer's sockets are served even before the guest driver starts the device
        // (host clients may connect early); its epoll is level-triggered, so skipping them
        // would spin.
        if device_event == MUXER_EVENT {
            muxer.process_events();
        }
        let Some(memory) = lock(&self.0.memory).clone() else {
            return Ok(());
        };
        match device_event {
            RX_QUEUE => metrics.inc(&metrics.rx_queue_event_count),
            TX_QUEUE => {
                metrics.inc(&metrics.tx_queue_event_count);
                self.process_tx(&mut muxer, tx, &memory);
            }
            _ => {}
        }
        self.process_rx(&mut muxer, rx, &memory);
        Ok(())
    }
}

impl VsockDevice {
    fn event_idx(&self) -> bool {
        self.0.event_idx.load(Ordering::Relaxed)
    }

    /// Takes every packet the guest has queued.
    fn process_tx(&self, muxer: &mut Muxer, vring: &Vring, memory: &GuestMemory) {
        let metrics = &self.0.metrics;
        loop {
            if self.event_idx() {
                let _ = vring.disable_notification();
            }
            let mut used = false;
            while vring.get_ref().get_queue().ready() {
                let mem = memory.memory();
                let next = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(mut chain) = next else {
                    break;
                };
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_BUF_SIZE) {
                    Ok(pkt) => muxer.send_pkt(&pkt),
                    Err(e) => {
                        metrics.inc(&metrics.tx_queue_event_fails);
                        tracing::debug!(%e, "vsock: bad TX descriptor chain");
                    }
                }
                if vring.add_used(head, 0).is_err() {
                    metrics.inc(&metrics.tx_queue_event_fails);
                }
                used = true;
            }
            if used && vring.needs_notification().unwrap_or(true) {
                let _ = vring.signal_used_queue();
            }
            if !self.event_idx() || !vring.enable_notification().unwrap_or(false) {
                break;
            }
        }
    }

    /// Gives the guest what the connections have for it, while it has RX buffers.
    fn process_rx(&self, muxer: &mut Muxer, vring: &Vring, memory: &GuestMemory) {
        let metrics = &self.0.metrics;
        loop {
            if self.event_idx() {
                let _ = vring.disable_notification();
            }
            let mut used = false;
            while muxer.has_pending_rx() && vring.get_ref().get_queue().ready() {
                let mem = memory.memory();
                let next = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(mut chain) = next else {
                    break;
                };
                let head = chain.head_index();
                let len =
                    match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_BUF_SIZE) {
                        Ok(mut pkt) => {
                            if !muxer.recv_pkt(&mut pkt) {
                                // Nothing after all: the buffer goes back for later.
                                vring.get_mut().get_queue_mut().go_to_previous_position();
                                break;
                            }
                            PKT_HEADER_SIZE as u32 + pkt.len()
                        }
                        Err(e) => {
                            metrics.inc(&metrics.rx_queue_event_fails);
                            tracing::debug!(%e, "vsock: bad RX descriptor chain");
                            0
                        }
                    };
                if vring.add_used(head, len).is_err() {
                    metrics.inc(&metrics.rx_queue_event_fails);
                }
                used = true;
            }
            if used && vring.needs_notification().unwrap_or(true) {
                let _ = vring.signal_used_queue();
            }
            if !self.event_idx() {
                break;
            }
            // Re-enable kicks; if buffers arrived meanwhile and data waits, go again.
            if !vring.enable_notification().unwrap_or(false) || !muxer.has_pending_rx() {
                break;
            }
        }
    }
}
