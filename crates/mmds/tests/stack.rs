//! The MMDS stack driven with raw Ethernet frames: ARP, a bare SYN, and whole HTTP exchanges
//! from a second smoltcp interface playing the guest, all on a scripted clock.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};
use squib_mmds::{
    DEFAULT_IPV4, MMDS_MAC, Mmds, MmdsConfig, MmdsStack, MmdsVersion, claims_frame, new_data_handle,
};

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x02];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

fn mmds(version: MmdsVersion) -> Arc<Mmds> {
    let data = new_data_handle();
    data.store(Arc::new(
        json!({"latest": {"meta-data": {"ami-id": "ami-123"}}}),
    ));
    Arc::new(Mmds::new(
        data,
        MmdsConfig {
            version,
            ..MmdsConfig::default()
        },
        "vm",
    ))
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

// A TCP segment from the guest to `dst:port`, through a gateway MAC rather than the MMDS's.
fn tcp_syn(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress([0x02, 0, 0, 0, 0, 0x99]),
        ethertype: EthernetProtocol::Ipv4,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    buf
}

#[test]
fn classifier_takes_only_arp_and_port_80_for_the_mmds_address() {
    assert!(claims_frame(&arp_request(DEFAULT_IPV4), DEFAULT_IPV4));
    assert!(!claims_frame(&arp_request(GUEST_IP), DEFAULT_IPV4));
    assert!(claims_frame(&tcp_syn(DEFAULT_IPV4, 80), DEFAULT_IPV4));
    assert!(!claims_frame(&tcp_syn(DEFAULT_IPV4, 81), DEFAULT_IPV4));
    assert!(!claims_frame(&tcp_syn(GUEST_IP, 80), DEFAULT_IPV4));
    let custom = Ipv4Addr::new(169, 254, 7, 7);
    assert!(claims_frame(&tcp_syn(custom, 80), custom));
    // UDP to the MMDS's port 80, even a guest's large USO datagram, goes on to the TAP (the
    // device refuses a claimed frame whose header asks for UDP segmentation).
    let mut udp = tcp_syn(DEFAULT_IPV4, 80);
    udp[23] = 17;
    udp.resize(14 + 20 + 8 + 3 * 1400, 0xab);
    assert!(!claims_frame(&udp, DEFAULT_IPV4));
    for junk in [
        &[][..],
        &[0u8; 13],
        &[0u8; 60],
        &tcp_syn(DEFAULT_IPV4, 80)[..36],
    ] {
        assert!(!claims_frame(junk, DEFAULT_IPV4));
    }
}

#[test]
fn arp_request_gets_the_mmds_mac() {
    let m = mmds(MmdsVersion::V1);
    let t0 = Instant::now();
    let mut stack = MmdsStack::new(m, DEFAULT_IPV4, t0).unwrap();
    stack.handle_frame(&arp_request(DEFAULT_IPV4), t0);
    let out = stack.take_output();
    assert_eq!(out.len(), 1);
    let frame = EthernetFrame::new_checked(&out[0]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress(GUEST_MAC));
    assert_eq!(frame.src_addr(), EthernetAddress(MMDS_MAC));
    let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
    assert_eq!(
        arp,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(MMDS_MAC),
            source_protocol_addr: DEFAULT_IPV4,
            target_hardware_addr: EthernetAddress(GUEST_MAC),
            target_protocol_addr: GUEST_IP,
        }
    );
}

#[test]
fn syn_to_port_80_gets_a_syn_ack_without_prior_arp() {
    let m = mmds(MmdsVersion::V1);
    let t0 = Instant::now();
    let mut stack = MmdsStack::new(m.clone(), DEFAULT_IPV4, t0).unwrap();
    stack.handle_frame(&tcp_syn(DEFAULT_IPV4, 80), t0);
    let out = stack.take_output();
    assert_eq!(out.len(), 1, "exactly the SYN-ACK, no ARP request first");
    let frame = EthernetFrame::new_checked(&out[0]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress(GUEST_MAC));
    assert_eq!(frame.src_addr(), EthernetAddress(MMDS_MAC));
    let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
    assert_eq!(ip.src_addr(), DEFAULT_IPV4);
    assert_eq!(ip.dst_addr(), GUEST_IP);
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.syn() && tcp.ack());
    assert_eq!(tcp.src_port(), 80);
    assert_eq!(tcp.dst_port(), 40000);
    assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
    assert!(tcp.verify_checksum(&IpAddress::Ipv4(DEFAULT_IPV4), &IpAddress::Ipv4(GUEST_IP)));
    assert_eq!(m.metrics().rx_accepted.load(Ordering::Relaxed), 1);
}

// ---- a smoltcp "guest" talking to the stack ----

#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

struct Guest {
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    stack: MmdsStack,
    t0: Instant,
    now: Instant,
    to_tap: usize,
}

