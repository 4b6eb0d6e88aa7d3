//! `squib-agent`: the test guest's helper (busybox cannot send an HTTP PUT). Every command prints
//! one line starting with `AGENT-` on stdout, which the guest's script sends to the console:
//!
//! ```text
//! squib-agent http TAG METHOD IP[:PORT] PATH [--save FILE] ['Header: value' | 'Header: @FILE']...
//!   → AGENT-HTTP TAG status=<code> ctype=<content type or -> body=<hex of the body>
//! squib-agent tcp-send TAG IP:PORT BYTES   (connect, send BYTES, half-close, wait for EOF)
//!   → AGENT-TCP-SENT TAG bytes=<n> ms=<elapsed>
//! squib-agent tcp-recv TAG IP:PORT         (connect, read until EOF)
//!   → AGENT-TCP-RECV TAG bytes=<n> sum=<byte sum mod 2^32> ms=<elapsed>
//! squib-agent vsock-listen TAG PORT [sink] (AF_VSOCK server on PORT, runs until killed:
//!                                         echoes each connection until EOF, then half-closes;
//!                                         `sink`: reads each until EOF, then closes)
//!   → AGENT-VSOCK-LISTEN TAG port=<port>  (once listening)
//! squib-agent vsock-connect TAG PORT BYTES (connect to the host, CID 2, send BYTES of the
//!                                         pattern while reading, half-close, read until EOF)
//!   → AGENT-VSOCK-CONN TAG sent=<n> recv=<n> fnv=<FNV-1a 64 of the bytes received, hex>
//! squib-agent udp-send TAG IP:PORT SIZE MS  (datagrams of SIZE bytes, as fast as possible, MS ms)
//!   → AGENT-UDP-SENT TAG packets=<n> ms=<elapsed>
//! squib-agent wait TAG IP:PORT              (connect, then wait, without a time limit, until the
//!                                            peer closes: a gate the host opens when it likes)
//!   → AGENT-WAIT TAG
//! ```
//! The pattern byte at offset i is `(i * 7 + i / 251) % 256`.
//! Failures print `AGENT-ERROR TAG <what>` and exit 1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod vsock;

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tag = args.get(1).cloned().unwrap_or_else(|| "-".into());
    let result = match args.first().map(String::as_str) {
        Some("http") => http(&args[1..]),
        Some("tcp-send") => tcp_send(&args[1..]),
        Some("tcp-recv") => tcp_recv(&args[1..]),
        Some("vsock-listen") => vsock::listen(&args[1..]),
        Some("vsock-connect") => vsock::connect(&args[1..]),
        Some("udp-send") => udp_send(&args[1..]),
        Some("wait") => wait(&args[1..]),
        _ => Err(
            "usage: squib-agent http|tcp-send|tcp-recv|udp-send|wait|vsock-listen|vsock-connect TAG ..."
                .to_string(),
        ),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("AGENT-ERROR {tag} {why}");
            ExitCode::FAILURE
        }
    }
}

fn connect(addr: &str, default_port: u16) -> Result<TcpStream, String> {
    let addr: SocketAddr = if addr.contains(':') {
        addr.parse()
    } else {
        format!("{addr}:{default_port}").parse()
    }
    .map_err(|e| format!("bad address {addr}: {e}"))?;
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn http(args: &[String]) -> Result<String, String> {
    let [tag, method, addr, path, rest @ ..] = args else {
        return Err("http TAG METHOD IP[:PORT] PATH [--save FILE] [HEADER]...".into());
    };
    let mut save = None;
    let mut headers = String::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        if arg == "--save" {
            save = Some(it.next().ok_or("--save needs a file")?.clone());
            continue;
        }
        let (name, value) = arg.split_once(':').ok_or(format!("bad header {arg}"))?;
        let value = value.trim();
        let value = match value.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("read {file}: {e}"))?
                .trim()
                .to_string(),
            None => value.to_string(),
        };
        headers.push_str(&format!("{name}: {value}\r\n"));
    }
    let host = addr.split(':').next().unwrap_or(addr);
    let mut stream = connect(addr, 80)?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("status line: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    let mut ctype = "-".to_string();
    loop {
        let mut header = String::new();
        let n = reader
            .read_line(&mut header)
            .map_err(|e| format!("headers: {e}"))?;
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| "bad content-length")?,
                "content-type" => ctype = value.replace(' ', ""),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if let Some(file) = save {
        std::fs::write(&file, &body).map_err(|e| format!("write {file}: {e}"))?;
    }
    Ok(format!(
        "AGENT-HTTP {tag} status={status} ctype={ctype} body={}",
        hex(&body)
    ))
}

fn tcp_send(args: &[String]) -> Result<String, String> {
    let [tag, addr, bytes] = args else {
        return Err("tcp-send TAG IP:PORT BYTES".into());
    };
    let total: usize = bytes
        .parse()
        .map_err(|_| format!("bad byte count {bytes}"))?;
    let started = Instant::now();
    let mut stream = connect(addr, 0)?;
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stream
            .write_all(&chunk[..n])
            .map_err(|e| format!("send after {sent} bytes: {e}"))?;
        sent += n;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // The peer closes once it has everything: the elapsed time covers delivery.
    let mut sink = [0u8; 256];
    while stream.read(&mut sink).map_err(|e| format!("wait: {e}"))? > 0 {}
    Ok(format!(
        "AGENT-TCP-SENT {tag} bytes={sent} ms={}",
        started.elapsed().as_millis()
    ))
}

fn tcp_recv(args: &[String]) -> Result<String, String> {
    let [tag, addr] = args else {
        return Err("tcp-recv TAG IP:PORT".into());
    };
    let started = Instant::now();
    let mut stream = connect(addr, 0)?;
    let mut buf = vec![0u8; 65536];
    let (mut total, mut sum) = (0usize, 0u32);
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                sum = buf[..n]
                    .iter()
                    .fold(sum, |s, &b| s.wrapping_add(u32::from(b)));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv after {total} bytes: {e}")),
        }
    }
    Ok(format!(
        "AGENT-TCP-RECV {tag} bytes={total} sum={sum} ms={}",
        started.elapsed().as_millis()
    ))
}

fn udp_send(args: &[String]) -> Result<String, String> {
    let [tag, addr, size, ms] = args else {
        return Err("udp-send TAG IP:PORT SIZE MS".into());
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let size: usize = size.parse().map_err(|_| format!("bad size {size}"))?;
    let ms: u64 = ms.parse().map_err(|_| format!("bad duration {ms}"))?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let payload = vec![0x5au8; size.min(65507)];
    let started = Instant::now();
    let until = Duration::from_millis(ms);
    let mut packets: u64 = 0;
    while started.elapsed() < until {
        // A full socket buffer (ENOBUFS) or a transient error only skips a datagram.
        for _ in 0..64 {
            if socket.send(&payload).is_ok() {
                packets += 1;
            }
        }
    }
    Ok(format!(
        "AGENT-UDP-SENT {tag} packets={packets} ms={}",
        started.elapsed().as_millis()
    ))
}

fn wait(args: &[String]) -> Result<String, String> {
    let [tag, addr] = args else {
        return Err("wait TAG IP:PORT".into());
    };
    let mut stream = connect(addr, 0)?;
    // The host holds the gate for as long as the other side of a comparison runs.
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("socket options: {e}"))?;
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
    Ok(format!("AGENT-WAIT {tag}"))
}
