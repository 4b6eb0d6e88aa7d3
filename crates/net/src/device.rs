//! squib's virtio-net device, served to QEMU's `virtio-net-device` over vhost-user
//! (`-netdev vhost-user`): QEMU keeps the transport and the config space (MAC, MTU, link
//! status); this backend moves the frames between the guest's virtqueues (shared guest RAM) and a
//! TAP opened with a virtio-net header, so checksum and segmentation offloads pass through.
//!
//! Naming follows Firecracker: **rx** is host→guest (queue 0), **tx** is guest→host (queue 1).
//!
//! What happens to a frame, as in Firecracker's device:
//! * tx: a descriptor chain (header + frame) passes the tx rate limiter (a refused chain goes
//!   back to the ring until the limiter's timer fires), then goes to the MMDS when the interface
//!   is MMDS-bound and the frame is for it (copied, with its partial checksum finished, since the
//!   MMDS has no offloads), else to the TAP, written straight from guest memory with one `writev`.
//!   A frame the TAP refuses is lost and counted.
//! * rx: the TAP (or the MMDS) hands a frame; it waits, without being dropped, for guest buffers
//!   and for the rx rate limiter, then is written over as many buffers as it needs
//!   (`VIRTIO_NET_F_MRG_RXBUF`). While it waits, the TAP is not read, so its kernel queue fills
//!   and the host side sees the push-back. The frame is read into the device's buffer first, as
//!   QEMU's tap backend does: reading it straight into guest buffers (one `readv` over enough
//!   chains for the largest frame, the unused ones given back) measured slower host→guest TCP.
//! * With `VIRTIO_RING_F_EVENT_IDX`, the guest is notified as soon as a used buffer reaches the
//!   index it asked for, frame by frame, as QEMU's own device does, not once per batch.
//! * With event idx, a stream of tx frames is picked up every [`TX_POLL`] rather than kick by
//!   kick: the guest is not asked to kick while frames keep coming.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringState, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::{GuestAddressSpace, GuestMemory as _, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use crate::metrics::{NetMetrics, add, inc};
use crate::tap::{Tap, offload};
use crate::token_bucket::{LimiterConfig, RateLimiter};
use crate::vnet::{self, VnetHdr};

use squib_vhost::{GuestMemory as Memory, Vring};

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
const QUEUE_SIZE: usize = 1024;
// The most buffers one tx frame may span (Linux's UIO_MAXIOV); a chain cannot be longer than
// the ring anyway.
const MAX_IOV: usize = 1024;
// Event ids of the device's own descriptors: above the queues (0, 1) and the exit event the
// layer gives the worker (2).
const TAP_EVENT: u16 = 3;
const RX_TIMER_EVENT: u16 = 4;
const TX_TIMER_EVENT: u16 = 5;
const LIMITER_EVENT: u16 = 6;
const SERVICE_EVENT: u16 = 7;
const TX_POLL_EVENT: u16 = 8;

/// With event idx, a tx pass that moved more than one frame does not ask the guest for a kick
/// (`avail_event` stays where it was) but looks at the ring again this much later, until a
/// pass moves at most one frame. A guest streaming small frames otherwise kicks every few
/// frames, and each kick wakes the worker and, for its completion, QEMU's main loop: squib's
/// path was put on a CPU ~650 times per 1,000 64-byte datagrams against raw QEMU's ~340, ~385
/// with this (squib-bench, net). A lone frame (ping-pong traffic) still asks for a kick at
/// once; a frame that comes after a stream waits at most this long.
const TX_POLL: Duration = Duration::from_micros(250);

/// `VHOST_F_LOG_ALL` (with the `LOG_SHMFD` protocol feature): without them QEMU refuses to
/// migrate the device, which is how squib writes a snapshot. squib only snapshots a paused
/// guest, whose vhost-user devices QEMU has stopped (`GET_VRING_BASE`) before the migration
/// starts, and guest RAM is shared and never copied (`x-ignore-shared`), so QEMU never starts
/// dirty logging on a running device: no log is kept. (A `SET_LOG_BASE` would be refused by the
/// layer, whose guest memory has no dirty bitmap, ending the connection: the live migration
/// of a running guest that would need it is not something squib does.)
const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// The largest header + frame a queue or the TAP carries: a 64 KiB GSO frame, its Ethernet and
/// VLAN headers and the virtio-net header.
pub const MAX_BUFFER: usize = vnet::HDR_LEN + 65535 + 14 + 4;

/// Frames the MMDS has for the guest, waiting for the worker. Bounded: the bridge task waits when
/// it is full.
const SERVICE_QUEUE: usize = 256;

/// What PATCH and the metrics flush reach while the device runs; outlives each QEMU connection.
#[derive(Debug)]
pub struct NetShared {
    iface_id: String,
    metrics: NetMetrics,
    rx: Mutex<RateLimiter>,
    tx: Mutex<RateLimiter>,
    // Wakes the worker so a PATCHed limiter applies at once.
    changed: EventFd,
}

impl NetShared {
    /// The interface's API id.
    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    /// The interface's counters (`net_⟨iface_id⟩` keys).
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// Applies `PATCH /network-interfaces/{id}`: `None` leaves that direction alone.
    pub fn update_rate_limiters(&self, rx: Option<LimiterConfig>, tx: Option<LimiterConfig>) {
        if let Some(c) = rx {
            lock(&self.rx).update(c);
        }
        if let Some(c) = tx {
            lock(&self.tx).update(c);
        }
        let _ = self.changed.write(1);
        tracing::debug!(iface = %self.iface_id, ?rx, ?tx, "rate limiters updated");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The MMDS (or any frame service) attached to an MMDS-bound interface, seen from the device.
pub struct ServiceLink {
    claims: crate::ClaimFn,
    to_service: tokio::sync::mpsc::Sender<Vec<u8>>,
    from_service: Arc<ServiceQueue>,
}

impl std::fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLink").finish_non_exhaustive()
    }
}

