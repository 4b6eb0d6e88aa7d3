//! The MMDS's own TCP/IP endpoint, built on smoltcp and fed with the guest frames the net device
//! diverts: it answers ARP for the MMDS address with [`MMDS_MAC`] and serves HTTP on TCP port 80.
//!
//! Two adjustments make smoltcp behave like Firecracker's device-side stack, which answers the
//! guest whatever its addressing:
//! * the interface owns the MMDS address with a /0 prefix, so smoltcp treats every guest address
//!   as on-link and answers ARP from any source;
//! * before each diverted IPv4 frame the stack feeds smoltcp a synthetic ARP reply carrying the
//!   frame's source IP and MAC (and retargets the frame to [`MMDS_MAC`]), so replies go straight
//!   back to the sender even when the guest routed through a gateway MAC and never sent ARP.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::http::{MAX_REQUEST, Parsed, parse};
use crate::metrics::{add, inc};
use crate::responder::Mmds;

/// The MAC the MMDS answers ARP with (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// At most this many TCP connections at once, as upstream.
pub const MAX_CONNECTIONS: usize = 30;
const HTTP_PORT: u16 = 80;
// Room for the largest store (51200 bytes by default) plus the response head.
const TX_BUFFER: usize = 64 * 1024;
// Listening sockets kept ready, so simultaneous SYNs all find one.
const SPARE_LISTENERS: usize = 2;
const MTU: usize = 1514;
/// A connection on which nothing moved for this long (no request byte in, no response byte
/// out or acknowledged, no handshake or close progress) is reset, so a guest that leaks
/// connections or stops reading cannot hold all [`MAX_CONNECTIONS`] for good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
// Guest frames waiting for smoltcp; beyond this a burst is dropped, as a NIC drops on overrun.
const MAX_QUEUED_FRAMES: usize = 64;

const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IPV4: [u8; 2] = [0x08, 0x00];

/// Why a stack could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// The configured address is not a unicast IPv4 address.
    #[error("The MMDS IPv4 address {0} is not a unicast address.")]
    NotUnicast(Ipv4Addr),
}

