//! The load generator: raw HTTP/1.1 over a Unix socket on tokio, no HTTP client crate.
//! Requests are sent one at a time per connection (no pipelining); each response is framed by
//! its `Content-Length` (or has no body: 1xx, 204, 304).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One request, serialised once.
#[derive(Clone, Debug)]
pub struct Request {
    pub label: String,
    pub bytes: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str, body: Option<&str>) -> Self {
        let bytes = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        }
        .into_bytes();
        Self {
            label: format!("{method} {path}"),
            bytes,
        }
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive connection.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads its whole response.
    pub async fn roundtrip(&mut self, request: &Request) -> anyhow::Result<Response> {
        self.stream.write_all(&request.bytes).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<Response> {
        let mut scanned = 0;
        let head_end = loop {
            if let Some(pos) = find(&self.buf[scanned..], b"\r\n\r\n") {
                break scanned + pos + 4;
            }
            scanned = self.buf.len().saturating_sub(3);
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("non-UTF-8 head")?;
        let (status, length) = parse_head(head)?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(Response { status, body })
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("the server closed the connection mid-response");
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Status code and body length from a response head (status line + headers + blank line).
pub fn parse_head(head: &str) -> anyhow::Result<(u16, usize)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("unsupported Transfer-Encoding {value:?}");
        }
    }
    let bodiless = status < 200 || status == 204 || status == 304;
    match (bodiless, length) {
        (true, _) => Ok((status, 0)),
        (false, Some(n)) => Ok((status, n)),
        (false, None) => bail!("status {status} without Content-Length"),
    }
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Per-request latencies in ns, sorted.
    pub latencies_ns: Vec<u64>,
    /// Requests completed per second, summed over connections.
    pub throughput: f64,
    /// Requests answered, warm-up included.
    pub completed: u64,
}

/// `conns` keep-alive connections each send `request` back to back: `warmup` unmeasured, then
/// `duration` measured. Every response must have status `expect`.
pub async fn run(
    socket: PathBuf,
    request: Request,
    expect: u16,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Conn::connect(&socket).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    let mut tasks = Vec::with_capacity(conns);
    for mut conn in connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut first: Option<Instant> = None;
            let mut completed = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let response = conn.roundtrip(&request).await?;
                let t1 = Instant::now();
                completed += 1;
                if response.status != expect {
                    bail!(
                        "{} answered {} (expected {expect}): {}",
                        request.label,
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    );
                }
                if t0 >= measure_from {
                    first.get_or_insert(t0);
                    latencies.push((t1 - t0).as_nanos() as u64);
                }
            }
            let span = first.map(|f| Instant::now() - f).unwrap_or_default();
            anyhow::Ok((latencies, span, completed))
        }));
    }
    let mut result = LoadResult::default();
    for task in tasks {
        let (latencies, span, completed) = task.await??;
        result.completed += completed;
        if !span.is_zero() {
            result.throughput += latencies.len() as f64 / span.as_secs_f64();
        }
        result.latencies_ns.extend(latencies);
    }
    if result.latencies_ns.is_empty() {
        bail!("no request completed in the measured window");
    }
    result.latencies_ns.sort_unstable();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(
            parse_head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap(),
            (200, 12)
        );
        assert_eq!(
            parse_head("HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n").unwrap(),
            (204, 0)
        );
        assert_eq!(
            parse_head("HTTP/1.1 400 Bad Request\r\ncontent-length:3\r\n\r\n").unwrap(),
            (400, 3)
        );
        assert!(parse_head("HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head("garbage\r\n\r\n").is_err());
    }
}
