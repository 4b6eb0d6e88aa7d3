//! The MMDS frame handling: a guest (a smoltcp interface driven by the input) opens
//! connections, sends request bytes, reads or stops reading, closes, lets time pass, and injects
//! raw frames of its own making; the stack must never panic and must keep what it holds for
//! the guest bounded.
#![no_main]

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use squib_mmds::stack::MAX_CONNECTIONS;
use squib_mmds::{
    DEFAULT_IPV4, Mmds, MmdsConfig, MmdsStack, MmdsVersion, claims_frame, new_data_handle,
};

const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 0x02];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

static MMDS: LazyLock<Arc<Mmds>> = LazyLock::new(|| {
    let data = new_data_handle();
    data.store(Arc::new(serde_json::json!({
        "latest": {"meta-data": {"ami-id": "ami-1", "big": "x".repeat(20_000)}}
    })));
    Arc::new(Mmds::new(
        data,
        MmdsConfig {
            version: MmdsVersion::V1,
            ..MmdsConfig::default()
        },
        "fuzz",
    ))
});

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

// Bytes the stack may hold: per connection one request head and one response, plus frames.
const BOUND: usize = MAX_CONNECTIONS * (2 * 4096 + 32 * 1024) + 256 * 1024;

fn take(n: usize, input: &mut &[u8]) -> Vec<u8> {
    let n = n.min(input.len());
    let (a, b) = input.split_at(n);
    *input = b;
    a.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut stack = MmdsStack::new(MMDS.clone(), DEFAULT_IPV4, t0).unwrap();
    let mut wire = Wire::default();
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
        &mut wire,
        smoltcp::time::Instant::ZERO,
    );
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 16));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut handles: Vec<SocketHandle> = Vec::new();
    let mut port = 40000u16;
    let mut input = data;
    let mut steps = 0;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        steps += 1;
        if steps > 512 {
            break;
        }
        let arg = take(1, &mut input).first().copied().unwrap_or(0);
        match op % 8 {
            0 if handles.len() < 40 => {
                // A small receive window for odd ports: a guest that reads slowly.
                let rx = if arg & 1 == 1 { 512 } else { 16 * 1024 };
                let mut sock = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; rx]),
                    tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                );
                port = port.wrapping_add(1).max(1024);
                if sock
                    .connect(iface.context(), (IpAddress::Ipv4(DEFAULT_IPV4), 80), port)
                    .is_ok()
                {
                    handles.push(sockets.add(sock));
                }
            }
            1 | 2 if !handles.is_empty() => {
                let h = handles[usize::from(arg) % handles.len()];
                let n = usize::from(take(1, &mut input).first().copied().unwrap_or(0)) * 8;
                let bytes = take(n, &mut input);
                let _ = sockets.get_mut::<tcp::Socket>(h).send_slice(&bytes);
            }
            3 if !handles.is_empty() => {
                let h = handles[usize::from(arg) % handles.len()];
                let sock = sockets.get_mut::<tcp::Socket>(h);
                while sock.can_recv() {
                    let _ = sock.recv(|d| (d.len(), ()));
                }
            }
            4 if !handles.is_empty() => {
                let h = handles[usize::from(arg) % handles.len()];
                let sock = sockets.get_mut::<tcp::Socket>(h);
                if arg & 0x80 != 0 {
                    sock.abort();
                } else {
                    sock.close();
                }
            }
            5 => {
                // A raw frame, addressed to the MMDS or not.
                let n = usize::from(arg) * 6;
                let frame = take(n, &mut input);
                stack.handle_frame(&frame, now);
            }
            6 => now += Duration::from_secs(u64::from(arg)),
            _ => {}
        }
        // One round trip of the wire.
        now += Duration::from_millis(1);
        let ts = smoltcp::time::Instant::from_micros((now - t0).as_micros() as i64);
        iface.poll(ts, &mut wire, &mut sockets);
        for frame in std::mem::take(&mut wire.tx) {
            if claims_frame(&frame, DEFAULT_IPV4) {
                stack.handle_frame(&frame, now);
            }
        }
        stack.poll(now);
        wire.rx.extend(stack.take_output());
        assert!(
            stack.held_bytes() < BOUND,
            "{} bytes held",
            stack.held_bytes()
        );
        assert!(stack.open_connections() <= MAX_CONNECTIONS);
        let _ = stack.poll_delay(now);
    }
});