// The service's guest-bound frames, handed from a tokio task to the worker thread.
struct ServiceQueue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    ready: EventFd,
    room: tokio::sync::Notify,
}

impl ServiceLink {
    /// Connects a [`crate::FrameDetour`]: spawns, on the current tokio runtime, the task that
    /// passes the service's frames to the device's worker.
    pub fn spawn(detour: crate::FrameDetour) -> io::Result<Self> {
        let queue = Arc::new(ServiceQueue {
            frames: Mutex::new(VecDeque::new()),
            ready: EventFd::new(EFD_NONBLOCK)?,
            room: tokio::sync::Notify::new(),
        });
        let bridge = queue.clone();
        let mut from_service = detour.from_service;
        tokio::spawn(async move {
            while let Some(frame) = from_service.recv().await {
                loop {
                    let room = bridge.room.notified();
                    {
                        let mut frames = lock(&bridge.frames);
                        if frames.len() < SERVICE_QUEUE {
                            frames.push_back(frame);
                            break;
                        }
                    }
                    room.await;
                }
                let _ = bridge.ready.write(1);
            }
        });
        Ok(Self {
            claims: detour.claims,
            to_service: detour.to_service,
            from_service: queue,
        })
    }
}

/// Everything one interface's device needs for one QEMU connection.
#[derive(Debug)]
pub struct NetDeviceConfig {
    /// The host side.
    pub tap: Tap,
    /// Counters and limiters, shared with the API side ([`NetBackend::shared_for`]).
    pub shared: Arc<NetShared>,
    /// The guest's MAC, when configured: frames from another source MAC are counted as spoofed.
    pub guest_mac: Option<[u8; 6]>,
    /// Whether `mtu` was configured (`VIRTIO_NET_F_MTU` is then offered; QEMU holds the value).
    pub mtu: bool,
    /// Present on MMDS-bound interfaces.
    pub service: Option<ServiceLink>,
}

// A frame waiting for the guest: header + frame in `buf[..len]`.
struct Pending {
    len: usize,
    // Tokens already taken for it (so a retry after "no buffers" does not pay twice).
    admitted: bool,
}

/// The device, in the form rust-vmm's `vhost-user-backend` serves (behind an `RwLock`).
pub struct NetBackend {
    config: NetDeviceConfig,
    mem: Option<Memory>,
    event_idx: bool,
    mrg_rxbuf: bool,
    hdr_len: usize,
    offered: u64,
    rx_buf: Vec<u8>,
    rx_pending: Option<Pending>,
    rx_waiting_timer: bool,
    tx_buf: Vec<u8>,
    tx_iovs: IovBuf,
    tx_waiting_timer: bool,
    rx_timer: TimerFd,
    tx_timer: TimerFd,
    tx_poll: TimerFd,
}

