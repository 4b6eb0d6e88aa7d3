//! The framing checked against QEMU 7.2 itself: a `-netdev stream,server=off` that connects to
//! our listener, joined through a hub to a UDP netdev on loopback, so a frame we write comes out
//! as a datagram and a datagram comes back to us as a frame. No guest needed.

mod common;

use std::net::UdpSocket as StdUdp;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{have_command, require};
use squib_net::framing::{MAX_FRAME, read_frame, write_frame};
use tokio::net::{UdpSocket, UnixListener};

const QEMU: &str = "qemu-system-x86_64";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    StdUdp::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn qemu_stream_netdev_speaks_length_prefixed_frames() {
    if !require("qemu-system-x86_64", have_command(QEMU)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let our_port = ours.local_addr().unwrap().port();
    let qemu_port = free_udp_port();

    let _qemu = Kill(
        Command::new(QEMU)
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .arg("-netdev")
            .arg(format!(
                "stream,id=s0,server=off,addr.type=unix,addr.path={}",
                path.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "socket,id=u0,udp=127.0.0.1:{our_port},localaddr=127.0.0.1:{qemu_port}"
            ))
            .args(["-netdev", "hubport,id=h0,hubid=0,netdev=s0"])
            .args(["-netdev", "hubport,id=h1,hubid=0,netdev=u0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu"),
    );
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("QEMU connects to the relay's socket")
        .unwrap();

    let frame: Vec<u8> = (0..=255u8).cycle().take(1514).collect();
    write_frame(&mut conn, &mut Vec::new(), &frame)
        .await
        .unwrap();
    let mut buf = vec![0u8; MAX_FRAME];
    let n = tokio::time::timeout(Duration::from_secs(5), ours.recv(&mut buf))
        .await
        .expect("frame forwarded by QEMU")
        .unwrap();
    assert_eq!(&buf[..n], &frame[..]);

    let back = vec![0x5au8; 60];
    ours.send_to(&back, ("127.0.0.1", qemu_port)).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut conn, &mut buf))
        .await
        .expect("frame from QEMU")
        .unwrap()
        .expect("stream open");
    assert_eq!(&buf[..n], &back[..]);
}
