//! Child processes and what /proc says about them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(Default)]
struct Lines {
    lines: Vec<(Instant, String)>,
    closed: bool,
}

/// A child whose stdout and stderr are read line by line (each line timestamped on arrival),
/// killed when dropped.
pub struct Proc {
    pub child: Child,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

/// The child gets SIGKILL if the bench dies, so nothing outlives an interrupted run.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Proc {
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("start {:?}", command.get_program()))?;
        let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let out = child.stdout.take().context("no stdout pipe")?;
        let err = child.stderr.take().context("no stderr pipe")?;
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        collect(out, lines.clone(), open.clone(), "");
        collect(err, lines.clone(), open, "stderr: ");
        Ok(Self { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the first line containing `needle` arrived.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let (lock, ready) = &*self.lines;
        let deadline = Instant::now() + timeout;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some((at, _)) = out.lines.iter().find(|(_, l)| l.contains(needle)) {
                return Ok(*at);
            }
            let now = Instant::now();
            if now >= deadline || out.closed {
                let tail = tail(&out.lines, 15);
                bail!(
                    "no line with {needle:?} within {timeout:?} (output {}); last lines:\n{tail}",
                    if out.closed { "closed" } else { "open" }
                );
            }
            out = ready.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// The last `n` lines printed, for error messages.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.lines.0.lock().unwrap().lines, n)
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines, leaving out squib's per-request log lines (they drown everything else
/// while requests are fired).
fn tail(lines: &[(Instant, String)], n: usize) -> String {
    let mut kept: Vec<&str> = lines
        .iter()
        .rev()
        .map(|(_, l)| l.as_str())
        .filter(|l| {
            !l.contains("The API server received a") && !l.contains("The request was executed")
        })
        .take(n)
        .collect();
    kept.reverse();
    kept.join("\n")
}

fn collect<R: Read + Send + 'static>(
    stream: R,
    lines: Arc<(Mutex<Lines>, Condvar)>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    prefix: &'static str,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = Instant::now();
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                    let (lock, ready) = &*lines;
                    lock.lock()
                        .unwrap()
                        .lines
                        .push((at, format!("{prefix}{line}")));
                    ready.notify_all();
                }
            }
        }
        let (lock, ready) = &*lines;
        if open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            lock.lock().unwrap().closed = true;
        }
        ready.notify_all();
    });
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Reaps `pid` (a child of ours) and returns its user+system CPU time, all threads included.
pub fn wait_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and usage are valid for writes.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r != pid as libc::pid_t {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for {pid}"))
}

/// The PIDs of `pid`'s children (spawned from any of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    pids
}

/// The argv of `pid`, from /proc.
pub fn cmdline(pid: u32) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("read /proc/{pid}/cmdline"))?;
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if argv.is_empty() {
        bail!("empty command line for {pid} (exited?)");
    }
    Ok(argv)
}

/// One request on a fresh connection (blocking): (status, body).
pub fn api(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let request = crate::load::Request::new(method, path, body);
    stream.write_all(&request.bytes)?;
    read_response(&mut stream)
}

fn read_response(stream: &mut UnixStream) -> anyhow::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..pos + 4])?;
            let (status, length) = crate::load::parse_head(head)?;
            while buf.len() < pos + 4 + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[pos + 4..pos + 4 + length]).into_owned();
            return Ok((status, body));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `api`, requiring `expect`.
pub fn api_expect(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    expect: u16,
) -> anyhow::Result<String> {
    let (status, reply) = api(socket, method, path, body)?;
    if status != expect {
        bail!("{method} {path} → {status} (expected {expect}): {reply}");
    }
    Ok(reply)
}

/// Polls `GET /` until the socket answers (any status), as fast as is reasonable.
pub fn wait_answering(socket: &Path, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            let request = crate::load::Request::new("GET", "/", None);
            if stream.write_all(&request.bytes).is_ok() && read_response(&mut stream).is_ok() {
                return Ok(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            bail!("{} did not answer within {timeout:?}", socket.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