impl Guest {
    fn new(stack: MmdsStack, t0: Instant) -> Self {
        let mut wire = Wire::default();
        let iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(iface_cfg, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 16)).unwrap();
        });
        Self {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            stack,
            t0,
            now: t0,
            to_tap: 0,
        }
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        sock.connect(
            self.iface.context(),
            (IpAddress::Ipv4(DEFAULT_IPV4), 80),
            port,
        )
        .unwrap();
        self.sockets.add(sock)
    }

    // One round trip of the wire: guest → relay classifier → stack → guest.
    fn pump(&mut self) {
        self.now += Duration::from_millis(1);
        let ts = smoltcp::time::Instant::from_micros((self.now - self.t0).as_micros() as i64);
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        for frame in std::mem::take(&mut self.wire.tx) {
            if claims_frame(&frame, DEFAULT_IPV4) {
                self.stack.handle_frame(&frame, self.now);
            } else {
                self.to_tap += 1;
            }
        }
        self.stack.poll(self.now);
        self.wire.rx.extend(self.stack.take_output());
    }

    // Sends `request` and reads until `answers` complete responses have arrived.
    fn exchange(&mut self, handle: SocketHandle, request: &str, answers: usize) -> String {
        let mut sent = false;
        let mut got = Vec::new();
        for _ in 0..2000 {
            self.pump();
            let sock = self.sockets.get_mut::<tcp::Socket>(handle);
            if !sent && sock.can_send() {
                sock.send_slice(request.as_bytes()).unwrap();
                sent = true;
            }
            while sock.can_recv() {
                sock.recv(|d| {
                    got.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            if complete_responses(&text) >= answers {
                return text;
            }
        }
        panic!(
            "no answer to {request:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

fn complete_responses(mut text: &str) -> usize {
    let mut n = 0;
    while let Some(head_end) = text.find("\r\n\r\n") {
        let len: usize = text[..head_end]
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let end = head_end + 4 + len;
        if text.len() < end {
            break;
        }
        n += 1;
        text = &text[end..];
    }
    n
}

#[test]
fn whole_v1_get_over_tcp() {
    let m = mmds(MmdsVersion::V1);
    let t0 = Instant::now();
    let stack = MmdsStack::new(m.clone(), DEFAULT_IPV4, t0).unwrap();
    let mut g = Guest::new(stack, t0);
    let h = g.connect(49152);
    let resp = g.exchange(h, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", 1);
    assert_eq!(
        resp,
        "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nami-123"
    );
    // Keep-alive with pipelining: two requests in one segment, two answers in order.
    let resp = g.exchange(
        h,
        "GET /latest HTTP/1.1\r\n\r\nGET /nope HTTP/1.0\r\n\r\n",
        2,
    );
    let first = resp.find("\r\n\r\nmeta-data/").expect("first answer");
    assert!(first < resp.find("HTTP/1.0 404 ").expect("second answer"));
    assert_eq!(g.to_tap, 0, "nothing for the MMDS leaks to the TAP");
    assert_eq!(m.metrics().connections_created.load(Ordering::Relaxed), 1);
    assert!(m.metrics().tx_frames.load(Ordering::Relaxed) > 0);
}

#[test]
fn v2_token_then_get_and_oversized_request_resets() {
    let m = mmds(MmdsVersion::V2);
    let t0 = Instant::now();
    let stack = MmdsStack::new(m.clone(), DEFAULT_IPV4, t0).unwrap();
    let mut g = Guest::new(stack, t0);
    let h = g.connect(49153);
    let resp = g.exchange(
        h,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        1,
    );
    assert!(resp.contains("\r\nX-metadata-token-ttl-seconds: 60\r\n"));
    let token = resp.rsplit("\r\n\r\n").next().unwrap().to_owned();
    assert_eq!(token.len(), 48);
    let resp = g.exchange(
        h,
        &format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
        1,
    );
    assert!(resp.ends_with("\r\n\r\nami-123"));
    assert!(resp.starts_with("HTTP/1.1 200 "));

    // A second connection, concurrently: an endless head is cut off with a reset.
    let h2 = g.connect(49154);
    let junk = format!("GET / HTTP/1.1\r\nX-a: {}\r\n", "a".repeat(3000));
    let mut sent = false;
    let mut reset = false;
    for _ in 0..2000 {
        g.pump();
        let sock = g.sockets.get_mut::<tcp::Socket>(h2);
        if !sent && sock.can_send() {
            sock.send_slice(junk.as_bytes()).unwrap();
            sent = true;
        }
        if sent && sock.state() == tcp::State::Closed {
            reset = true;
            break;
        }
    }
    assert!(reset, "oversized request did not reset the connection");
    assert_eq!(m.metrics().rx_accepted_err.load(Ordering::Relaxed), 1);
    // The first connection still works.
    let resp = g.exchange(
        h,
        &format!("GET /latest/meta-data/ HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
        1,
    );
    assert!(resp.starts_with("HTTP/1.1 200 "));
}

fn mmds_with(value: serde_json::Value) -> Arc<Mmds> {
    let data = new_data_handle();
    data.store(Arc::new(value));
    Arc::new(Mmds::new(data, MmdsConfig::default(), "vm"))
}

impl Guest {
    // A connection whose receive buffer is `rx` bytes: with the guest never reading, its window
    // closes once that much has arrived.
    fn connect_with_window(&mut self, port: u16, rx: usize) -> SocketHandle {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        sock.connect(
            self.iface.context(),
            (IpAddress::Ipv4(DEFAULT_IPV4), 80),
            port,
        )
        .unwrap();
        self.sockets.add(sock)
    }
}

#[test]
fn a_guest_that_stops_reading_cannot_grow_the_stacks_memory() {
    // 21 bytes of request, 8 KiB of answer: ~390× amplification per pipelined request.
    let big = "x".repeat(8192);
    let m = mmds_with(json!({"big": big}));
    let t0 = Instant::now();
    let stack = MmdsStack::new(m, DEFAULT_IPV4, t0).unwrap();
    let mut g = Guest::new(stack, t0);
    let h = g.connect_with_window(49160, 1024);
    const REQUESTS: usize = 120;
    let request = "GET /big HTTP/1.1\r\n\r\n".repeat(REQUESTS);
    let mut sent = 0;
    let mut peak = 0;
    for _ in 0..3000 {
        g.pump();
        let sock = g.sockets.get_mut::<tcp::Socket>(h);
        if sent < request.len() && sock.can_send() {
            sent += sock.send_slice(&request.as_bytes()[sent..]).unwrap();
        }
        peak = peak.max(g.stack.held_bytes());
    }
    assert_eq!(
        sent,
        request.len(),
        "the guest could queue all its requests"
    );
    // One request head and one answer at most, plus a few frames: nowhere near 120 × 8 KiB.
    assert!(peak < 32 * 1024, "the stack held {peak} bytes");
    assert_eq!(g.stack.open_connections(), 1);

    // Once the guest reads again, every request gets its answer, in order.
    let mut got = Vec::new();
    for _ in 0..20_000 {
        g.pump();
        let sock = g.sockets.get_mut::<tcp::Socket>(h);
        while sock.can_recv() {
            sock.recv(|d| {
                got.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        peak = peak.max(g.stack.held_bytes());
        if complete_responses(&String::from_utf8_lossy(&got)) == REQUESTS {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(complete_responses(&text), REQUESTS);
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), REQUESTS);
    assert!(peak < 32 * 1024, "the stack held {peak} bytes");
}

#[test]
fn idle_connections_are_reset_so_the_guest_gets_its_slots_back() {
    use squib_mmds::stack::{IDLE_TIMEOUT, MAX_CONNECTIONS};
    let m = mmds(MmdsVersion::V1);
    let t0 = Instant::now();
    let stack = MmdsStack::new(m.clone(), DEFAULT_IPV4, t0).unwrap();
    let mut g = Guest::new(stack, t0);
    // Every slot taken by a connection that never sends a byte, one with half a request.
    let handles: Vec<SocketHandle> = (0..MAX_CONNECTIONS as u16)
        .map(|i| g.connect(50000 + i))
        .collect();
    for _ in 0..50 {
        g.pump();
    }
    g.sockets
        .get_mut::<tcp::Socket>(handles[0])
        .send_slice(b"GET /latest HTTP/1.1\r\n")
        .unwrap();
    for _ in 0..50 {
        g.pump();
    }
    assert_eq!(g.stack.open_connections(), MAX_CONNECTIONS);
    for &h in &handles {
        assert_eq!(
            g.sockets.get::<tcp::Socket>(h).state(),
            tcp::State::Established
        );
    }
    // The stack wants to wake up no later than the first idle deadline.
    let delay = g.stack.poll_delay(g.now).expect("a pending idle deadline");
    assert!(delay <= IDLE_TIMEOUT, "{delay:?}");

    // Just short of the time-out nothing happens; past it every idle connection is reset.
    g.now += IDLE_TIMEOUT - Duration::from_secs(1);
    g.pump();
    assert_eq!(g.stack.open_connections(), MAX_CONNECTIONS);
    g.now += Duration::from_secs(2);
    for _ in 0..20 {
        g.pump();
    }
    assert_eq!(g.stack.open_connections(), 0);
    for &h in &handles {
        assert_eq!(g.sockets.get::<tcp::Socket>(h).state(), tcp::State::Closed);
    }
    assert_eq!(
        m.metrics().connections_destroyed.load(Ordering::Relaxed),
        MAX_CONNECTIONS as u64
    );
    // A fresh connection is served.
    let h = g.connect(51000);
    let resp = g.exchange(h, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", 1);
    assert!(resp.ends_with("\r\n\r\nami-123"), "{resp}");
}

#[test]
fn a_frame_flood_is_dropped_beyond_a_bounded_queue() {
    let m = mmds(MmdsVersion::V1);
    let t0 = Instant::now();
    let mut stack = MmdsStack::new(m, DEFAULT_IPV4, t0).unwrap();
    for i in 0..10_000u16 {
        stack.handle_frame(
            &tcp_syn(DEFAULT_IPV4, 80),
            t0 + Duration::from_micros(i.into()),
        );
        stack.take_output();
        assert!(stack.held_bytes() < 256 * 1024, "{}", stack.held_bytes());
    }
    assert!(stack.open_connections() <= squib_mmds::stack::MAX_CONNECTIONS);
}
