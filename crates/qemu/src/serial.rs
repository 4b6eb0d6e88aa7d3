//! The guest's serial output into `serial_out_path`, through squib rather than QEMU: QEMU's
//! serial chardev connects to a Unix socket squib listens on, and squib appends what arrives to
//! the file through the serial rate limiter, as Firecracker's UART does: every byte costs one
//! token and a byte without a token is dropped (counted as `uart.rate_limiter_dropped_bytes`),
//! so a guest cannot fill the host's disk faster than the bucket allows.
//!
//! The file is opened `O_NONBLOCK` (a FIFO without a reader fails the start instead of
//! blocking it) and written from a thread of its own fed through a bounded queue: a full FIFO
//! or a slow disk drops serial output (`missed_write_count`), never stalls the VMM, the API or
//! QEMU's vCPUs.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use squib_metrics::schema::Uart;
use squib_net::{BucketConfig, TokenBucket};
use squib_vmm::resources::rate_limiter::TokenBucketConfig;
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

// Chunks waiting for the writer thread; beyond this the guest's output is dropped.
const QUEUED_CHUNKS: usize = 64;
const CHUNK: usize = 4096;

/// The running serial relay; dropping it stops it.
#[derive(Debug)]
pub(crate) struct SerialRelay {
    socket: PathBuf,
    counters: Arc<Uart>,
    task: JoinHandle<()>,
}

impl Drop for SerialRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SerialRelay {
    /// Opens `out_path` and listens on `socket` (in squib's runtime directory) for QEMU's
    /// serial chardev. Must run on a tokio runtime.
    pub(crate) fn start(
        socket: &Path,
        out_path: &Path,
        limiter: Option<TokenBucketConfig>,
    ) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(out_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open the serial output {}: {e}", out_path.display()),
                )
            })?;
        let listener = UnixListener::bind(socket)?;
        let bucket = limiter.and_then(|b| {
            TokenBucket::new_at(
                BucketConfig {
                    size: b.size,
                    one_time_burst: b.one_time_burst.unwrap_or(0),
                    refill_time_ms: b.refill_time,
                },
                Instant::now(),
            )
        });
        let counters = Arc::new(Uart::default());
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUED_CHUNKS);
        let writer_counters = counters.clone();
        std::thread::Builder::new()
            .name("squib-serial".into())
            .spawn(move || write_out(file, rx, &writer_counters))?;
        let task = tokio::spawn(relay(listener, bucket, tx, counters.clone()));
        Ok(Self {
            socket: socket.to_path_buf(),
            counters,
            task,
        })
    }

    /// The socket QEMU's chardev connects to.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The counters, for the `uart` metrics.
    pub(crate) fn counters(&self) -> &Arc<Uart> {
        &self.counters
    }
}

async fn relay(
    listener: UnixListener,
    mut bucket: Option<TokenBucket>,
    tx: mpsc::SyncSender<Vec<u8>>,
    counters: Arc<Uart>,
) {
    // QEMU connects once, at start-up.
    let mut stream = match listener.accept().await {
        Ok((stream, _)) => stream,
        Err(e) => {
            tracing::warn!("serial console: QEMU did not connect: {e}");
            return;
        }
    };
    drop(listener);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("serial console: {e}");
                break;
            }
        };
        let allowed = match bucket.as_mut() {
            Some(b) => usize::try_from(b.consume_up_to_at(n as u64, Instant::now())).unwrap_or(n),
            None => n,
        };
        if allowed < n {
            counters
                .rate_limiter_dropped_bytes
                .add((n - allowed) as u64);
        }
        if allowed == 0 {
            continue;
        }
        match tx.try_send(buf[..allowed].to_vec()) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                counters.missed_write_count.inc();
            }
            Err(mpsc::TrySendError::Disconnected(_)) => break,
        }
    }
}

// The writer thread: appends each chunk; what a full FIFO does not take is dropped.
fn write_out(mut file: File, rx: mpsc::Receiver<Vec<u8>>, counters: &Uart) {
    while let Ok(chunk) = rx.recv() {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match file.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counters.missed_write_count.inc();
                    break;
                }
                Err(e) => {
                    tracing::debug!("serial output: {e}");
                    counters.error_count.inc();
                    break;
                }
            }
        }
        if rest.len() < chunk.len() {
            counters.write_count.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn feed(relay: &SerialRelay, data: &[u8]) {
        let mut s = tokio::net::UnixStream::connect(relay.socket())
            .await
            .unwrap();
        s.write_all(data).await.unwrap();
        s.shutdown().await.unwrap();
        // Let the relay and the writer thread drain.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn output_beyond_the_bucket_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("serial.log");
        let relay = SerialRelay::start(
            &dir.path().join("s.sock"),
            &out,
            Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: Some(500),
                refill_time: 3_600_000,
            }),
        )
        .unwrap();
        feed(&relay, &vec![b'x'; 100_000]).await;
        let written = std::fs::metadata(&out).unwrap().len();
        // Burst and bucket, plus at most a token or two refilled meanwhile.
        assert!((1500..1510).contains(&written), "{written}");
        let dropped = relay.counters().rate_limiter_dropped_bytes.get();
        assert_eq!(written + dropped, 100_000);
    }

    #[tokio::test]
    async fn without_a_limiter_everything_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("serial.log");
        std::fs::write(&out, b"kept\n").unwrap();
        let relay = SerialRelay::start(&dir.path().join("s.sock"), &out, None).unwrap();
        feed(&relay, b"hello\n").await;
        assert_eq!(std::fs::read(&out).unwrap(), b"kept\nhello\n");
    }

    #[tokio::test]
    async fn a_fifo_without_reader_fails_at_once_and_a_full_one_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = SerialRelay::start(&dir.path().join("a.sock"), &fifo, None).unwrap_err();
        assert!(
            err.to_string().contains("cannot open the serial output"),
            "{err}"
        );

        // A reader that never reads: the FIFO fills, the rest is dropped, nothing blocks.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let relay = SerialRelay::start(&dir.path().join("b.sock"), &fifo, None).unwrap();
        let started = Instant::now();
        feed(&relay, &vec![b'y'; 1 << 20]).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(relay.counters().missed_write_count.get() > 0);
    }
}