impl NetBackend {
    /// The state one interface keeps across QEMU connections (boot, snapshot load).
    pub fn shared_for(
        iface_id: &str,
        rx: LimiterConfig,
        tx: LimiterConfig,
    ) -> io::Result<Arc<NetShared>> {
        Ok(Arc::new(NetShared {
            iface_id: iface_id.to_owned(),
            metrics: NetMetrics::default(),
            rx: Mutex::new(RateLimiter::new(rx)),
            tx: Mutex::new(RateLimiter::new(tx)),
            changed: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// A device for one QEMU connection. Probes which offloads the host kernel's TAP supports:
    /// only those are offered to the guest.
    pub fn new(config: NetDeviceConfig) -> io::Result<Self> {
        let tap = &config.tap;
        let offered = offered_features(config.mtu, |flags| tap.supports_offload(flags));
        Ok(Self {
            config,
            mem: None,
            event_idx: false,
            mrg_rxbuf: false,
            hdr_len: vnet::HDR_LEN,
            offered,
            rx_buf: vec![0; MAX_BUFFER],
            rx_pending: None,
            rx_waiting_timer: false,
            tx_buf: vec![0; MAX_BUFFER],
            tx_iovs: IovBuf::default(),
            tx_waiting_timer: false,
            rx_timer: TimerFd::new()?,
            tx_timer: TimerFd::new()?,
            tx_poll: TimerFd::new()?,
        })
    }

    /// The descriptors the worker must watch besides the queues: `(fd, events, event id)` for
    /// `VringEpollHandler::register_listener`. The TAP is edge-triggered: the worker reads it
    /// until it is empty or the guest cannot take more.
    pub fn listeners(&self) -> Vec<(i32, EventSet, u64)> {
        use std::os::fd::AsRawFd;
        let mut out = vec![
            (
                self.config.tap.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                u64::from(TAP_EVENT),
            ),
            (
                self.rx_timer.as_raw_fd(),
                EventSet::IN,
                u64::from(RX_TIMER_EVENT),
            ),
            (
                self.tx_timer.as_raw_fd(),
                EventSet::IN,
                u64::from(TX_TIMER_EVENT),
            ),
            (
                self.tx_poll.as_raw_fd(),
                EventSet::IN,
                u64::from(TX_POLL_EVENT),
            ),
            (
                self.config.shared.changed.as_raw_fd(),
                EventSet::IN,
                u64::from(LIMITER_EVENT),
            ),
        ];
        if let Some(s) = &self.config.service {
            out.push((
                s.from_service.ready.as_raw_fd(),
                EventSet::IN,
                u64::from(SERVICE_EVENT),
            ));
        }
        out
    }

    fn arm(timer: &mut TimerFd, wait: Duration) {
        // A zero wait would disarm the timer: wait at least a millisecond.
        let _ = timer.reset(wait.max(Duration::from_millis(1)), None);
    }

    // ---- guest → host ----

    /// `polled`: called by the [`TX_POLL`] timer rather than by a kick.
    fn process_tx(&mut self, vring: &Vring, polled: bool) -> io::Result<()> {
        if self.tx_waiting_timer {
            return Ok(());
        }
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(());
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return Ok(());
        }
        let mut used_any = false;
        let mut sent = 0usize;
        loop {
            if self.event_idx {
                let _ = state.disable_notification();
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                match self.tx_one(&mem, chain) {
                    TxOutcome::Done => {}
                    TxOutcome::Throttled(wait) => {
                        state.get_queue_mut().go_to_previous_position();
                        self.tx_waiting_timer = true;
                        Self::arm(&mut self.tx_timer, wait);
                        if used_any {
                            signal(&mut state, &self.config.shared.metrics.event_fails);
                        }
                        return Ok(());
                    }
                }
                if state.add_used(head, 0).is_err() {
                    inc(&self.config.shared.metrics.tx_fails);
                }
                used_any = true;
                sent += 1;
                if self.event_idx {
                    // The guest says with `used_event` when it wants to hear (Linux: once 3/4
                    // of its pending frames are sent, to free them): told as soon as that
                    // chain is used, not at the end of a long batch.
                    signal(&mut state, &self.config.shared.metrics.event_fails);
                }
            }
            if self.event_idx && sent > 1 {
                // A stream: the guest is not asked for a kick; the ring is looked at again
                // after TX_POLL (see there).
                let _ = self.tx_poll.reset(TX_POLL, None);
                break;
            }
            if !self.event_idx || !state.enable_notification().unwrap_or(false) {
                break;
            }
        }
        if !used_any && !polled {
            inc(&self.config.shared.metrics.no_tx_avail_buffer);
        }
        if used_any {
            signal(&mut state, &self.config.shared.metrics.event_fails);
        }
        Ok(())
    }

    fn tx_one<M>(&mut self, mem: &M, chain: virtio_queue::DescriptorChain<M>) -> TxOutcome
    where
        M: std::ops::Deref + Clone,
        M::Target: vm_memory::GuestMemory<Bitmap = ()> + Sized,
    {
        let m = &self.config.shared.metrics;
        // The chain's readable buffers, as iovecs over guest memory: the frame goes to the TAP
        // straight from them (one `writev`), as QEMU's tap backend and upstream do. What the
        // device itself looks at is copied on the way: the header and source MAC, or on an
        // MMDS-bound interface the whole frame (the service takes it by value). The guest may
        // change its buffers meanwhile; that only changes what its own frame says.
        let want = if self.config.service.is_some() {
            MAX_BUFFER
        } else {
            self.hdr_len + 12
        };
        let iovs = self.tx_iovs.start();
        let mut len = 0usize;
        let mut copied = 0usize;
        for desc in chain.readable() {
            let Ok(parts) = mem.get_slices(desc.addr(), desc.len() as usize, Permissions::Read)
            else {
                inc(&m.tx_malformed_frames);
                return TxOutcome::Done;
            };
            for part in parts {
                let Ok(part) = part else {
                    inc(&m.tx_malformed_frames);
                    return TxOutcome::Done;
                };
                if iovs.len() == MAX_IOV {
                    inc(&m.tx_malformed_frames);
                    return TxOutcome::Done;
                }
                len = len.saturating_add(part.len());
                if copied < want {
                    copied += part.copy_to(&mut self.tx_buf[copied..want]);
                }
                iovs.push(libc::iovec {
                    iov_base: part.ptr_guard().as_ptr().cast_mut().cast(),
                    iov_len: part.len(),
                });
            }
        }
        if len <= self.hdr_len || len > MAX_BUFFER {
            inc(&m.tx_malformed_frames);
            return TxOutcome::Done;
        }
        let frame_len = len - self.hdr_len;
        if let Err(wait) = lock(&self.config.shared.tx).consume(frame_len as u64) {
            inc(&m.tx_rate_limiter_throttled);
            return TxOutcome::Throttled(wait);
        }
        add(&m.tx_bytes_count, frame_len as u64);
        inc(&m.tx_packets_count);
        inc(&m.tx_count);
        let peek = copied.min(len);
        let (hdr_bytes, frame) = self.tx_buf[..peek].split_at_mut(self.hdr_len);
        if let Some(mac) = self.config.guest_mac
            && frame.get(6..12).is_some_and(|src| src != mac)
        {
            inc(&m.tx_spoofed_mac_count);
        }
        if let Some(service) = &self.config.service
            && (service.claims)(frame)
        {
            let hdr = VnetHdr::parse(hdr_bytes).unwrap_or_default();
            if !vnet::for_local_service(&hdr, frame) {
                inc(&m.tx_malformed_frames);
                return TxOutcome::Done;
            }
            if service.to_service.try_send(frame.to_vec()).is_err() {
                // The MMDS is busy or gone: the frame is lost, as one the TAP refuses is.
                inc(&m.tx_fails);
            }
            return TxOutcome::Done;
        }
        // SAFETY: each iovec points at guest memory that stays mapped while `mem` lives, which
        // is past this call; writev only reads it.
        if let Err(err) = unsafe { writev(self.config.tap.as_raw_fd(), iovs) } {
            inc(&m.tap_write_fails);
            tracing::trace!(iface = %self.config.shared.iface_id, %err, "tap write failed");
        }
        TxOutcome::Done
    }

    // ---- host → guest ----

    fn process_rx(&mut self, vring: &Vring) -> io::Result<()> {
        if self.rx_waiting_timer {
            return Ok(());
        }
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(());
        };
        let shared = self.config.shared.clone();
        let m = &shared.metrics;
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return Ok(());
        }
        let mut delivered = false;
        loop {
            if self.rx_pending.is_none() && !self.next_rx_frame() {
                break;
            }
            let Some(pending) = self.rx_pending.as_mut() else {
                continue;
            };
            let len = pending.len;
            if !pending.admitted {
                if let Err(wait) = lock(&shared.rx).consume((len - self.hdr_len) as u64) {
                    inc(&m.rx_rate_limiter_throttled);
                    self.rx_waiting_timer = true;
                    Self::arm(&mut self.rx_timer, wait);
                    break;
                }
                pending.admitted = true;
            }
            match write_frame(
                &mem,
                state.get_queue_mut(),
                &mut self.rx_buf[..len],
                self.mrg_rxbuf,
                self.hdr_len,
            ) {
                RxOutcome::Delivered => {
                    add(&m.rx_bytes_count, (len - self.hdr_len) as u64);
                    inc(&m.rx_packets_count);
                    inc(&m.rx_count);
                    delivered = true;
                    self.rx_pending = None;
                    if self.event_idx {
                        // As soon as the guest asked for it (`used_event`), not when the TAP is
                        // empty: a host that keeps the TAP full would otherwise keep the guest
                        // from seeing anything until its ring ran dry.
                        signal(&mut state, &m.event_fails);
                    }
                }
                RxOutcome::NoBuffers { popped } => {
                    inc(&m.no_rx_avail_buffer);
                    // Asks for a kick when the guest adds a buffer beyond those just seen (with
                    // event idx, `avail_event` is the position after them), then gives the
                    // buffers back to the ring. Retrying at once only when buffers came in
                    // meanwhile: retrying on the same too-small set would spin, taking the CPU
                    // from the guest that is to refill the ring.
                    let queue = state.get_queue_mut();
                    let more = queue.enable_notification(&*mem).unwrap_or(false);
                    for _ in 0..popped {
                        queue.go_to_previous_position();
                    }
                    if more {
                        continue;
                    }
                    break;
                }
                RxOutcome::Dropped => {
                    inc(&m.rx_fails);
                    delivered = true;
                    self.rx_pending = None;
                }
            }
        }
        if delivered {
            signal(&mut state, &m.event_fails);
        }
        Ok(())
    }

    /// Fills `rx_buf` with the next frame for the guest: the service's first (they answer the
    /// guest and are few), then the TAP's. False when there is none.
    fn next_rx_frame(&mut self) -> bool {
        let m = &self.config.shared.metrics;
        if let Some(service) = &self.config.service {
            let frame = lock(&service.from_service.frames).pop_front();
            if let Some(frame) = frame {
                service.from_service.room.notify_one();
                let len = self.hdr_len + frame.len();
                if len > self.rx_buf.len() {
                    inc(&m.rx_fails);
                    return true;
                }
                self.rx_buf[..self.hdr_len].fill(0);
                self.rx_buf[self.hdr_len..len].copy_from_slice(&frame);
                self.rx_pending = Some(Pending {
                    len,
                    admitted: false,
                });
                return true;
            }
        }
        match self.config.tap.read(&mut self.rx_buf) {
            Ok(n) if n > self.hdr_len => {
                self.rx_pending = Some(Pending {
                    len: n,
                    admitted: false,
                });
                true
            }
            Ok(_) => true,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => true,
            Err(err) => {
                inc(&m.tap_read_fails);
                tracing::debug!(iface = %self.config.shared.iface_id, %err, "tap read failed");
                false
            }
        }
    }
}

/// The features the device offers: what it does itself, plus the receive offloads (and USO,
/// which the TAP takes in both directions once the kernel knows it) that `tap_supports` (a
/// `TUNSETOFFLOAD` probe) accepts.
fn offered_features(mtu: bool, tap_supports: impl Fn(u32) -> bool) -> u64 {
    let mut offered = 1 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_F_NOTIFY_ON_EMPTY
        | 1 << VIRTIO_NET_F_MRG_RXBUF
        | 1 << VIRTIO_NET_F_STATUS
        | 1 << VIRTIO_NET_F_CSUM
        | 1 << VIRTIO_NET_F_HOST_TSO4
        | 1 << VIRTIO_NET_F_HOST_TSO6
        | 1 << VIRTIO_NET_F_HOST_ECN
        | 1 << VIRTIO_NET_F_HOST_UFO
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VHOST_F_LOG_ALL;
    if mtu {
        offered |= 1 << VIRTIO_NET_F_MTU;
    }
    if tap_supports(offload::CSUM) {
        offered |= 1 << VIRTIO_NET_F_GUEST_CSUM;
        let tso = offload::CSUM | offload::TSO4 | offload::TSO6;
        if tap_supports(tso) {
            offered |= 1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6;
            if tap_supports(tso | offload::TSO_ECN) {
                offered |= 1 << VIRTIO_NET_F_GUEST_ECN;
            }
        }
        if tap_supports(offload::CSUM | offload::UFO) {
            offered |= 1 << VIRTIO_NET_F_GUEST_UFO;
        }
        // Linux ≥ 6.2. A kernel that takes USO offloads on a TAP also takes USO frames
        // (`VIRTIO_NET_HDR_GSO_UDP_L4`) written to it, so the guest may send them too.
        if tap_supports(offload::CSUM | offload::USO) {
            offered |= 1 << VIRTIO_NET_F_GUEST_USO4
                | 1 << VIRTIO_NET_F_GUEST_USO6
                | 1 << VIRTIO_NET_F_HOST_USO;
        }
    }
    offered
}

/// The `TUNSETOFFLOAD` flags for the features the guest acked: the TAP may only hand the
/// device the offloaded frames the guest accepts.
fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = offload::CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= offload::TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= offload::TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) {
        flags |= offload::TSO_ECN;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= offload::UFO;
    }
    // The kernel takes USO for both IP versions or not at all (tun.c); a guest that takes
    // only one gets its UDP segmented by the host, as without USO.
    if has(VIRTIO_NET_F_GUEST_USO4) && has(VIRTIO_NET_F_GUEST_USO6) {
        flags |= offload::USO;
    }
    flags
}

