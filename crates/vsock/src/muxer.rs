//! The connection multiplexer: routes guest packets to connections, accepts host clients on
//! `uds_path`, connects guest requests to `<uds_path>_<port>`, and decides which connection
//! fills the next guest RX buffer (round-robin, so one slow peer never holds up the others).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::conn::{Conn, Produced, State};
use crate::metrics::VsockMetrics;
use crate::proto::*;

/// Epoll ids of the muxer's own descriptors; streams use their fd number.
const ID_LISTENER: u64 = u64::MAX;
const ID_TIMER: u64 = u64::MAX - 1;
/// How often expiring connections are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    local_port: u32,
    peer_port: u32,
}

/// A host client that has connected but not finished its `CONNECT <port>\n` line yet.
struct LocalStream {
    stream: UnixStream,
    line: Vec<u8>,
}

type Pkt<'a> = VsockPacket<'a, ()>;

pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: String,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    local_streams: HashMap<RawFd, LocalStream>,
    local_ports: HashSet<u32>,
    local_port_last: u32,
    rxq: VecDeque<Key>,
    resets: VecDeque<Key>,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: String,
        listener: UnixListener,
        metrics: Arc<VsockMetrics>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, ID_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, ID_TIMER),
        )?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            local_streams: HashMap::new(),
            local_ports: HashSet::new(),
            local_port_last: (1 << 30) - 1,
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            metrics,
        })
    }

    /// The descriptor the device's worker watches for the muxer.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// Handles what is ready on the muxer's descriptors (never blocks).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                self.metrics.inc(&self.metrics.muxer_event_fails);
                tracing::warn!(%e, "vsock: muxer epoll failed");
                return;
            }
        };
        for event in &events[..n] {
            let evset = event.event_set();
            match event.data() {
                ID_LISTENER => self.accept_host_clients(),
                ID_TIMER => self.sweep_expired(),
                fd => self.stream_event(fd as RawFd, evset),
            }
        }
    }

    fn accept_host_clients(&mut self) {
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.metrics.inc(&self.metrics.muxer_event_fails);
                    tracing::warn!(%e, "vsock: accepting a host connection failed");
                    return;
                }
            };
            if self.conns.len() + self.local_streams.len() >= MAX_CONNECTIONS {
                tracing::warn!("vsock: connection limit reached; refusing new host connection");
                continue;
            }
            let fd = stream.as_raw_fd();
            if stream.set_nonblocking(true).is_err()
                || self
                    .epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, fd as u64),
                    )
                    .is_err()
            {
                self.metrics.inc(&self.metrics.muxer_event_fails);
                continue;
            }
            self.local_streams.insert(
                fd,
                LocalStream {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                },
            );
        }
    }

    fn stream_event(&mut self, fd: RawFd, evset: EventSet) {
        if self.local_streams.contains_key(&fd) {
            return self.read_connect_line(fd);
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            self.metrics.inc(&self.metrics.conn_event_fails);
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        };
        let metrics = self.metrics.clone();
        self.mutate(key, |conn| {
            if evset.intersects(
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
            ) {
                conn.readable();
            }
            if evset.contains(EventSet::OUT) {
                conn.flush(&metrics);
            }
        });
    }

    /// Reads a host client's `CONNECT <port>\n` one byte at a time, so nothing it sends after
    /// the line is consumed here.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(local) = self.local_streams.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match local.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) => {
                    local.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break Ok(());
                    }
                    if local.line.len() >= MAX_CONNECT_LINE {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(local) = self.local_streams.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let port = done.ok().and_then(|()| parse_connect(&local.line));
        let Some(peer_port) = port else {
            tracing::debug!("vsock: invalid host connect request; closing");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local_port = self.allocate_local_port();
        let key = Key {
            local_port,
            peer_port,
        };
        self.add_conn(key, Conn::local_init(local.stream, local_port, peer_port));
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            self.local_port_last = ((self.local_port_last + 1) & !(1 << 31)) | (1 << 30);
            if self.local_ports.insert(self.local_port_last) {
                return self.local_port_last;
            }
        }
    }

    fn add_conn(&mut self, key: Key, conn: Conn) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.metrics.inc(&self.metrics.conns_added);
        self.mutate(key, |_| {});
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            if conn.watched.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.by_fd.remove(&fd);
            self.metrics.inc(&self.metrics.conns_removed);
        }
        self.local_ports.remove(&key.local_port);
    }

    /// Runs `f` on the connection, then brings its RX scheduling, epoll interest and kill
    /// timer up to date.
    fn mutate(&mut self, key: Key, f: impl FnOnce(&mut Conn)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let was_killed = conn.state == State::Killed;
        f(conn);
        if conn.state == State::Killed && !was_killed {
            self.metrics.inc(&self.metrics.conns_killed);
        }
        if conn.has_pending() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(key);
        }
        let want = conn.interest();
        let fd = conn.stream.as_raw_fd();
        // A stream with nothing to watch leaves the epoll set: a hung-up socket would
        // otherwise report forever, even with an empty event mask.
        let op = match (conn.watched, want.is_empty()) {
            (None, true) => None,
            (None, false) => Some(ControlOperation::Add),
            (Some(_), true) => Some(ControlOperation::Delete),
            (Some(old), false) if old != want => Some(ControlOperation::Modify),
            (Some(_), false) => None,
        };
        if let Some(op) = op {
            match self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64)) {
                Ok(()) => conn.watched = (!want.is_empty()).then_some(want),
                Err(e) => {
                    self.metrics.inc(&self.metrics.conn_event_fails);
                    tracing::warn!(%e, "vsock: cannot watch a connection");
                }
            }
        }
        if conn.expiry.is_some() && !self.timer_armed {
            self.timer_armed = self
                .timer
                .reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL))
                .is_ok();
        }
    }

    fn sweep_expired(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expiry.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.mutate(key, Conn::kill);
        }
        if !self.conns.values().any(|c| c.expiry.is_some()) {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    fn enqueue_reset(&mut self, local_port: u32, peer_port: u32) {
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(Key {
                local_port,
                peer_port,
            });
        }
    }

    /// A packet from the guest (its TX queue).
    pub fn send_pkt(&mut self, pkt: &Pkt<'_>) {
        self.metrics.inc(&self.metrics.tx_packets_count);
        if pkt.type_() != TYPE_STREAM {
            return self.enqueue_reset(pkt.dst_port(), pkt.src_port());
        }
        if pkt.dst_cid() != HOST_CID {
            tracing::debug!(
                dst_cid = pkt.dst_cid(),
                "vsock: dropping a guest packet for an unknown CID"
            );
            return;
        }
        let key = Key {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        if !self.conns.contains_key(&key) {
            match pkt.op() {
                OP_REQUEST => self.connect_to_host(key, pkt),
                // An RST for nothing needs no answer (answering would ping-pong).
                OP_RST => {}
                _ => self.enqueue_reset(key.local_port, key.peer_port),
            }
            return;
        }
        if pkt.op() == OP_RST {
            return self.remove_conn(key);
        }
        let metrics = self.metrics.clone();
        self.mutate(key, |conn| conn.send_pkt(pkt, &metrics));
    }

    /// A guest connects to the host's port P: squib connects to `<uds_path>_P`.
    fn connect_to_host(&mut self, key: Key, pkt: &Pkt<'_>) {
        if self.conns.len() + self.local_streams.len() >= MAX_CONNECTIONS {
            return self.enqueue_reset(key.local_port, key.peer_port);
        }
        let path = format!("{}_{}", self.uds_path, key.local_port);
        match connect_nonblocking(&path) {
            Ok(stream) => self.add_conn(
                key,
                Conn::peer_init(
                    stream,
                    key.local_port,
                    key.peer_port,
                    pkt.buf_alloc(),
                    pkt.fwd_cnt(),
                ),
            ),
            Err(e) => {
                tracing::debug!(%path, %e, "vsock: no host listener for a guest connection");
                self.enqueue_reset(key.local_port, key.peer_port);
            }
        }
    }

    /// Fills a guest RX buffer; false when nothing is pending (or nothing could be produced).
    pub fn recv_pkt(&mut self, pkt: &mut Pkt<'_>) -> bool {
        if let Some(key) = self.resets.pop_front() {
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(self.guest_cid)
                .set_src_port(key.local_port)
                .set_dst_port(key.peer_port)
                .set_type(TYPE_STREAM)
                .set_op(OP_RST)
                .set_len(0)
                .set_flags(0)
                .set_buf_alloc(0)
                .set_fwd_cnt(0);
            self.metrics.inc(&self.metrics.rx_packets_count);
            return true;
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let produced = conn.recv_pkt(pkt, self.guest_cid, &self.metrics);
            match produced {
                Produced::Packet { op } => {
                    self.metrics.inc(&self.metrics.rx_packets_count);
                    if op == OP_RST {
                        self.remove_conn(key);
                    } else {
                        self.mutate(key, |_| {});
                    }
                    return true;
                }
                Produced::Nothing => self.mutate(key, |_| {}),
            }
        }
        false
    }
}

/// Upstream's parsing: the first word is `connect` in any case, the second the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("connect") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Connects to a Unix stream socket without ever blocking: a listener whose backlog is full
/// is a refusal (the guest gets a reset), never a stalled device.
fn connect_nonblocking(path: &str) -> std::io::Result<UnixStream> {
    let bytes = path.as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_as_upstream() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"connect 1024\n"), Some(1024));
        assert_eq!(parse_connect(b"Connect   7 trailing\n"), Some(7));
        assert_eq!(parse_connect(b"CONNECT\n"), None);
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
        assert_eq!(parse_connect(b"LISTEN 5\n"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296\n"), None);
    }

    #[test]
    fn nonblocking_connect_reports_a_missing_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_5");
        let err = connect_nonblocking(path.to_str().unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let _listener = UnixListener::bind(&path).unwrap();
        let stream = connect_nonblocking(path.to_str().unwrap()).unwrap();
        assert!(stream.peer_addr().is_ok());
    }
}
