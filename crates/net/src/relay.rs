//! The per-interface frame relay between QEMU's stream netdev and a TAP.
//!
//! One supervisor task per interface accepts QEMU's connection on the interface's Unix socket and
//! runs two tasks for it, one per direction, so a direction held back by its rate limiter (or by
//! a guest that stops taking frames) holds back nothing else. Neither task drops or reorders
//! frames: each holds at most one frame, and while the limiter refuses it the task stops reading
//! from its source, which pushes back on QEMU (guest→host) or lets the kernel queue of the TAP
//! fill (host→guest), exactly where Firecracker's device pushes back too.
//!
//! Naming follows Firecracker: **tx** is guest→host, **rx** is host→guest.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::detour::{ClaimFn, FrameDetour};
use crate::framing::{MAX_FRAME, read_frame, write_frame};
use crate::metrics::{NetMetrics, add, inc};
use crate::tap::Tap;
use crate::token_bucket::{LimiterConfig, RateLimiter};

/// Everything one interface's relay needs.
#[derive(Debug)]
pub struct RelayConfig {
    /// The API's `iface_id`, used in logs.
    pub iface_id: String,
    /// The host side, opened when the interface was configured.
    pub tap: Tap,
    /// Bound before QEMU starts: QEMU (`-netdev stream,server=off,…`) connects to it at start-up
    /// and again after every restart of QEMU (snapshot load), and the relay accepts each time.
    pub guest: UnixListener,
    /// Host→guest limiter.
    pub rx_rate_limiter: LimiterConfig,
    /// Guest→host limiter.
    pub tx_rate_limiter: LimiterConfig,
    /// Present on MMDS-bound interfaces.
    pub detour: Option<FrameDetour>,
}

/// A running relay. Dropping it stops every task of the interface.
#[derive(Debug)]
pub struct Relay {
    handle: RelayHandle,
    supervisor: JoinHandle<()>,
}

/// A cheap, cloneable view of a running relay: counters and live limiter updates.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    iface_id: String,
    metrics: NetMetrics,
    rx: LimiterCell,
    tx: LimiterCell,
}

#[derive(Debug)]
struct LimiterCell {
    limiter: Mutex<RateLimiter>,
    // Wakes a task waiting out a refusal so a PATCHed limit applies immediately.
    changed: Notify,
}

impl LimiterCell {
    fn new(config: LimiterConfig) -> Self {
        Self {
            limiter: Mutex::new(RateLimiter::new(config)),
            changed: Notify::new(),
        }
    }

    fn update(&self, config: LimiterConfig) {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(config);
        self.changed.notify_waiters();
    }

    /// Waits until the limiter lets a frame of `bytes` through.
    async fn admit(&self, bytes: usize, throttled: &AtomicU64, timer_events: &AtomicU64) {
        let mut counted = false;
        loop {
            // Registered before asking, so an update between the refusal and the wait is seen.
            let changed = self.changed.notified();
            let verdict = self
                .limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .consume(bytes as u64);
            let Err(wait) = verdict else { return };
            if !counted {
                inc(throttled);
                counted = true;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => inc(timer_events),
                () = changed => {}
            }
        }
    }
}

impl Relay {
    /// Starts the relay on the current tokio runtime.
    pub fn spawn(config: RelayConfig) -> Self {
        let shared = Arc::new(Shared {
            iface_id: config.iface_id,
            metrics: NetMetrics::default(),
            rx: LimiterCell::new(config.rx_rate_limiter),
            tx: LimiterCell::new(config.tx_rate_limiter),
        });
        let (claims, to_service, from_service) = match config.detour {
            Some(d) => (Some(d.claims), Some(d.to_service), Some(d.from_service)),
            None => (None, None, None),
        };
        let ends = Ends {
            shared: shared.clone(),
            tap: Arc::new(config.tap),
            claims: claims.map(Arc::new),
            to_service,
            from_service: Arc::new(tokio::sync::Mutex::new(from_service)),
        };
        let supervisor = tokio::spawn(supervise(ends, config.guest));
        Self {
            handle: RelayHandle { shared },
            supervisor,
        }
    }

    /// A handle for counters and limiter updates.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the supervisor drops its JoinSet, which aborts both direction tasks.
        self.supervisor.abort();
    }
}

impl RelayHandle {
    /// The interface's API id.
    pub fn iface_id(&self) -> &str {
        &self.shared.iface_id
    }

    /// The interface's counters (`net_⟨iface_id⟩` keys).
    pub fn metrics(&self) -> &NetMetrics {
        &self.shared.metrics
    }

