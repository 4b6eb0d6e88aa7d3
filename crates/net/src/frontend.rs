//! What stands between QEMU's virtio-net front-end and the rust-vmm request handler: a relay of
//! vhost-user control messages (never of frames: those go through guest RAM and eventfds) that
//! holds back the one request QEMU sends too early.
//!
//! QEMU's virtio-net enables the rings of a vhost-user peer (`VHOST_USER_SET_VRING_ENABLE`) as
//! soon as the guest writes its features, before QEMU has sent `VHOST_USER_SET_FEATURES`; it
//! sends the request again, after the features, when it starts the device. The vhost-user
//! specification only allows the request once `VHOST_USER_F_PROTOCOL_FEATURES` is negotiated, and
//! rust-vmm's handler ends the connection on the early one. (QEMU 7.2 even sends its "restore"
//! of the enable state just before the features.) The relay holds back a `SET_VRING_ENABLE` that
//! arrives while no `SET_FEATURES` with that bit has been seen, and passes the latest state of
//! each ring on right after such a `SET_FEATURES`; everything else goes on unchanged, in order,
//! file descriptors included. QEMU 10 asks for an acknowledgement of the early request
//! (`NEED_REPLY`, with `REPLY_ACK` negotiated) and waits for it before going on: the relay
//! answers it itself (success: the state is kept and passed on), and the copy it passes on later
//! no longer asks for a reply, which QEMU would not be reading.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HEADER: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const PROTOCOL_FEATURES: u64 = 1 << 30;
// Header flags: the protocol version every message carries, "this is a reply", and "answer me"
// (`VHOST_USER_PROTOCOL_F_REPLY_ACK`).
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
// The vhost-user messages QEMU sends are far smaller (a memory table of 8 regions is 264 bytes).
const MAX_PAYLOAD: usize = 64 * 1024;
// At most 8 descriptors travel with one message (`VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_FDS: usize = 8;
// Rings whose enable state is kept while it cannot be passed on (virtio-net has a few).
const MAX_HELD: usize = 64;

/// The relay of one device: listens on the socket QEMU connects to and relays its one
/// connection to the backend's socket. Dropping it stops waiting for QEMU; a relayed connection
/// ends when either side hangs up.
#[derive(Debug)]
pub struct FrontendRelay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FrontendRelay {
    /// Binds `public` (QEMU's side) and relays its first connection to `backend`.
    pub fn spawn(public: &Path, backend: PathBuf, name: &str) -> io::Result<Self> {
        let listener = UnixListener::bind(public)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("squib-{name}-fe"))
            .spawn(move || {
                let qemu = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(err) => {
                        tracing::warn!(%err, "accepting QEMU's vhost-user connection failed");
                        return;
                    }
                };
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                drop(listener);
                let device = match UnixStream::connect(&backend) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::warn!(%err, "connecting to the device backend failed");
                        return;
                    }
                };
                if let Err(err) = relay(qemu, device) {
                    tracing::debug!(%err, "vhost-user relay ended");
                }
            })?;
        Ok(Self {
            path: public.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FrontendRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if !thread.is_finished() {
                // Wakes a thread still waiting for QEMU; one that relays ends with the connection
                // (QEMU is gone by the time a device is dropped), so it is not waited for.
                let _ = UnixStream::connect(&self.path);
            }
            drop(thread);
        }
    }
}

fn relay(qemu: UnixStream, device: UnixStream) -> io::Result<()> {
    let (qemu_r, device_w) = (qemu.try_clone()?, device.try_clone()?);
    // Replies carry no descriptors: bytes are copied as they come.
    let replies = std::thread::Builder::new()
        .name("squib-vu-replies".into())
        .spawn(move || {
            let mut from = device;
            let mut to = qemu;
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        })?;
    let result = requests(&qemu_r, &device_w, &qemu_r);
    let _ = device_w.shutdown(std::net::Shutdown::Both);
    let _ = qemu_r.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    result
}

/// Relays QEMU's requests one message at a time; `reply_to` (QEMU) gets the acknowledgements
/// the relay gives itself. Nothing else is written to QEMU meanwhile: QEMU waits for this reply
/// before it sends anything that the device would answer.
fn requests(from: &UnixStream, to: &UnixStream, reply_to: &UnixStream) -> io::Result<()> {
    let mut protocol_features = false;
    let mut held: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        let Some(fds) = recv_header(from, &mut header)? else {
            return Ok(());
        };
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
        let (request, size) = (word(0), word(8) as usize);
        if size > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("vhost-user message of {size} bytes"),
            ));
        }
        payload.resize(size, 0);
        (&mut &*from).read_exact(&mut payload)?;
        if request == SET_VRING_ENABLE && !protocol_features && size >= 4 {
            // The latest state of each ring, replayed once the features allow it.
            let ring = u32::from_le_bytes(payload[..4].try_into().unwrap_or_default());
            let flags = word(4);
            if flags & NEED_REPLY != 0 {
                let mut ack = Vec::with_capacity(HEADER + 8);
                ack.extend_from_slice(&request.to_le_bytes());
                ack.extend_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
                ack.extend_from_slice(&8u32.to_le_bytes());
                ack.extend_from_slice(&0u64.to_le_bytes());
                (&mut &*reply_to).write_all(&ack)?;
                header[4..8].copy_from_slice(&(flags & !NEED_REPLY).to_le_bytes());
            }
            held.retain(|(r, _)| *r != ring);
            if held.len() < MAX_HELD {
                held.push((ring, [&header[..], &payload[..]].concat()));
            }
            continue;
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if raw.is_empty() {
            let mut w = to;
            w.write_all(&header)?;
            w.write_all(&payload)?;
        } else {
            let sent = to
                .send_with_fds(&[&header[..], &payload[..]], &raw)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            if sent < HEADER + size {
                let mut w = to;
                let rest = [&header[..], &payload[..]].concat();
                w.write_all(&rest[sent..])?;
            }
        }
        if request == SET_FEATURES && size >= 8 {
            let value = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
            protocol_features = value & PROTOCOL_FEATURES != 0;
            if protocol_features {
                let mut w = to;
                for (_, message) in held.drain(..) {
                    w.write_all(&message)?;
                }
            }
        }
    }
}

