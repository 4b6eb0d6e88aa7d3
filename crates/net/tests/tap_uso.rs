//! UDP segmentation offload (USO) through a real TAP, in a network namespace of the test's own:
//! what the kernel does with the frames the device writes for a guest that sends USO
//! (`VIRTIO_NET_F_HOST_USO`), and what it hands the device for a guest that takes it
//! (`VIRTIO_NET_F_GUEST_USO4/6`, `TUN_F_USO4|TUN_F_USO6`). The test guest's kernel (6.1) has no
//! virtio-net USO, so the backend's side is exercised here rather than from a guest.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use squib_net::tap::{Tap, offload, open_tap};
use squib_net::vnet::{self, VnetHdr};

const TAP: &str = "sqbuso0";
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const HOST_PORT: u16 = 5000;
const GUEST_PORT: u16 = 4000;
const MSS: usize = 1000;
const ETH_IP_UDP: usize = 14 + 20 + 8;

/// Root, /dev/net/tun and `ip`; under `CI=true` their absence fails the test.
fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if root && tun && ip {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "prerequisites missing under CI: root {root}, /dev/net/tun {tun}, ip {ip}"
    );
    eprintln!("SKIPPED: needs root, /dev/net/tun and ip");
    false
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// `ip` in the calling thread's namespace (a child inherits it); it must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread in a fresh network namespace (gone with the thread, TAP included).
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag only; CLONE_NEWNET moves this thread alone.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// The TAP, up, addressed `HOST_IP/24`, with the guest as a static neighbour; its descriptor
/// adopted as the device adopts it, with the 12-byte header of a VERSION_1 guest.
fn tap() -> Tap {
    ip(&["link", "set", "lo", "up"]);
    let handle = open_tap(TAP).expect("open the TAP");
    let tap = Tap::from_fd(handle.dup_fd().unwrap().unwrap(), TAP).unwrap();
    // The duplicate keeps the transient TAP once the handle is gone, as in squib.
    drop(handle);
    tap.set_vnet_hdr_size(vnet::HDR_LEN).unwrap();
    let mac = TAP_MAC.map(|b| format!("{b:02x}")).join(":");
    let guest_mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    ip(&["link", "set", "dev", TAP, "address", &mac]);
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ip(&["link", "set", "dev", TAP, "up"]);
    ip(&[
        "neigh",
        "add",
        &GUEST_IP.to_string(),
        "lladdr",
        &guest_mac,
        "dev",
        TAP,
    ]);
    tap
}