/// Whether a guest frame is for the MMDS at `ip`: ARP whose target is `ip`, or IPv4 TCP to
/// `ip:80`. Everything else, other traffic to `ip` included, goes on to the TAP, as upstream.
pub fn claims_frame(frame: &[u8], ip: Ipv4Addr) -> bool {
    let Some(ethertype) = frame.get(12..14) else {
        return false;
    };
    let ip = ip.octets();
    if ethertype == ETH_ARP {
        // htype 1, ptype IPv4, hlen 6, plen 4; target protocol address at offset 24 of the ARP.
        return frame.get(14..20) == Some(&[0, 1, 8, 0, 6, 4])
            && frame.get(38..42) == Some(&ip[..]);
    }
    if ethertype != ETH_IPV4 {
        return false;
    }
    let Some(&ver_ihl) = frame.get(14) else {
        return false;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    ver_ihl >> 4 == 4
        && ihl >= 20
        && frame.get(23) == Some(&6)
        && frame.get(30..34) == Some(&ip[..])
        && frame.get(14 + ihl + 2..14 + ihl + 4) == Some(&HTTP_PORT.to_be_bytes()[..])
}

// A device that is two queues: frames in from the guest, frames out to it.
#[derive(Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}

// One TCP socket and the HTTP state of the connection it carries. `inbuf` holds at most one
// request head ([`MAX_REQUEST`]); `outbuf` at most one response: the next pipelined request is
// only parsed once the previous answer went into the socket, so a guest that stops reading
// (zero window) stalls its own requests in TCP instead of growing squib's memory.
struct Conn {
    handle: SocketHandle,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    connected: bool,
    last_activity: Instant,
    send_queue: usize,
}

/// The MMDS endpoint of one interface. Synchronous and clock-driven, so tests can script it;
/// [`spawn_stack`] runs it on tokio.
pub struct MmdsStack {
    mmds: Arc<Mmds>,
    ip: Ipv4Addr,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    epoch: Instant,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("ip", &self.ip)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl MmdsStack {
    /// A stack answering for `ip`, starting its clock at `now`.
    pub fn new(mmds: Arc<Mmds>, ip: Ipv4Addr, now: Instant) -> Result<Self, StackError> {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(StackError::NotUnicast(ip));
        }
        let mut device = QueueDevice::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
        let mut seed = [0u8; 8];
        // A fixed seed would only make TCP initial sequence numbers predictable.
        let _ = getrandom::fill(&mut seed);
        config.random_seed = u64::from_ne_bytes(seed);
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(ip.into(), 0));
        });
        let mut stack = Self {
            mmds,
            ip,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            epoch: now,
        };
        stack.ensure_listeners();
        Ok(stack)
    }

    /// The MMDS address this stack answers for.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A predicate for the net device: [`claims_frame`] for this stack's address.
    pub fn claims(&self) -> impl Fn(&[u8]) -> bool + Send + Sync + 'static {
        let ip = self.ip;
        move |frame| claims_frame(frame, ip)
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Takes one claimed guest frame and runs the stack.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) {
        let m = self.mmds.metrics();
        inc(&m.rx_count);
        if frame.len() < 14 {
            inc(&m.rx_bad_eth);
            return;
        }
        if !claims_frame(frame, self.ip) {
            inc(&m.rx_accepted_unusual);
            return;
        }
        inc(&m.rx_accepted);
        if self.device.rx.len() + 2 > MAX_QUEUED_FRAMES {
            inc(&m.rx_accepted_err);
            return;
        }
        let mut frame = frame.to_vec();
        if frame[12..14] == ETH_IPV4 && frame.len() >= 34 {
            let src_mac: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
            let src_ip = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
            if src_mac[0] & 1 == 0 && !src_ip.is_unspecified() && !src_ip.is_broadcast() {
                self.device
                    .rx
                    .push_back(arp_reply(src_mac, src_ip, self.ip));
            }
            frame[..6].copy_from_slice(&MMDS_MAC);
        }
        self.device.rx.push_back(frame);
        self.poll(now);
    }

    /// Runs timers (retransmissions, closes) and serves every connection.
    pub fn poll(&mut self, now: Instant) {
        let ts = self.smol_now(now);
        // Until quiet: serving a request queues data, which the next round transmits.
        for _ in 0..8 {
            self.iface.poll(ts, &mut self.device, &mut self.sockets);
            let progressed = self.serve(now);
            self.ensure_listeners();
            if !progressed && self.device.rx.is_empty() {
                break;
            }
        }
    }

    /// How long until [`MmdsStack::poll`] has timer work (TCP's or an idle time-out), if at all.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let ts = self.smol_now(now);
        let tcp = self
            .iface
            .poll_delay(ts, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let idle = self
            .conns
            .iter()
            .filter(|c| c.connected)
            .map(|c| (c.last_activity + IDLE_TIMEOUT).saturating_duration_since(now))
            .min();
        match (tcp, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes the stack holds on behalf of guests beyond its fixed socket buffers: request and
    /// response buffers and queued frames. Bounded by [`MAX_CONNECTIONS`] × (one request head +
    /// one response) plus a few frames, whatever the guest does.
    pub fn held_bytes(&self) -> usize {
        let conns: usize = self
            .conns
            .iter()
            .map(|c| c.inbuf.capacity() + c.outbuf.capacity())
            .sum();
        let frames: usize = self
            .device
            .rx
            .iter()
            .chain(self.device.tx.iter())
            .map(Vec::capacity)
            .sum();
        conns + frames
    }

    /// Connections currently open (handshake through close).
    pub fn open_connections(&self) -> usize {
        self.conns.iter().filter(|c| c.connected).count()
    }

    /// Frames for the guest produced so far.
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        let out = std::mem::take(&mut self.device.tx);
        let m = self.mmds.metrics();
        for f in &out {
            inc(&m.tx_frames);
            inc(&m.tx_count);
            add(&m.tx_bytes, f.len() as u64);
        }
        out
    }

    // Reads requests, queues responses, flushes; true when anything moved.
    fn serve(&mut self, now: Instant) -> bool {
        let m = self.mmds.metrics();
        let mut progressed = false;
        for conn in &mut self.conns {
            let sock = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if sock.is_active() != conn.connected {
                conn.connected = sock.is_active();
                conn.last_activity = now;
                conn.send_queue = 0;
                if conn.connected {
                    inc(&m.connections_created);
                } else {
                    inc(&m.connections_destroyed);
                    release(&mut conn.inbuf);
                    release(&mut conn.outbuf);
                }
            }
            if sock.state() == tcp::State::Closed {
                let _ = sock.listen(HTTP_PORT);
                continue;
            }
            if !conn.connected {
                continue;
            }
            let mut moved = false;
            loop {
                // Flush the pending answer first; nothing more is read until it is out.
                while !conn.outbuf.is_empty() && sock.can_send() {
                    match sock.send_slice(&conn.outbuf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            conn.outbuf.drain(..n);
                            moved = true;
                        }
                    }
                }
                if !conn.outbuf.is_empty() {
                    break;
                }
                release(&mut conn.outbuf);
                if let Parsed::Complete { consumed, request } = parse(&conn.inbuf) {
                    let response = match request {
                        Ok(req) => self.mmds.respond(&req, now),
                        Err(err) => err.to_response(),
                    };
                    conn.outbuf = response.to_bytes();
                    conn.inbuf.drain(..consumed);
                    moved = true;
                    continue;
                }
                if conn.inbuf.len() >= MAX_REQUEST {
                    // A head that cannot fit the buffer resets the connection, as upstream.
                    inc(&m.rx_accepted_err);
                    sock.abort();
                    release(&mut conn.inbuf);
                    break;
                }
                let room = MAX_REQUEST - conn.inbuf.len();
                let Ok(n) = sock.recv(|data| {
                    let n = data.len().min(room);
                    conn.inbuf.extend_from_slice(&data[..n]);
                    (n, n)
                }) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                moved = true;
            }
            // The guest acknowledging what was sent is progress too.
            let queued = sock.send_queue();
            if queued < conn.send_queue {
                moved = true;
            }
            conn.send_queue = queued;
            if moved {
                conn.last_activity = now;
                progressed = true;
            } else if now.saturating_duration_since(conn.last_activity) >= IDLE_TIMEOUT {
                tracing::debug!("MMDS: connection idle for {IDLE_TIMEOUT:?}, reset");
                sock.abort();
                release(&mut conn.inbuf);
                release(&mut conn.outbuf);
                progressed = true;
                continue;
            }
            // The client finished sending and has everything it asked for: finish too.
            if !sock.may_recv() && sock.may_send() && conn.outbuf.is_empty() {
                sock.close();
            }
        }
        progressed
    }

    fn ensure_listeners(&mut self) {
        let listening = self
            .conns
            .iter()
            .filter(|c| self.sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::Listen)
            .count();
        for _ in listening..SPARE_LISTENERS {
            if self.conns.len() >= MAX_CONNECTIONS {
                break;
            }
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; MAX_REQUEST]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            if sock.listen(HTTP_PORT).is_err() {
                break;
            }
            let handle = self.sockets.add(sock);
            self.conns.push(Conn {
                handle,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                connected: false,
                last_activity: self.epoch,
                send_queue: 0,
            });
        }
    }
}