enum TxOutcome {
    Done,
    Throttled(Duration),
}

enum RxOutcome {
    Delivered,
    // Too little room: `popped` chains were taken from the ring and not used; the caller gives
    // them back (after asking for a kick).
    NoBuffers { popped: usize },
    Dropped,
}

/// Writes header + frame (`buf`) over one buffer, or over as many as it takes with mergeable
/// buffers, setting `num_buffers`. With too few buffers nothing is used ([`RxOutcome::NoBuffers`]).
/// A frame that even a full ring cannot hold (a guest posting tiny buffers) is dropped, so
/// the device never waits for room that cannot come.
fn write_frame(
    mem: &GuestMemoryMmap<()>,
    queue: &mut Queue,
    buf: &mut [u8],
    mrg_rxbuf: bool,
    hdr_len: usize,
) -> RxOutcome {
    let total = buf.len();
    let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
    let mut room = 0usize;
    let mut taken = 0usize;
    let ring = usize::from(queue.size());
    // A ring's worth of chains that cannot hold the frame: it is dropped below.
    while room < total && taken < ring {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return RxOutcome::NoBuffers {
                popped: chains.len(),
            };
        };
        taken += 1;
        let head = chain.head_index();
        match Writer::new(mem, chain) {
            Ok(w) => {
                room += w.available_bytes();
                chains.push((head, w));
            }
            // A chain the guest got wrong is returned empty, and so are those taken before it
            // (only the chains after the last returned one can go back to the ring).
            Err(_) => {
                for (h, _) in chains.drain(..) {
                    let _ = queue.add_used(mem, h, 0);
                }
                room = 0;
                let _ = queue.add_used(mem, head, 0);
                continue;
            }
        }
        if !mrg_rxbuf {
            break;
        }
    }
    if room < total
        || chains
            .first()
            .is_none_or(|(_, w)| w.available_bytes() < hdr_len)
    {
        // Without mergeable buffers the one buffer must hold the frame: it is dropped.
        for (head, _) in &chains {
            let _ = queue.add_used(mem, *head, 0);
        }
        return RxOutcome::Dropped;
    }
    if hdr_len == vnet::HDR_LEN {
        vnet::set_num_buffers(buf, chains.len() as u16);
    }
    let mut offset = 0;
    for (head, mut w) in chains {
        let n = w.available_bytes().min(total - offset);
        if w.write_all(&buf[offset..offset + n]).is_err() {
            let _ = queue.add_used(mem, head, 0);
            continue;
        }
        offset += n;
        let _ = queue.add_used(mem, head, n as u32);
    }
    RxOutcome::Delivered
}

