//! One vsock stream connection: a guest AF_VSOCK socket joined to a host Unix stream, with
//! the protocol's credit-based flow control both ways.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use virtio_vsock::packet::VsockPacket;
use vm_memory::VolatileMemoryError;
use vm_memory::io::{ReadVolatile, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use crate::metrics::VsockMetrics;
use crate::proto::*;

/// Where a connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: the request is (to be) sent to the guest, no answer yet.
    LocalInit,
    /// Guest-initiated: connected to the host listener, the response is (to be) sent.
    PeerInit,
    Established,
    /// Being reset: the RST to the guest is pending; the host stream is already shut.
    Killed,
}

/// What the connection has to tell the guest, in the order it says it.
pub(crate) mod pending {
    pub const RST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const REQUEST: u8 = 4;
    /// The host stream ended: tell the guest nothing more will come (half-close).
    pub const SHUTDOWN: u8 = 8;
    /// The host stream is readable.
    pub const RW: u8 = 16;
    pub const CREDIT_UPDATE: u8 = 32;
}

pub(crate) struct Conn {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    /// `SHUTDOWN_RCV`/`SHUTDOWN_SEND` flags the guest has sent, ORed.
    peer_shutdown: u32,
    /// The host stream reached EOF (and the guest is or will be told).
    local_eof: bool,
    /// The host stream's write side is shut (the guest will send nothing more).
    write_shut: bool,
    /// Guest data the host peer has not taken yet; never above `CONN_TX_BUF_SIZE`, the credit
    /// the guest was given.
    tx_buf: VecDeque<u8>,
    /// Bytes written to the host stream so far.
    fwd_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest so far.
    rx_cnt: Wrapping<u32>,
    last_fwd_cnt_to_peer: Wrapping<u32>,
    pub pending: u8,
    /// In the muxer's RX round-robin.
    pub queued: bool,
    pub expiry: Option<Instant>,
    /// The events the muxer's epoll watches on the stream (`None`: not registered).
    pub watched: Option<EventSet>,
}

/// What one RX packet produced for the guest was.
pub(crate) enum Produced {
    Packet { op: u16 },
    Nothing,
}

type Pkt<'a> = VsockPacket<'a, ()>;

