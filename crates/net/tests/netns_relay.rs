//! The relay between a fake QEMU (a Unix socket peer speaking the stream framing) and a real TAP
//! inside a network namespace of the test's own. Needs root, /dev/net/tun and `ip`.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{NetnsTap, have_command, is_root, parse_udp, require, udp_frame};
use squib_net::framing::{MAX_FRAME, read_frame, write_frame};
use squib_net::{BucketConfig, FrameDetour, LimiterConfig, Relay, RelayConfig, Tap};
use tokio::net::{UdpSocket, UnixListener, UnixStream};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

fn prerequisites() -> bool {
    require("root", is_root())
        && require(
            "/dev/net/tun",
            std::path::Path::new("/dev/net/tun").exists(),
        )
        && require("the ip command", have_command("ip"))
}

struct Setup {
    netns: NetnsTap,
    relay: Relay,
    qemu: UnixStream,
    host_udp: UdpSocket,
    host_mac: [u8; 6],
    _dir: tempfile::TempDir,
}

async fn setup(tag: &str, tx: LimiterConfig) -> Setup {
    setup_with(tag, tx, None).await
}

async fn setup_with(tag: &str, tx: LimiterConfig, detour: Option<FrameDetour>) -> Setup {
    let netns = NetnsTap::create(tag, HOST_IP);
    let rt = tokio::runtime::Handle::current();
    let name = netns.tap.clone();
    let tap = netns.within(move || {
        let _rt = rt.enter();
        Tap::open(&name).expect("open tap in netns")
    });
    netns.up();
    netns.add_neighbour(GUEST_IP, GUEST_MAC);
    let host_mac = tap_mac(&netns);
    let host_udp = netns.udp_socket(HOST_IP, 7000);
    host_udp.set_nonblocking(true).unwrap();
    let host_udp = UdpSocket::from_std(host_udp).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net0.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let relay = Relay::spawn(RelayConfig {
        iface_id: "net0".into(),
        tap,
        guest: listener,
        rx_rate_limiter: LimiterConfig::default(),
        tx_rate_limiter: tx,
        detour,
    });
    // The fake QEMU connects the way `-netdev stream,server=off` does.
    let qemu = UnixStream::connect(&path).await.unwrap();
    Setup {
        netns,
        relay,
        qemu,
        host_udp,
        host_mac,
        _dir: dir,
    }
}

fn tap_mac(netns: &NetnsTap) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", &netns.ns, "-br", "link", "show", &netns.tap])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().nth(2).expect("mac in ip -br link");
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

