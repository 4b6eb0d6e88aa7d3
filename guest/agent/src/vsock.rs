//! AF_VSOCK modes: an echo server and a client of the host (CID 2).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const HOST_CID: u32 = 2;

/// The test pattern's byte at `offset` (shared with the host-side tests).
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7).wrapping_add(offset / 251) % 256) as u8
}

/// FNV-1a 64, fed incrementally.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: a fresh descriptor owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn shutdown_write(file: &File) {
    // SAFETY: shutdown(2) on a descriptor `file` owns.
    unsafe { libc::shutdown(file.as_raw_fd(), libc::SHUT_WR) };
}

pub fn listen(args: &[String]) -> Result<String, String> {
    let (tag, port, sink) = match args {
        [tag, port] => (tag, port, false),
        [tag, port, mode] if mode == "sink" => (tag, port, true),
        _ => return Err("vsock-listen TAG PORT [sink]".into()),
    };
    let port: u32 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let sock = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            ADDR_LEN,
        )
    };
    if rc != 0 {
        return Err(os_error("bind"));
    }
    // SAFETY: listen(2) on the socket owned above.
    if unsafe { libc::listen(sock.as_raw_fd(), 1024) } != 0 {
        return Err(os_error("listen"));
    }
    println!("AGENT-VSOCK-LISTEN {tag} port={port}");
    let _ = std::io::stdout().flush();
    loop {
        // SAFETY: accept(2) without an address buffer.
        let fd = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: a fresh descriptor from accept, owned by the File.
        let conn = unsafe { File::from_raw_fd(fd) };
        if sink {
            std::thread::spawn(move || drain(conn));
        } else {
            std::thread::spawn(move || echo(conn));
        }
    }
}

/// Reads until EOF, then closes: the host's transfer ends when the guest has everything.
fn drain(mut conn: File) {
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

fn echo(mut conn: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    shutdown_write(&conn);
}

pub fn connect(args: &[String]) -> Result<String, String> {
    let [tag, port, bytes] = args else {
        return Err("vsock-connect TAG PORT BYTES".into());
    };
    let port: u32 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let total: u64 = bytes
        .parse()
        .map_err(|_| format!("bad byte count {bytes}"))?;
    let sock = socket()?;
    let addr = address(HOST_CID, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            ADDR_LEN,
        )
    };
    if rc != 0 {
        return Err(os_error("connect"));
    }
    let mut reader = File::from(sock);
    let mut writer = reader.try_clone().map_err(|e| format!("dup: {e}"))?;
    let sender = std::thread::spawn(move || -> Result<u64, String> {
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            writer
                .write_all(&chunk[..n])
                .map_err(|e| format!("write: {e}"))?;
            sent += n as u64;
        }
        shutdown_write(&writer);
        Ok(sent)
    });
    let mut fnv = Fnv::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                fnv.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) => break Err(format!("read: {e}")),
        }
    };
    let sent = sender.join().map_err(|_| "sender panicked".to_string())??;
    read_result?;
    Ok(format!(
        "AGENT-VSOCK-CONN {tag} sent={sent} recv={received} fnv={:016x}",
        fnv.0
    ))
}