/// Writes one frame with a single `writev`.
///
/// # Safety
/// Every iovec must point at memory readable for its length for the whole call.
unsafe fn writev(fd: i32, iovs: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: the caller vouches for the iovecs; `iovs` itself is valid for `count` entries.
    let n = unsafe { libc::writev(fd, iovs.as_ptr(), count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The tx path's iovec array, kept between frames so a frame costs no allocation. Empty
/// between calls: [`IovBuf::start`] clears it and its pointers are never used past one frame.
#[derive(Default)]
struct IovBuf(Vec<libc::iovec>);

// SAFETY: the raw pointers in the iovecs are only set and used within one `tx_one` call on the
// worker thread (the vector is cleared before each frame); what crosses threads is an empty
// allocation.
unsafe impl Send for IovBuf {}
// SAFETY: as above: no shared access ever reads the pointers.
unsafe impl Sync for IovBuf {}

impl IovBuf {
    fn start(&mut self) -> &mut Vec<libc::iovec> {
        self.0.clear();
        &mut self.0
    }
}

fn signal(state: &mut VringState<Memory>, event_fails: &AtomicU64) {
    if state.needs_notification().unwrap_or(true) && state.signal_used_queue().is_err() {
        inc(event_fails);
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn acked_features(&mut self, features: u64) {
        let has = |bit: u32| features & (1 << bit) != 0;
        self.mrg_rxbuf = has(VIRTIO_NET_F_MRG_RXBUF);
        self.hdr_len = if has(VIRTIO_F_VERSION_1) || self.mrg_rxbuf {
            vnet::HDR_LEN
        } else {
            vnet::LEGACY_HDR_LEN
        };
        let flags = tap_offloads(features);
        let tap = &self.config.tap;
        if let Err(err) = tap
            .set_vnet_hdr_size(self.hdr_len)
            .and_then(|()| tap.set_offload(flags))
        {
            inc(&self.config.shared.metrics.activate_fails);
            tracing::warn!(iface = %self.config.shared.iface_id, %err, "tap set-up failed");
        }
        tracing::debug!(
            iface = %self.config.shared.iface_id,
            features = format_args!("{features:#x}"),
            offloads = format_args!("{flags:#x}"),
            "features acked"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // `VHOST_USER_F_PROTOCOL_FEATURES` itself is offered because QEMU's virtio-net refuses
        // to start a peer whose rings it cannot enable (see crate::frontend); `LOG_SHMFD` as
        // explained at [`VHOST_F_LOG_ALL`].
        VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx] = vrings else {
            return Ok(());
        };
        let m = &self.config.shared.metrics;
        match device_event {
            RX_QUEUE => {
                inc(&m.rx_queue_event_count);
                self.process_rx(rx)
            }
            TX_QUEUE => {
                inc(&m.tx_queue_event_count);
                // Not followed by an rx pass: what the TAP or the MMDS has for the guest comes
                // with an event of its own, and a frame waiting for guest buffers with the rx
                // queue's kick (a read of the TAP per tx kick was most of the worker's futile
                // syscalls with small packets).
                self.process_tx(tx, false)
            }
            TAP_EVENT => {
                inc(&m.rx_tap_event_count);
                self.process_rx(rx)
            }
            SERVICE_EVENT => {
                if let Some(s) = &self.config.service {
                    let _ = s.from_service.ready.read();
                }
                self.process_rx(rx)
            }
            TX_POLL_EVENT => {
                let _ = self.tx_poll.wait();
                self.process_tx(tx, true)
            }
            RX_TIMER_EVENT => {
                let _ = self.rx_timer.wait();
                inc(&m.rx_event_rate_limiter_count);
                self.rx_waiting_timer = false;
                self.process_rx(rx)
            }
            TX_TIMER_EVENT => {
                let _ = self.tx_timer.wait();
                inc(&m.tx_rate_limiter_event_count);
                self.tx_waiting_timer = false;
                self.process_tx(tx, false)
            }
            LIMITER_EVENT => {
                let _ = self.config.shared.changed.read();
                // A PATCHed limiter applies at once: retry whatever waits on a timer.
                if self.rx_waiting_timer {
                    self.rx_waiting_timer = false;
                    let _ = self.rx_timer.reset(Duration::ZERO, None);
                    self.process_rx(rx)?;
                }
                if self.tx_waiting_timer {
                    self.tx_waiting_timer = false;
                    let _ = self.tx_timer.reset(Duration::ZERO, None);
                    self.process_tx(tx, false)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUFS: u64 = 0x10000;
    const WRITE: u16 = 2;

    // A guest's rx ring, laid out by hand in guest memory.
    struct Ring {
        mem: GuestMemoryMmap<()>,
        queue: Queue,
        avail: u16,
    }

    impl Ring {
        fn new(event_idx: bool) -> Ring {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
            let mut queue = Queue::new(SIZE).unwrap();
            queue
                .try_set_desc_table_address(GuestAddress(DESC))
                .unwrap();
            queue
                .try_set_avail_ring_address(GuestAddress(AVAIL))
                .unwrap();
            queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            Ring {
                mem,
                queue,
                avail: 0,
            }
        }

        // Offers a one-descriptor writable chain of `len` bytes at `addr` in descriptor `i`.
        fn offer(&mut self, i: u16, addr: u64, len: u32) {
            self.offer_chain(i, &[(addr, len)], WRITE);
        }

        // Offers a chain over `parts` (address, length) from descriptor `first` on, each
        // descriptor with `flags` (and NEXT but the last).
        fn offer_chain(&mut self, first: u16, parts: &[(u64, u32)], flags: u16) {
            const NEXT: u16 = 1;
            for (k, &(addr, len)) in parts.iter().enumerate() {
                let i = first + k as u16;
                let d = DESC + 16 * u64::from(i);
                let next = if k + 1 == parts.len() { 0 } else { NEXT };
                self.mem.write_obj(addr, GuestAddress(d)).unwrap();
                self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
                self.mem
                    .write_obj(flags | next, GuestAddress(d + 12))
                    .unwrap();
                self.mem.write_obj(i + 1, GuestAddress(d + 14)).unwrap();
            }
            let slot = AVAIL + 4 + 2 * u64::from(self.avail % SIZE);
            self.mem.write_obj(first, GuestAddress(slot)).unwrap();
            self.avail = self.avail.wrapping_add(1);
            self.mem
                .write_obj(self.avail, GuestAddress(AVAIL + 2))
                .unwrap();
        }

        fn used(&self) -> Vec<(u32, u32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            (0..idx)
                .map(|n| {
                    let e = USED + 4 + 8 * u64::from(n % SIZE);
                    (
                        self.mem.read_obj(GuestAddress(e)).unwrap(),
                        self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
                    )
                })
                .collect()
        }

        fn avail_event(&self) -> u16 {
            self.mem
                .read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE)))
                .unwrap()
        }

        fn write(&mut self, frame: &mut [u8], mrg: bool) -> RxOutcome {
            write_frame(&self.mem, &mut self.queue, frame, mrg, vnet::HDR_LEN)
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    const USO_BITS: u64 =
        1 << VIRTIO_NET_F_GUEST_USO4 | 1 << VIRTIO_NET_F_GUEST_USO6 | 1 << VIRTIO_NET_F_HOST_USO;

    #[test]
    fn uso_is_offered_both_ways_only_when_the_tap_takes_uso_offloads() {
        let all = offered_features(false, |_| true);
        assert_eq!(all & USO_BITS, USO_BITS);
        assert_ne!(all & 1 << VIRTIO_F_VERSION_1, 0);
        // A kernel before 6.2 refuses TUN_F_USO4/6: no USO in either direction.
        let old_kernel = offered_features(false, |flags| flags & offload::USO == 0);
        assert_eq!(old_kernel & USO_BITS, 0);
        assert_ne!(old_kernel & 1 << VIRTIO_NET_F_GUEST_TSO4, 0);
        assert_eq!(all & !USO_BITS, old_kernel);
        // USO is only probed together with the checksum offload it needs.
        let probed = std::cell::RefCell::new(Vec::new());
        offered_features(true, |flags| {
            probed.borrow_mut().push(flags);
            true
        });
        assert!(probed.borrow().contains(&(offload::CSUM | offload::USO)));
        // Without checksum offload the guest is offered no receive offload at all.
        let no_csum = offered_features(false, |_| false);
        assert_eq!(no_csum & (USO_BITS & !(1 << VIRTIO_NET_F_HOST_USO)), 0);
        assert_eq!(no_csum & 1 << VIRTIO_NET_F_GUEST_CSUM, 0);
    }

    #[test]
    fn the_tap_hands_over_only_the_offloads_the_guest_acked() {
        let acked = |bits: &[u32]| bits.iter().fold(0u64, |f, b| f | 1 << b);
        let csum = VIRTIO_NET_F_GUEST_CSUM;
        assert_eq!(
            tap_offloads(acked(&[
                csum,
                VIRTIO_NET_F_GUEST_USO4,
                VIRTIO_NET_F_GUEST_USO6
            ])),
            offload::CSUM | libc::TUN_F_USO4 | libc::TUN_F_USO6
        );
        // One IP version only: the kernel would refuse it, so the host segments.
        assert_eq!(
            tap_offloads(acked(&[csum, VIRTIO_NET_F_GUEST_USO4])),
            offload::CSUM
        );
        // HOST_USO is the guest's sending side: nothing for the TAP's receive offloads.
        assert_eq!(
            tap_offloads(acked(&[csum, VIRTIO_NET_F_HOST_USO])),
            offload::CSUM
        );
        assert_eq!(
            tap_offloads(acked(&[
                csum,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN,
                VIRTIO_NET_F_GUEST_UFO
            ])),
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO
        );
        // Nothing without the checksum offload every other one builds on (what QEMU 7.2, which
        // knows no USO bits, acks is then unchanged: they are never set).
        assert_eq!(
            tap_offloads(acked(&[
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_USO4,
                VIRTIO_NET_F_GUEST_USO6
            ])),
            0
        );
    }

    #[test]
    fn a_frame_spreads_over_mergeable_buffers_with_num_buffers_set() {
        let mut ring = Ring::new(true);
        ring.offer(0, BUFS, 2048);
        ring.offer(1, BUFS + 0x1000, 2048);
        let mut f = frame(3000);
        assert!(matches!(ring.write(&mut f, true), RxOutcome::Delivered));
        assert_eq!(ring.used(), vec![(0, 2048), (1, 952)]);
        let mut got = vec![0u8; 3000];
        ring.mem
            .read_slice(&mut got[..2048], GuestAddress(BUFS))
            .unwrap();
        ring.mem
            .read_slice(&mut got[2048..], GuestAddress(BUFS + 0x1000))
            .unwrap();
        assert_eq!(&got[10..12], &2u16.to_le_bytes());
        assert_eq!(&got[12..], &f[12..]);
    }

    #[test]
    fn too_few_buffers_go_back_and_ask_for_a_kick_past_them_without_spinning() {
        let mut ring = Ring::new(true);
        ring.offer(0, BUFS, 2048);
        let mut f = frame(3000);
        let RxOutcome::NoBuffers { popped } = ring.write(&mut f, true) else {
            panic!("expected NoBuffers");
        };
        assert_eq!(popped, 1);
        // What process_rx does: nothing new came in, so it waits for the kick.
        assert!(!ring.queue.enable_notification(&ring.mem).unwrap());
        ring.queue.go_to_previous_position();
        assert_eq!(ring.avail_event(), 1, "kick when a second buffer comes");
        assert!(ring.used().is_empty());
        // The guest adds one: the frame goes over both.
        ring.offer(1, BUFS + 0x1000, 2048);
        assert!(matches!(ring.write(&mut f, true), RxOutcome::Delivered));
        assert_eq!(ring.used(), vec![(0, 2048), (1, 952)]);
    }

    #[test]
    fn a_full_ring_of_tiny_or_empty_buffers_drops_the_frame_instead_of_waiting() {
        let mut ring = Ring::new(true);
        for i in 0..SIZE {
            ring.offer(
                i,
                BUFS + 0x100 * u64::from(i),
                if i % 2 == 0 { 0 } else { 16 },
            );
        }
        let mut f = frame(1500);
        assert!(matches!(ring.write(&mut f, true), RxOutcome::Dropped));
        let used = ring.used();
        assert_eq!(used.len(), usize::from(SIZE));
        assert!(used.iter().all(|&(_, len)| len == 0));
    }

    #[test]
    fn a_bad_chain_is_returned_once_and_the_frame_still_gets_through() {
        let mut ring = Ring::new(true);
        ring.offer(0, BUFS, 1024);
        // Outside guest memory.
        ring.offer(1, 0x1_0000_0000, 1024);
        ring.offer(2, BUFS + 0x1000, 1024);
        let mut f = frame(1500);
        let RxOutcome::NoBuffers { popped } = ring.write(&mut f, true) else {
            panic!("expected NoBuffers");
        };
        // Chain 0 went back to the guest empty with the bad one; only chain 2 is rolled back.
        assert_eq!(popped, 1);
        ring.queue.go_to_previous_position();
        assert_eq!(ring.used(), vec![(0, 0), (1, 0)]);
        ring.offer(3, BUFS + 0x2000, 2048);
        assert!(matches!(ring.write(&mut f, true), RxOutcome::Delivered));
        assert_eq!(ring.used(), vec![(0, 0), (1, 0), (2, 1024), (3, 476)]);
    }

    // A device whose "TAP" is one end of a datagram socket pair: a `writev` is one datagram.
    fn tx_device(mac: [u8; 6]) -> (NetBackend, std::os::unix::net::UnixDatagram) {
        use std::os::fd::OwnedFd;
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let config = NetDeviceConfig {
            tap: Tap::from_fd(OwnedFd::from(ours), "pair0").unwrap(),
            shared: NetBackend::shared_for(
                "eth0",
                LimiterConfig::default(),
                LimiterConfig::default(),
            )
            .unwrap(),
            guest_mac: Some(mac),
            mtu: false,
            service: None,
        };
        theirs.set_nonblocking(true).unwrap();
        (NetBackend::new(config).unwrap(), theirs)
    }

    // Offers a readable chain over `parts` (address, length) starting at descriptor `first`.
    fn offer_readable(ring: &mut Ring, first: u16, parts: &[(u64, u32)]) {
        ring.offer_chain(first, parts, 0);
    }

    #[test]
    fn a_tx_chain_reaches_the_tap_as_one_write_and_bad_chains_are_counted() {
        let mac = [6, 0, 10, 0, 0, 2];
        let (mut dev, peer) = tx_device(mac);
        let mut ring = Ring::new(true);
        // Header, then the frame over two buffers; the second frame's source MAC is not the
        // guest's; the third chain points outside guest memory.
        let f = frame(100);
        let mut first = f.clone();
        first[vnet::HDR_LEN + 6..vnet::HDR_LEN + 12].copy_from_slice(&mac);
        ring.mem
            .write_slice(&first[..12], GuestAddress(BUFS))
            .unwrap();
        ring.mem
            .write_slice(&first[12..40], GuestAddress(BUFS + 0x1000))
            .unwrap();
        ring.mem
            .write_slice(&first[40..], GuestAddress(BUFS + 0x2000))
            .unwrap();
        offer_readable(
            &mut ring,
            0,
            &[(BUFS, 12), (BUFS + 0x1000, 28), (BUFS + 0x2000, 60)],
        );
        ring.mem
            .write_slice(&f, GuestAddress(BUFS + 0x3000))
            .unwrap();
        offer_readable(&mut ring, 3, &[(BUFS + 0x3000, 100)]);
        offer_readable(&mut ring, 4, &[(0x1_0000_0000, 100)]);

        for _ in 0..3 {
            let chain = ring.queue.pop_descriptor_chain(&ring.mem).unwrap();
            assert!(matches!(dev.tx_one(&&ring.mem, chain), TxOutcome::Done));
        }
        let mut got = [0u8; 256];
        assert_eq!(peer.recv(&mut got).unwrap(), 100);
        assert_eq!(&got[..100], &first[..]);
        assert_eq!(peer.recv(&mut got).unwrap(), 100);
        assert_eq!(&got[..100], &f[..]);
        assert!(peer.recv(&mut got).is_err(), "the bad chain wrote nothing");
        let m = dev.config.shared.metrics();
        let read = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read(&m.tx_packets_count), 2);
        assert_eq!(read(&m.tx_bytes_count), 2 * 88);
        assert_eq!(read(&m.tx_spoofed_mac_count), 1);
        assert_eq!(read(&m.tx_malformed_frames), 1);
    }

    // Whether the timer fires within seconds (armed, or already expired: on a loaded machine
    // the test may not look before TX_POLL has passed).
    fn fires(timer: &TimerFd) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, 5000) == 1 }
    }

    #[test]
    fn a_stream_of_tx_frames_is_polled_without_kicks_and_a_lone_frame_asks_for_one() {
        let (mut dev, peer) = tx_device([6, 0, 10, 0, 0, 2]);
        let mut ring = Ring::new(true);
        let memory = Memory::new(ring.mem.clone());
        let vring = Vring::new(memory.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_event_idx(true);
        vring.set_queue_ready(true);
        dev.set_event_idx(true);
        dev.update_memory(memory).unwrap();
        let f = frame(80);
        ring.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        let mut got = [0u8; 128];

        // Two frames in one pass: no kick asked for (avail_event stays), the poll timer runs.
        offer_readable(&mut ring, 0, &[(BUFS, 80)]);
        offer_readable(&mut ring, 1, &[(BUFS, 80)]);
        dev.process_tx(&vring, false).unwrap();
        assert_eq!(peer.recv(&mut got).unwrap(), 80);
        assert_eq!(peer.recv(&mut got).unwrap(), 80);
        assert_eq!(ring.avail_event(), 0);
        assert!(fires(&dev.tx_poll), "the poll timer was armed");
        // A frame the guest adds meanwhile is picked up by the poll, without a kick.
        offer_readable(&mut ring, 2, &[(BUFS, 80)]);
        dev.process_tx(&vring, true).unwrap();
        assert_eq!(peer.recv(&mut got).unwrap(), 80);
        // That pass moved one frame: the guest is asked to kick for the next one.
        assert_eq!(ring.avail_event(), 3);
        // A poll that finds nothing is no kick without buffers.
        dev.process_tx(&vring, true).unwrap();
        let m = dev.config.shared.metrics();
        assert_eq!(
            m.no_tx_avail_buffer
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(ring.used().len(), 3);
    }

    #[test]
    fn without_mergeable_buffers_a_small_buffer_drops_the_frame() {
        let mut ring = Ring::new(false);
        ring.offer(0, BUFS, 1000);
        ring.offer(1, BUFS + 0x1000, 4096);
        let mut f = frame(1500);
        assert!(matches!(ring.write(&mut f, false), RxOutcome::Dropped));
        assert!(matches!(ring.write(&mut f, false), RxOutcome::Delivered));
        assert_eq!(ring.used(), vec![(0, 0), (1, 1500)]);
    }
}