// Empties a buffer and gives its memory back, so an idle connection holds nothing.
fn release(buf: &mut Vec<u8>) {
    buf.clear();
    buf.shrink_to(0);
}

// An ARP reply from the guest's (`ip`, `mac`) to the MMDS: it teaches smoltcp where to answer.
fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, mmds_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&MMDS_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&MMDS_MAC);
    f.extend_from_slice(&mmds_ip.octets());
    f
}

/// A predicate on a raw Ethernet frame (the net device's `ClaimFn`).
pub type ClaimFn = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The service side of a net device detour, field for field what `squib_net::FrameDetour` takes.
pub struct ServiceEnds {
    /// [`claims_frame`] for the stack's address.
    pub claims: ClaimFn,
    /// Claimed guest frames go in here.
    pub to_service: mpsc::Sender<Vec<u8>>,
    /// Frames for the guest come out here.
    pub from_service: mpsc::Receiver<Vec<u8>>,
    /// The stack's task; it ends by itself once the net device drops its ends.
    pub task: JoinHandle<()>,
}

impl std::fmt::Debug for ServiceEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceEnds").finish_non_exhaustive()
    }
}

/// Runs an [`MmdsStack`] for `ip` on the current tokio runtime.
pub fn spawn_stack(mmds: Arc<Mmds>, ip: Ipv4Addr) -> Result<ServiceEnds, StackError> {
    let stack = MmdsStack::new(mmds, ip, Instant::now())?;
    let claims = Box::new(stack.claims());
    let (to_service, from_guest) = mpsc::channel(64);
    let (to_guest, from_service) = mpsc::channel(64);
    let task = tokio::spawn(run(stack, from_guest, to_guest));
    Ok(ServiceEnds {
        claims,
        to_service,
        from_service,
        task,
    })
}

async fn run(
    mut stack: MmdsStack,
    mut from_guest: mpsc::Receiver<Vec<u8>>,
    to_guest: mpsc::Sender<Vec<u8>>,
) {
    loop {
        // No pending timer: sleep until a frame comes.
        let delay = stack
            .poll_delay(Instant::now())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            frame = from_guest.recv() => match frame {
                Some(frame) => stack.handle_frame(&frame, Instant::now()),
                None => break,
            },
            () = tokio::time::sleep(delay) => stack.poll(Instant::now()),
        }
        for frame in stack.take_output() {
            if to_guest.send(frame).await.is_err() {
                inc(&stack.mmds.metrics().tx_errors);
                tracing::debug!("MMDS stack: net device gone");
                return;
            }
        }
    }
    tracing::debug!(ip = %stack.ip, "MMDS stack stopped");
}