fn guest_datagram(host_mac: [u8; 6], seq: u32, size: usize) -> Vec<u8> {
    let mut payload = vec![0xa5u8; size];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    udp_frame(GUEST_MAC, host_mac, GUEST_IP, HOST_IP, 6000, 7000, &payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_both_ways_in_order() {
    if !prerequisites() {
        return;
    }
    let mut s = setup("a", LimiterConfig::default()).await;
    let (mut rd, mut wr) = s.qemu.split();

    // Guest → host: 200 datagrams arrive at the namespace's socket, in order.
    let mut scratch = Vec::new();
    let n = 200u32;
    let frames: Vec<_> = (0..n).map(|i| guest_datagram(s.host_mac, i, 64)).collect();
    let writer = async {
        for f in &frames {
            write_frame(&mut wr, &mut scratch, f).await.unwrap();
        }
    };
    let reader = async {
        let mut buf = [0u8; 2048];
        for want in 0..n {
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(5), s.host_udp.recv_from(&mut buf))
                    .await
                    .expect("datagram from the guest")
                    .unwrap();
            assert_eq!(from, (GUEST_IP, 6000).into());
            assert_eq!(len, 64);
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), want);
        }
    };
    tokio::join!(writer, reader);

    // Host → guest: the kernel's datagrams come out of the socket as frames, in order.
    for i in 0..n {
        s.host_udp
            .send_to(&i.to_be_bytes(), (GUEST_IP, 6000))
            .await
            .unwrap();
    }
    let mut buf = vec![0u8; MAX_FRAME];
    let mut want = 0u32;
    while want < n {
        let len = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd, &mut buf))
            .await
            .unwrap_or_else(|_| {
                let stats = std::process::Command::new("ip")
                    .args(["-n", &s.netns.ns, "-s", "link", "show", &s.netns.tap])
                    .output()
                    .unwrap();
                panic!(
                    "frame {want} for the guest never came; tap: {}",
                    String::from_utf8_lossy(&stats.stdout)
                )
            })
            .unwrap()
            .expect("stream open");
        let frame = &buf[..len];
        let Some((6000, payload)) = parse_udp(frame) else {
            continue;
        };
        assert_eq!(frame[..6], GUEST_MAC);
        assert_eq!(u32::from_be_bytes(payload.try_into().unwrap()), want);
        want += 1;
    }

    let m = s.relay.handle();
    let m = m.metrics();
    assert_eq!(m.tx_packets_count.load(Ordering::Relaxed), u64::from(n));
    assert!(m.rx_packets_count.load(Ordering::Relaxed) >= u64::from(n));
    assert_eq!(m.tap_write_fails.load(Ordering::Relaxed), 0);
    drop(s.netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_limiter_delays_a_burst_and_updates_live() {
    if !prerequisites() {
        return;
    }
    // 10 000 bytes per 100 ms = 100 kB/s, bucket starts full.
    let limit = LimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 10_000,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    };
    let mut s = setup("b", limit).await;
    let frame_len = guest_datagram(s.host_mac, 0, 958).len();
    assert_eq!(frame_len, 1000);
    let frames = 60u32;
    // The bucket starts full, and (as upstream's does) it also credits the refill accrued since
    // it was created, up to one more bucketful; everything beyond those 20 000 bytes must wait
    // for the refill: 40 000 bytes at 100 kB/s.
    let floor = Duration::from_millis(400);

    let (_rd, mut wr) = s.qemu.split();
    let mut scratch = Vec::new();
    let all: Vec<_> = (0..frames)
        .map(|i| guest_datagram(s.host_mac, i, 958))
        .collect();
    let start = Instant::now();
    let writer = async {
        for f in &all {
            write_frame(&mut wr, &mut scratch, f).await.unwrap();
        }
    };
    let reader = async {
        let mut buf = [0u8; 2048];
        for want in 0..frames {
            let (len, _) =
                tokio::time::timeout(Duration::from_secs(10), s.host_udp.recv_from(&mut buf))
                    .await
                    .expect("datagram")
                    .unwrap();
            assert_eq!(len, 958);
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), want);
        }
    };
    tokio::join!(writer, reader);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= floor,
        "{frames} frames of {frame_len} B took {elapsed:?}, the limit implies at least {floor:?}"
    );
    let handle = s.relay.handle();
    assert!(
        handle
            .metrics()
            .tx_rate_limiter_throttled
            .load(Ordering::Relaxed)
            > 0
    );

    // Lifting the limit applies at once: the same burst now needs no refill time at all.
    handle.update_rate_limiters(
        None,
        Some(LimiterConfig {
            bandwidth: Some(BucketConfig::default()),
            ops: None,
        }),
    );
    let throttled_before = handle
        .metrics()
        .tx_rate_limiter_throttled
        .load(Ordering::Relaxed);
    let writer = async {
        for f in &all {
            write_frame(&mut wr, &mut scratch, f).await.unwrap();
        }
    };
    let reader = async {
        let mut buf = [0u8; 2048];
        for _ in 0..frames {
            tokio::time::timeout(Duration::from_secs(10), s.host_udp.recv_from(&mut buf))
                .await
                .expect("datagram")
                .unwrap();
        }
    };
    tokio::join!(writer, reader);
    assert_eq!(
        handle
            .metrics()
            .tx_rate_limiter_throttled
            .load(Ordering::Relaxed),
        throttled_before,
        "the update did not lift the limit"
    );
    drop(s.netns);
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn tap_rx_packets(netns: &NetnsTap) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.ns, "cat"])
        .arg(format!(
            "/sys/class/net/{}/statistics/rx_packets",
            netns.tap
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmds_frames_are_answered_and_never_reach_the_tap() {
    if !prerequisites() {
        return;
    }
    let data = squib_mmds::new_data_handle();
    data.store(std::sync::Arc::new(serde_json::json!({"k": "v"})));
    let mmds = std::sync::Arc::new(squib_mmds::Mmds::new(
        data,
        squib_mmds::MmdsConfig::default(),
        "vm",
    ));
    let ends = squib_mmds::spawn_stack(mmds.clone(), squib_mmds::DEFAULT_IPV4).unwrap();
    let detour = FrameDetour {
        claims: ends.claims,
        to_service: ends.to_service,
        from_service: ends.from_service,
    };
    let mut s = setup_with("c", LimiterConfig::default(), Some(detour)).await;
    let before = tap_rx_packets(&s.netns);
    let (mut rd, mut wr) = s.qemu.split();
    let mut scratch = Vec::new();
    write_frame(
        &mut wr,
        &mut scratch,
        &arp_request(squib_mmds::DEFAULT_IPV4),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; MAX_FRAME];
    let reply = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd, &mut buf))
            .await
            .expect("ARP reply from the MMDS")
            .unwrap()
            .expect("stream open");
        // Only ARP replies interest us; the namespace may chatter otherwise.
        if buf[12..14] == [0x08, 0x06] && buf[20..22] == [0, 2] {
            break buf[..n].to_vec();
        }
    };
    assert_eq!(reply[..6], GUEST_MAC);
    assert_eq!(reply[6..12], squib_mmds::MMDS_MAC);
    assert_eq!(reply[22..28], squib_mmds::MMDS_MAC);
    assert_eq!(reply[28..32], squib_mmds::DEFAULT_IPV4.octets());
    // An ARP request for another address still goes to the TAP.
    write_frame(&mut wr, &mut scratch, &arp_request(HOST_IP))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tap_rx_packets(&s.netns) < before + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tap_rx_packets(&s.netns),
        before + 1,
        "only the non-MMDS frame reached the TAP"
    );
    assert_eq!(mmds.metrics().rx_accepted.load(Ordering::Relaxed), 1);
    drop(s.netns);
}