/// Reads one header and the descriptors sent with it; `None` at a clean end of stream.
fn recv_header(from: &UnixStream, header: &mut [u8; HEADER]) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER,
    }];
    // SAFETY: the iovec points into `header`, valid for writes of HEADER bytes for the call, and
    // `fds` has room for MAX_FDS descriptors.
    let (n, nfds) = unsafe { from.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let owned = fds[..nfds]
        .iter()
        // SAFETY: each descriptor was just received with SCM_RIGHTS and belongs to nobody else.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER {
        (&mut &*from).read_exact(&mut header[n..])?;
    }
    Ok(Some(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    // A relay with QEMU's end and the device's end connected.
    fn relayed() -> (tempfile::TempDir, FrontendRelay, UnixStream, UnixStream) {
        let dir = tempfile::tempdir().unwrap();
        let backend_path = dir.path().join("be.sock");
        let backend = UnixListener::bind(&backend_path).unwrap();
        let public = dir.path().join("fe.sock");
        let relay = FrontendRelay::spawn(&public, backend_path, "t").unwrap();
        let qemu = UnixStream::connect(&public).unwrap();
        let (device, _) = backend.accept().unwrap();
        (dir, relay, qemu, device)
    }

    #[test]
    fn early_ring_enables_are_held_back_and_the_rest_passes_with_descriptors() {
        let (_dir, relay, qemu, device) = relayed();

        let enable = message(SET_VRING_ENABLE, &[0, 0, 0, 0, 1, 0, 0, 0]);
        let features = message(SET_FEATURES, &(PROTOCOL_FEATURES | 1).to_le_bytes());
        let file = tempfile::tempfile().unwrap();
        let disable = message(SET_VRING_ENABLE, &[0, 0, 0, 0, 0, 0, 0, 0]);
        (&qemu).write_all(&disable).unwrap();
        (&qemu).write_all(&enable).unwrap();
        (&qemu).write_all(&features).unwrap();
        qemu.send_with_fds(&[&message(5, &[9; 4])[..]], &[file.as_raw_fd()])
            .unwrap();
        (&qemu).write_all(&enable).unwrap();

        // The early enables wait for the features, and only the ring's latest state follows
        // them; then the message with a descriptor and the later enable, in order.
        let mut got = vec![0u8; features.len() + enable.len()];
        (&device).read_exact(&mut got).unwrap();
        assert_eq!(got, [features.clone(), enable.clone()].concat());
        let mut header = [0u8; HEADER];
        let fds = recv_header(&device, &mut header).unwrap().unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!(u32::from_le_bytes(header[..4].try_into().unwrap()), 5);
        let mut body = [0u8; 4];
        (&device).read_exact(&mut body).unwrap();
        let mut got = vec![0u8; enable.len()];
        (&device).read_exact(&mut got).unwrap();
        assert_eq!(got, enable);

        // Replies flow back; a hang-up ends both directions.
        (&device).write_all(b"reply").unwrap();
        let mut reply = [0u8; 5];
        (&qemu).read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"reply");
        drop(qemu);
        let mut rest = Vec::new();
        (&device).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(relay);
    }

    #[test]
    fn an_early_enable_that_asks_for_a_reply_is_acknowledged_by_the_relay() {
        // QEMU 10 with REPLY_ACK: it waits for the answer before sending the features.
        let (_dir, relay, qemu, device) = relayed();

        let mut enable = message(SET_VRING_ENABLE, &[1, 0, 0, 0, 1, 0, 0, 0]);
        enable[4..8].copy_from_slice(&(VERSION_1 | NEED_REPLY).to_le_bytes());
        (&qemu).write_all(&enable).unwrap();
        let mut ack = [0u8; HEADER + 8];
        (&qemu).read_exact(&mut ack).unwrap();
        let mut want = message(SET_VRING_ENABLE, &0u64.to_le_bytes());
        want[4..8].copy_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
        assert_eq!(&ack[..], &want[..]);

        // Passed on after the features, no longer asking for a reply.
        let features = message(SET_FEATURES, &PROTOCOL_FEATURES.to_le_bytes());
        (&qemu).write_all(&features).unwrap();
        let mut got = vec![0u8; features.len() + enable.len()];
        (&device).read_exact(&mut got).unwrap();
        let plain = message(SET_VRING_ENABLE, &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(got, [features, plain].concat());
        drop(qemu);
        drop(relay);
    }
}