impl Conn {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State, pending: u8) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            peer_shutdown: 0,
            local_eof: false,
            write_shut: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            pending,
            queued: false,
            expiry: None,
            watched: None,
        }
    }

    /// A host client's `CONNECT <port>`: the request to the guest is pending.
    pub fn local_init(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        Self::new(
            stream,
            local_port,
            peer_port,
            State::LocalInit,
            pending::REQUEST,
        )
    }

    /// A guest request squib connected to the host listener for: the response is pending.
    pub fn peer_init(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer_buf_alloc: u32,
        peer_fwd_cnt: u32,
    ) -> Self {
        let mut conn = Self::new(
            stream,
            local_port,
            peer_port,
            State::PeerInit,
            pending::RESPONSE,
        );
        conn.peer_buf_alloc = peer_buf_alloc;
        conn.peer_fwd_cnt = Wrapping(peer_fwd_cnt);
        conn
    }

    /// Resets the connection: the host stream is shut now (its client sees the end at once),
    /// the guest gets an RST with the next RX buffer.
    pub fn kill(&mut self) {
        self.state = State::Killed;
        self.pending = pending::RST;
        self.tx_buf = VecDeque::new();
        self.expiry = None;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn peer_avail_credit(&self) -> u32 {
        (Wrapping(self.peer_buf_alloc) - (self.rx_cnt - self.peer_fwd_cnt)).0
    }

    fn peer_needs_credit_update(&self) -> bool {
        let seen_free = Wrapping(CONN_TX_BUF_SIZE) - (self.fwd_cnt - self.last_fwd_cnt_to_peer);
        seen_free < Wrapping(CONN_CREDIT_UPDATE_THRESHOLD)
    }

    /// The events to watch on the host stream now.
    pub fn interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.state == State::Killed {
            return events;
        }
        if !self.tx_buf.is_empty() {
            events |= EventSet::OUT;
        }
        let readable_state = self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.local_eof;
        if readable_state && self.pending & pending::RW == 0 && self.peer_avail_credit() > 0 {
            events |= EventSet::IN;
        }
        events
    }

    fn init_header(&self, pkt: &mut Pkt<'_>, guest_cid: u64) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(guest_cid)
            .set_src_port(self.local_port)
            .set_dst_port(self.peer_port)
            .set_type(TYPE_STREAM)
            .set_buf_alloc(CONN_TX_BUF_SIZE)
            .set_fwd_cnt(self.fwd_cnt.0)
            .set_flags(0)
            .set_len(0);
    }

    /// Fills `pkt` (a guest RX buffer) with what the connection has to say next.
    pub fn recv_pkt(
        &mut self,
        pkt: &mut Pkt<'_>,
        guest_cid: u64,
        metrics: &VsockMetrics,
    ) -> Produced {
        self.init_header(pkt, guest_cid);
        if self.take(pending::RST) {
            pkt.set_op(OP_RST);
            return Produced::Packet { op: OP_RST };
        }
        if self.take(pending::RESPONSE) {
            self.state = State::Established;
            pkt.set_op(OP_RESPONSE);
            return Produced::Packet { op: OP_RESPONSE };
        }
        if self.take(pending::REQUEST) {
            self.expiry = Some(Instant::now() + CONN_REQUEST_TIMEOUT);
            pkt.set_op(OP_REQUEST);
            return Produced::Packet { op: OP_REQUEST };
        }
        if self.take(pending::SHUTDOWN) {
            pkt.set_op(OP_SHUTDOWN).set_flags(SHUTDOWN_SEND);
            self.last_fwd_cnt_to_peer = self.fwd_cnt;
            return Produced::Packet { op: OP_SHUTDOWN };
        }
        if self.pending & pending::RW != 0
            && let Some(produced) = self.read_stream(pkt, metrics)
        {
            return produced;
        }
        if self.pending & pending::CREDIT_UPDATE != 0 && self.pending & !pending::CREDIT_UPDATE == 0
        {
            self.pending = 0;
            pkt.set_op(OP_CREDIT_UPDATE);
            self.last_fwd_cnt_to_peer = self.fwd_cnt;
            return Produced::Packet {
                op: OP_CREDIT_UPDATE,
            };
        }
        Produced::Nothing
    }

    fn take(&mut self, flag: u8) -> bool {
        let had = self.pending & flag != 0;
        self.pending &= !flag;
        had
    }

    /// Moves host-stream bytes straight into the guest's buffer, within the guest's credit.
    fn read_stream(&mut self, pkt: &mut Pkt<'_>, metrics: &VsockMetrics) -> Option<Produced> {
        if self.state != State::Established
            || self.peer_shutdown & SHUTDOWN_RCV != 0
            || self.local_eof
        {
            self.pending &= !pending::RW;
            return None;
        }
        let credit = self.peer_avail_credit();
        if credit == 0 {
            // Ask for fresh credit information; reading resumes when it arrives.
            self.pending &= !pending::RW;
            pkt.set_op(OP_CREDIT_REQUEST);
            self.last_fwd_cnt_to_peer = self.fwd_cnt;
            return Some(Produced::Packet {
                op: OP_CREDIT_REQUEST,
            });
        }
        let data = pkt.data_slice()?;
        let max = (data.len() as u64).min(credit as u64) as usize;
        let result = data
            .subslice(0, max)
            .and_then(|mut dst| self.stream.read_volatile(&mut dst));
        match result {
            Ok(0) => {
                // The host client is done sending: the guest reads EOF and may still send.
                self.pending &= !pending::RW;
                self.local_eof = true;
                if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
                    self.kill();
                    pkt.set_op(OP_RST);
                    self.pending = 0;
                    return Some(Produced::Packet { op: OP_RST });
                }
                pkt.set_op(OP_SHUTDOWN).set_flags(SHUTDOWN_SEND);
                self.last_fwd_cnt_to_peer = self.fwd_cnt;
                Some(Produced::Packet { op: OP_SHUTDOWN })
            }
            Ok(n) => {
                pkt.set_op(OP_RW).set_len(n as u32);
                self.rx_cnt += Wrapping(n as u32);
                self.last_fwd_cnt_to_peer = self.fwd_cnt;
                metrics.add(&metrics.rx_bytes_count, n as u64);
                Some(Produced::Packet { op: OP_RW })
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.pending &= !pending::RW;
                None
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => None,
            Err(e) => {
                metrics.inc(&metrics.rx_read_fails);
                tracing::debug!(local = self.local_port, peer = self.peer_port, %e, "vsock: host stream read failed");
                self.kill();
                self.pending = 0;
                pkt.set_op(OP_RST);
                Some(Produced::Packet { op: OP_RST })
            }
        }
    }

    /// Takes a guest packet addressed to this connection.
    pub fn send_pkt(&mut self, pkt: &Pkt<'_>, metrics: &VsockMetrics) {
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());
        match pkt.op() {
            OP_RW
                if self.state == State::Established && self.peer_shutdown & SHUTDOWN_SEND == 0 =>
            {
                self.take_data(pkt, metrics);
                if self.state != State::Killed && self.peer_needs_credit_update() {
                    self.pending |= pending::CREDIT_UPDATE;
                }
            }
            OP_RESPONSE if self.state == State::LocalInit => {
                self.expiry = None;
                self.state = State::Established;
                let ack = format!("OK {}\n", self.local_port);
                match self.stream.write(ack.as_bytes()) {
                    Ok(n) if n == ack.len() => {}
                    _ => self.kill(),
                }
            }
            OP_SHUTDOWN if matches!(self.state, State::Established | State::PeerInit) => {
                self.peer_shutdown |= pkt.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_peer_shutdown();
            }
            OP_CREDIT_REQUEST if self.state != State::Killed => {
                self.pending |= pending::CREDIT_UPDATE;
            }
            _ => {}
        }
    }

    fn after_peer_shutdown(&mut self) {
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if self.peer_shutdown & both == both
            || (self.peer_shutdown & SHUTDOWN_SEND != 0 && self.local_eof)
        {
            if self.tx_buf.is_empty() {
                self.kill();
            } else if self.expiry.is_none() {
                self.expiry = Some(Instant::now() + CONN_SHUTDOWN_TIMEOUT);
            }
        } else if self.peer_shutdown & SHUTDOWN_SEND != 0
            && self.tx_buf.is_empty()
            && !self.write_shut
        {
            // The guest sends no more: the host client reads EOF and may still answer.
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    fn take_data(&mut self, pkt: &Pkt<'_>, metrics: &VsockMetrics) {
        let len = pkt.len() as usize;
        let Some(data) = pkt.data_slice() else {
            return;
        };
        let len = len.min(data.len());
        if len == 0 {
            return;
        }
        if self.tx_buf.len() + len > CONN_TX_BUF_SIZE as usize {
            // The guest sent beyond the credit it was given.
            tracing::debug!(
                local = self.local_port,
                peer = self.peer_port,
                "vsock: guest overran its credit"
            );
            self.kill();
            return;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            let result = data
                .subslice(0, len)
                .and_then(|src| self.stream.write_volatile(&src));
            match result {
                Ok(n) => written = n,
                Err(VolatileMemoryError::IOError(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => {
                    metrics.inc(&metrics.tx_write_fails);
                    tracing::debug!(local = self.local_port, peer = self.peer_port, %e, "vsock: host stream write failed");
                    self.kill();
                    return;
                }
            }
            self.fwd_cnt += Wrapping(written as u32);
            metrics.add(&metrics.tx_bytes_count, written as u64);
        }
        if written < len {
            let rest = len - written;
            let mut chunk = vec![0u8; rest];
            if let Ok(src) = data.subslice(written, rest) {
                src.copy_to(&mut chunk[..]);
            }
            self.tx_buf.extend(chunk);
        }
    }

    /// The host stream can take more: flush the buffered guest data.
    pub fn flush(&mut self, metrics: &VsockMetrics) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                    metrics.add(&metrics.tx_bytes_count, n as u64);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    metrics.inc(&metrics.tx_flush_fails);
                    tracing::debug!(local = self.local_port, peer = self.peer_port, %e, "vsock: host stream flush failed");
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() {
            self.tx_buf = VecDeque::new();
            if self.peer_shutdown != 0 {
                self.after_peer_shutdown();
            }
        }
        if self.state != State::Killed && self.peer_needs_credit_update() {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// The host stream is readable (or hung up: the read says which).
    pub fn readable(&mut self) {
        if self.state == State::Established {
            self.pending |= pending::RW;
        }
    }

    /// The guest got new credit information: reading may resume.
    pub fn has_pending(&self) -> bool {
        self.pending != 0
    }
}
