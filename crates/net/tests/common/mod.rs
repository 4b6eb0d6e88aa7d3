//! Helpers shared by the integration tests: prerequisite checks, a network namespace with a TAP
//! that is removed in every case, and hand-built Ethernet/IPv4/UDP frames.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// Skips (returns false) when a prerequisite is missing, except under `CI=true` where a missing
/// prerequisite fails the test: CI must never pass by not testing.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI: {what}");
    }
    eprintln!("skipping: {what} is missing");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn have_command(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("-V")
        .output()
        .map(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
        .unwrap_or(false)
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace holding one TAP, deleted (TAP included) on drop, panics included.
pub struct NetnsTap {
    pub ns: String,
    pub tap: String,
}

impl NetnsTap {
    /// Creates `squibtest-⟨pid⟩-⟨tag⟩` with a TAP `sqt⟨tag⟩` that has `addr/24`, still down: call
    /// [`NetnsTap::up`] once the TAP is open.
    pub fn create(tag: &str, addr: Ipv4Addr) -> Self {
        let ns = format!("squibtest-{}-{tag}", std::process::id());
        let tap = format!("sqt{tag}");
        // Leftovers of an earlier crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(&["ip", "netns", "add", &ns]);
        // From here on the guard owns the namespace, so a failing step still cleans up.
        let guard = Self { ns, tap };
        let ns = guard.ns.as_str();
        let tap = guard.tap.as_str();
        run(&["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            tap,
        ]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations) mixed into the frames under test.
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{tap}.disable_ipv6=1"))
            .output();
        guard
    }

    /// Sets the TAP up. Done after a reader has attached: the kernel then gives the device its
    /// queueing discipline at once, whereas bringing a carrier-less TAP up defers that to the
    /// link-watch worker, and frames sent before it runs are dropped.
    pub fn up(&self) {
        run(&["ip", "-n", &self.ns, "link", "set", &self.tap, "up"]);
    }

    /// A permanent neighbour entry so the kernel sends to `ip` without asking ARP.
    pub fn add_neighbour(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        run(&[
            "ip",
            "-n",
            &self.ns,
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac,
            "dev",
            &self.tap,
            "nud",
            "permanent",
        ]);
    }

    /// Runs `f` on a thread that has entered the namespace: descriptors it opens (the TAP,
    /// sockets) belong to the namespace for good, whichever thread uses them later.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/var/run/netns").join(&self.ns);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: `ns` is an open namespace descriptor; setns only affects this thread,
            // which ends right after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp_socket(&self, addr: Ipv4Addr, port: u16) -> UdpSocket {
        self.within(move || UdpSocket::bind((addr, port)).expect("bind udp in netns"))
    }
}

impl Drop for NetnsTap {
    fn drop(&mut self) {
        // Deleting the namespace removes the TAP inside it.
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.tap])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0, which IPv4 allows).
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The UDP destination port and payload of an IPv4/UDP frame, if it is one.
pub fn parse_udp(frame: &[u8]) -> Option<(u16, &[u8])> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..)?;
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    Some((dport, udp.get(8..len)?))
}