    /// Applies `PATCH /network-interfaces/{id}`: `None` leaves that direction alone.
    pub fn update_rate_limiters(&self, rx: Option<LimiterConfig>, tx: Option<LimiterConfig>) {
        if let Some(c) = rx {
            self.shared.rx.update(c);
        }
        if let Some(c) = tx {
            self.shared.tx.update(c);
        }
        tracing::debug!(iface = %self.shared.iface_id, ?rx, ?tx, "rate limiters updated");
    }
}

// What the direction tasks of every connection share.
#[derive(Clone)]
struct Ends {
    shared: Arc<Shared>,
    tap: Arc<Tap>,
    claims: Option<Arc<ClaimFn>>,
    to_service: Option<mpsc::Sender<Vec<u8>>>,
    // Outlives each connection: the host→guest task of the next connection takes it over.
    from_service: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>>,
}

async fn supervise(ends: Ends, listener: UnixListener) {
    let iface = ends.shared.iface_id.clone();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%iface, %err, "accepting QEMU's netdev connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tracing::debug!(%iface, "QEMU netdev connected");
        let (rd, wr) = stream.into_split();
        let mut tasks = JoinSet::new();
        tasks.spawn(guest_to_host(ends.clone(), rd));
        tasks.spawn(host_to_guest(ends.clone(), wr));
        if let Some(Ok(Err(err))) = tasks.join_next().await {
            tracing::warn!(%iface, %err, "netdev connection ended");
        }
        // One direction ending means the connection is gone; stop the other before re-accepting.
        tasks.shutdown().await;
        tracing::debug!(%iface, "QEMU netdev disconnected");
    }
}

async fn guest_to_host(ends: Ends, mut rd: OwnedReadHalf) -> io::Result<()> {
    let m = &ends.shared.metrics;
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = match read_frame(&mut rd, &mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(err) => {
                if err.kind() == io::ErrorKind::InvalidData {
                    inc(&m.tx_malformed_frames);
                } else {
                    inc(&m.tx_fails);
                }
                return Err(err);
            }
        };
        let frame = &buf[..n];
        ends.shared
            .tx
            .admit(
                n,
                &m.tx_rate_limiter_throttled,
                &m.tx_rate_limiter_event_count,
            )
            .await;
        add(&m.tx_bytes_count, n as u64);
        inc(&m.tx_packets_count);
        inc(&m.tx_count);

        if let (Some(claims), Some(to_service)) = (&ends.claims, &ends.to_service)
            && claims(frame)
        {
            if to_service.send(frame.to_vec()).await.is_err() {
                tracing::debug!(iface = %ends.shared.iface_id, "frame service gone; frame dropped");
            }
            continue;
        }
        if let Err(err) = ends.tap.write(frame).await {
            // As in Firecracker, a frame the TAP refuses (e.g. EIO while the link is down) is lost.
            inc(&m.tap_write_fails);
            tracing::debug!(iface = %ends.shared.iface_id, %err, "tap write failed");
        }
    }
}

enum Source {
    Tap(usize),
    Service(Vec<u8>),
}

async fn next_service_frame(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn host_to_guest(ends: Ends, mut wr: OwnedWriteHalf) -> io::Result<()> {
    let m = &ends.shared.metrics;
    let mut service = ends.from_service.lock().await;
    let mut buf = vec![0u8; MAX_FRAME];
    let mut scratch = Vec::with_capacity(MAX_FRAME + 4);
    loop {
        let source = tokio::select! {
            // The service's frames first: they answer the guest and are few.
            biased;
            f = next_service_frame(&mut service) => match f {
                Some(f) => Source::Service(f),
                None => {
                    *service = None;
                    continue;
                }
            },
            r = ends.tap.read(&mut buf) => match r {
                Ok(n) => {
                    inc(&m.rx_tap_event_count);
                    Source::Tap(n)
                }
                Err(err) => {
                    inc(&m.tap_read_fails);
                    tracing::debug!(iface = %ends.shared.iface_id, %err, "tap read failed");
                    // Keep a persistent error (tap deleted) from spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let frame: &[u8] = match &source {
            Source::Tap(n) => &buf[..*n],
            Source::Service(f) => f,
        };
        ends.shared
            .rx
            .admit(
                frame.len(),
                &m.rx_rate_limiter_throttled,
                &m.rx_event_rate_limiter_count,
            )
            .await;
        if let Err(err) = write_frame(&mut wr, &mut scratch, frame).await {
            inc(&m.rx_fails);
            return Err(err);
        }
        add(&m.rx_bytes_count, frame.len() as u64);
        inc(&m.rx_packets_count);
        inc(&m.rx_count);
    }
}