fn ones_sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// What a Linux guest with USO hands its device: header + one IPv4/UDP frame of `data`, the
/// UDP checksum left partial (the pseudo-header sum in place).
fn uso_frame(data: &[u8], gso_size: u16) -> Vec<u8> {
    let udp_len = 8 + data.len();
    let mut f = vec![0u8; vnet::HDR_LEN];
    f[0] = vnet::F_NEEDS_CSUM;
    f[1] = vnet::GSO_UDP_L4;
    f[2..4].copy_from_slice(&(ETH_IP_UDP as u16).to_le_bytes());
    f[4..6].copy_from_slice(&gso_size.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&6u16.to_le_bytes());
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    iph[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&GUEST_IP.octets());
    iph[16..20].copy_from_slice(&HOST_IP.octets());
    let csum = !fold(ones_sum(&iph));
    iph[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_IP.octets());
    pseudo.extend_from_slice(&HOST_IP.octets());
    pseudo.extend_from_slice(&[0, 17]);
    // The whole packet's length, as Linux's udp4_hwcsum leaves it: segmentation swaps it for
    // each segment's.
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let partial = fold(ones_sum(&pseudo));
    f.extend_from_slice(&GUEST_PORT.to_be_bytes());
    f.extend_from_slice(&HOST_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// The UDP frames for `GUEST_PORT` the TAP hands over within `wait`, as (header, UDP payload);
/// anything else (IPv6 neighbour discovery of a fresh link) is passed over.
fn read_udp(tap: &Tap, want: usize, wait: Duration) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let end = Instant::now() + wait;
    while got.len() < want && Instant::now() < end {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that outlives the call.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        let Ok(n) = tap.read(&mut buf) else {
            continue;
        };
        let (hdr, frame) = buf[..n].split_at(vnet::HDR_LEN);
        let is_ours = frame.len() >= ETH_IP_UDP
            && frame[12..14] == [0x08, 0x00]
            && frame[23] == 17
            && frame[36..38] == GUEST_PORT.to_be_bytes();
        if is_ours {
            got.push((VnetHdr::parse(hdr).unwrap(), frame[ETH_IP_UDP..].to_vec()));
        }
    }
    got
}

fn set_udp_segment(sock: &UdpSocket, size: u16) {
    let size = libc::c_int::from(size);
    // SAFETY: setsockopt reads one int through the pointer, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

#[test]
fn a_guests_uso_frame_reaches_the_host_as_datagrams_of_gso_size() {
    if !prerequisites() {
        return;
    }
    in_netns(|| {
        let tap = tap();
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST_IP, HOST_PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let data = payload(3 * MSS);
        let frame = uso_frame(&data, MSS as u16);
        let result = tap.write(&frame);
        if !kernel_at_least(6, 2) {
            // Before 6.2 the kernel knows no VIRTIO_NET_HDR_GSO_UDP_L4: the write is refused
            // (and squib does not offer USO there).
            assert!(result.is_err(), "{result:?}");
            return;
        }
        assert_eq!(result.unwrap(), frame.len());
        // A socket without UDP_GRO gets the large packet segmented at gso_size.
        let mut buf = [0u8; 65536];
        for i in 0..3 {
            let (n, from) = sock.recv_from(&mut buf).expect("a segment");
            assert_eq!(from, SocketAddrV4::new(GUEST_IP, GUEST_PORT).into());
            assert_eq!(&buf[..n], &data[i * MSS..(i + 1) * MSS], "segment {i}");
        }
        sock.set_nonblocking(true).unwrap();
        assert!(sock.recv_from(&mut buf).is_err(), "no fourth datagram");
    });
}

#[test]
fn with_uso_offloads_the_tap_hands_one_uso_frame_and_without_them_segments() {
    if !prerequisites() {
        return;
    }
    in_netns(|| {
        let tap = tap();
        let uso = offload::CSUM | offload::USO;
        if !kernel_at_least(6, 2) {
            assert!(!tap.supports_offload(uso));
            return;
        }
        assert!(tap.supports_offload(uso), "Linux ≥ 6.2 takes TUN_F_USO4|6");
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST_IP, HOST_PORT)).unwrap();
        set_udp_segment(&sock, MSS as u16);
        let data = payload(3 * MSS);
        let to = SocketAddrV4::new(GUEST_IP, GUEST_PORT);

        // A guest that acked GUEST_USO4 and GUEST_USO6: one frame, segmentation left to it.
        tap.set_offload(uso).unwrap();
        assert_eq!(sock.send_to(&data, to).unwrap(), data.len());
        let got = read_udp(&tap, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "one USO frame");
        let (hdr, body) = &got[0];
        assert_eq!(hdr.gso_type, vnet::GSO_UDP_L4);
        assert_eq!(usize::from(hdr.gso_size), MSS);
        assert_eq!(hdr.flags & vnet::F_NEEDS_CSUM, vnet::F_NEEDS_CSUM);
        assert_eq!(usize::from(hdr.csum_start), 34);
        assert_eq!(hdr.csum_offset, 6);
        assert_eq!(body, &data);
        // Nothing more: the one frame was the whole send.
        assert!(read_udp(&tap, 1, Duration::from_millis(300)).is_empty());

        // A guest without USO: the host segments before the TAP, one datagram per segment.
        tap.set_offload(offload::CSUM | offload::TSO4 | offload::TSO6)
            .unwrap();
        assert_eq!(sock.send_to(&data, to).unwrap(), data.len());
        let got = read_udp(&tap, 3, Duration::from_secs(5));
        assert_eq!(got.len(), 3, "three segments");
        for (i, (hdr, body)) in got.iter().enumerate() {
            assert_eq!(hdr.gso_type, vnet::GSO_NONE, "segment {i}");
            assert_eq!(body, &data[i * MSS..(i + 1) * MSS], "segment {i}");
        }
    });
}
