//! A real API server on a Unix socket in front of the VMM loop with the guest-less engine,
//! and a raw HTTP/1.1 client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use squib_api::{Controller, serve};
use squib_vmm::fake_engine::{FakeEngine, fake_tap_opener};
use squib_vmm::{Vmm, VmmExit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub kernel: tempfile::NamedTempFile,
    pub disk: tempfile::NamedTempFile,
    pub vmm: JoinHandle<VmmExit>,
}

/// How a test server differs from the default one.
pub struct Options {
    pub engine: FakeEngine,
    pub action_timeout: Duration,
    pub max_payload: usize,
    pub mmds_limit: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            engine: FakeEngine::default(),
            action_timeout: Duration::from_secs(10),
            max_payload: 51_200,
            mmds_limit: None,
        }
    }
}

pub async fn start_with_options(options: Options) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (mut vmm, handle) = Vmm::new("test-vm".to_string(), options.engine);
    vmm.set_tap_opener(fake_tap_opener());
    if let Some(limit) = options.mmds_limit {
        vmm.set_mmds_size_limit(limit);
    }
    let vmm = tokio::spawn(vmm.run());
    let listener = squib_api::bind(&socket).unwrap();
    tokio::spawn(serve(
        listener,
        Controller::new(handle, options.action_timeout),
        options.max_payload,
    ));
    Server {
        dir,
        socket,
        kernel: elf_kernel(),
        disk: tempfile::NamedTempFile::new().unwrap(),
        vmm,
    }
}

/// A kernel file that passes the loader's header checks at `InstanceStart` (an ELF header);
/// the guest-less engine boots nothing from it.
fn elf_kernel() -> tempfile::NamedTempFile {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let mut header = b"\x7fELF".to_vec();
    header.resize(64, 0);
    std::fs::write(kernel.path(), header).unwrap();
    kernel
}

pub async fn start_with(mmds_limit: Option<usize>) -> Server {
    start_with_options(Options {
        mmds_limit,
        ..Options::default()
    })
    .await
}

pub async fn start() -> Server {
    start_with_options(Options::default()).await
}

#[derive(Debug)]
pub struct Reply {
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    pub fn fault(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body));
        v["fault_message"].as_str().unwrap_or_default().to_string()
    }
    pub fn header_names(&self) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_string()))
            .collect()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// Reads one response; `buffer` keeps the bytes of the responses that follow (pipelining).
pub async fn read_reply(stream: &mut UnixStream, buffer: &mut Vec<u8>) -> Reply {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                read_more(stream, buffer).await;
            }
            let body = String::from_utf8(buffer[end + 4..end + 4 + length].to_vec()).unwrap();
            buffer.drain(..end + 4 + length);
            return Reply { head, body };
        }
        read_more(stream, buffer).await;
    }
}

async fn read_more(stream: &mut UnixStream, buffer: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
        .await
        .expect("reply within 10 s")
        .unwrap();
    assert!(n > 0, "connection closed before a full reply");
    buffer.extend_from_slice(&chunk[..n]);
}

impl Server {
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let request = match body {
            Some(body) => format!(
                "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
        };
        self.raw(request.as_bytes()).await
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub async fn raw(&self, bytes: &[u8]) -> Reply {
        let mut stream = UnixStream::connect(&self.socket).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        read_reply(&mut stream, &mut Vec::new()).await
    }

    pub async fn put(&self, path: &str, body: &str) -> Reply {
        self.send("PUT", path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &str) -> Reply {
        self.send("PATCH", path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    pub async fn vm_config(&self) -> serde_json::Value {
        self.get("/vm/config").await.json()
    }

    pub fn kernel_path(&self) -> &str {
        self.kernel.path().to_str().unwrap()
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    pub async fn configure_bootable(&self) {
        let body = format!(r#"{{"kernel_image_path":"{}"}}"#, self.kernel_path());
        assert_eq!(self.put("/boot-source", &body).await.status(), 204);
    }

    pub async fn boot(&self) {
        self.configure_bootable().await;
        let r = self
            .put("/actions", r#"{"action_type":"InstanceStart"}"#)
            .await;
        assert_eq!(r.status(), 204, "{}", r.body);
    }
}

/// Asserts a 400 with exactly this fault message.
pub fn assert_fault(reply: &Reply, message: &str) {
    assert_eq!(reply.status(), 400, "{}", reply.body);
    assert_eq!(reply.fault(), message);
}
