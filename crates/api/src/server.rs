//! The HTTP/1.1 server on the API's Unix socket: hyper for the wire, one handler that applies
//! upstream's HTTP-layer rules and then the route table.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::controller::Controller;
use crate::request::ParsedRequest;
use crate::response::ApiResponse;
use crate::routing::route;
use squib_vmm::VmmAction;

/// Upstream's default for `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// squib's default cap on open API connections (upstream's is 10; see docs/reliability.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A request head (or the first one on a fresh connection) must be complete this long after
/// the connection became idle; this is also how long an idle connection stays open.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body must be complete this long after its head.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which nothing moves (no byte read or written, no request being handled),
/// e.g. a client that stopped reading its responses, is closed after this long.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an `accept` error (`EMFILE` and friends) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Upstream's exact answer to a connection over the cap, after which it closes it.
const SERVER_FULL_REPLY: &[u8] = b"HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\nContent-Length: 40\r\n\r\n{ \"error\": \"Too many open connections\" }";

/// The API server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
    /// Connections open at once; more get upstream's 503 and are closed.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

struct ApiState {
    controller: Controller,
    max_payload: usize,
}

/// Binds the API socket. Like upstream, an existing file is not removed: binding fails instead.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(path)
}

/// [`serve_limited`] with the default connection cap.
pub async fn serve(listener: UnixListener, controller: Controller, max_payload: usize) {
    serve_limited(
        listener,
        controller,
        ServerLimits {
            max_payload,
            ..ServerLimits::default()
        },
    )
    .await
}

/// Serves connections until the task is dropped; it never ends on its own (an `accept` error,
/// e.g. out of descriptors, only pauses accepting). Connections are independent; requests on
/// one connection are answered in order (pipelining included).
pub async fn serve_limited(listener: UnixListener, controller: Controller, limits: ServerLimits) {
    let state = Arc::new(ApiState {
        controller,
        max_payload: limits.max_payload,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut accept_errors = 0u64;
    let mut refused = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (or memory): the pending connection stays queued; accepting
                // again at once would spin. Say so once per burst.
                if accept_errors == 0 {
                    tracing::warn!("The API server cannot accept a connection: {e}; retrying.");
                }
                accept_errors += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if accept_errors > 0 {
            tracing::info!(
                "The API server accepts connections again after {accept_errors} failed attempts."
            );
            accept_errors = 0;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A fresh socket's send buffer is empty: the reply goes out without waiting.
            let _ = stream.try_write(SERVER_FULL_REPLY);
            if refused == 0 {
                tracing::warn!(
                    "The API server refuses connections: {} are open already.",
                    limits.max_connections
                );
            }
            refused += 1;
            continue;
        };
        if refused > 0 {
            tracing::info!("The API server refused {refused} connections while full.");
            refused = 0;
        }
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, state).await;
            drop(slot);
        });
    }
}

/// One connection, closed when its head or body times out or when it stalls.
async fn serve_connection(stream: UnixStream, state: Arc<ApiState>) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        head: LineStartRespelling::head_method(),
        connection: LineStartRespelling::connection_header(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let activity = service_activity.clone();
        let state = state.clone();
        // Busy from the first poll: hyper creates the future of a pipelined request early
        // but polls it only once it can write the answer, which a client that does not read
        // prevents; such a connection must count as stalled, not busy.
        async move {
            let _busy = activity.busy();
            let reply = respond(&state, request.map(Body::new)).await;
            Ok::<_, std::convert::Infallible>(reply.into_http())
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .auto_date_header(false)
        .title_case_headers(true)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        let deadline = activity.last_progress() + STALL_TIMEOUT;
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(e) = outcome {
                    tracing::debug!("API connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                if !activity.is_busy() && activity.last_progress() + STALL_TIMEOUT <= Instant::now() {
                    tracing::debug!("API connection closed: nothing moved for {STALL_TIMEOUT:?}");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    epoch: Instant,
    progress_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            progress_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn stamp(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    fn last_progress(&self) -> Instant {
        self.epoch + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }
}

struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.stamp();
    }
}

/// The connection's stream, stamping [`Activity`] whenever bytes move.
struct Watched {
    inner: UnixStream,
    activity: Arc<Activity>,
    head: LineStartRespelling,
    connection: LineStartRespelling,
}

/// Respells a word at the start of any line in what hyper reads, matched across reads (the
/// stream starts at a line start): hyper then passes the request on as upstream would see it.
#[derive(Debug)]
struct LineStartRespelling {
    /// `\n` and the word without its last letter (lowercase when case is ignored).
    pattern: &'static [u8],
    /// The word's last letter, and what it becomes.
    last: u8,
    replacement: u8,
    ignore_case: bool,
    /// How much of `pattern` the bytes read so far end with.
    matched: usize,
}

impl LineStartRespelling {
    /// `HEAD` as `HEAd`. Upstream refuses `HEAD` like any other unknown method, with its
    /// 110-byte body; hyper never writes a body in answer to a `HEAD`, but passes the extension
    /// method `HEAd` through untouched, so squib answers it as upstream does. Any line starting
    /// `HEAD` is rewritten: a header name is case-insensitive, and a request body holding a
    /// line break is not JSON, which fails with the same text whatever the letter's case.
    fn head_method() -> Self {
        Self {
            pattern: b"\nHEA",
            last: b'D',
            replacement: b'd',
            ignore_case: false,
            matched: 1,
        }
    }

    /// A `Connection` header name as `Connectiox`. Upstream ignores the header: it answers
    /// `Connection: keep-alive` and keeps the connection open even after `Connection: close`,
    /// where hyper would add `close` to the answer and then close. Matched case-insensitively;
    /// as for `HEAD`, a JSON body cannot hold such a line (a `c` starts no JSON token, and the
    /// error is found before the rewritten byte).
    fn connection_header() -> Self {
        Self {
            pattern: b"\nconnectio",
            last: b'n',
            replacement: b'x',
            ignore_case: true,
            matched: 1,
        }
    }

    fn rewrite(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            let seen = if self.ignore_case {
                byte.to_ascii_lowercase()
            } else {
                *byte
            };
            if self.matched == self.pattern.len() && seen == self.last {
                *byte = self.replacement;
                self.matched = 0;
            } else if self.matched < self.pattern.len() && seen == self.pattern[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(*byte == b'\n');
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.stamp();
            let this = &mut *self;
            this.head.rewrite(&mut buf.filled_mut()[before..]);
            this.connection.rewrite(&mut buf.filled_mut()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.stamp();
        }
        polled
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Upstream's log spelling of a method: `Get`, `Put`, `Patch`, `Delete`.
fn method_for_log(method: &str) -> String {
    let mut chars = method.chars();
    chars
        .next()
        .map(|first| first.to_string() + &chars.as_str().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn respond(state: &ApiState, request: Request) -> ApiResponse {
    let method = request.method().as_str().to_string();
    if !matches!(method.as_str(), "GET" | "PUT" | "PATCH" | "DELETE") {
        return ApiResponse::http_layer_error("Invalid HTTP Method: Unsupported HTTP method.");
    }
    let too_large = |size: &dyn std::fmt::Display| {
        ApiResponse::http_layer_error(&format!(
            "Request payload with size {size} is larger than the limit of {} allowed by server.",
            state.max_payload
        ))
    };
    if let Some(value) = request.headers().get(header::CONTENT_LENGTH) {
        let raw = String::from_utf8_lossy(value.as_bytes()).to_string();
        match raw.trim().parse::<u32>() {
            Ok(size) if size as usize > state.max_payload => return too_large(&size),
            Ok(_) => {}
            Err(_) => {
                return ApiResponse::http_layer_error(&format!(
                    "Invalid header. Reason: Invalid value. Key:Content-Length; Value: {raw}"
                ));
            }
        }
    }
    let path = absolute_path(request.uri()).to_string();
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), state.max_payload).collect(),
    )
    .await;
    let Ok(collected) = collected else {
        // squib-only: upstream waits for a body for ever. The connection is closed after this.
        return ApiResponse::http_layer_error(&format!(
            "Request body not received within {} seconds.",
            BODY_TIMEOUT.as_secs()
        ));
    };
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(&"unknown"),
        // Upstream answers a socket read error with a 500 whose body is the OS error text.
        Err(e) => {
            return ApiResponse {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                deprecation: false,
                body: Some(e.to_string()),
            };
        }
    };

    log_request(&method, &path, &body);
    let routed = route(&method, &path, &body);
    let metrics = state.controller.metrics();
    if let Some(metric) = routed.metric {
        metric.record(metrics, routed.parsed.is_ok());
    }
    let reply = match routed.parsed {
        Ok(parsed) => {
            // Pause and resume latencies at the API level (docs/api-contract.md §10.2 `latencies_us`).
            let latency = match &parsed {
                ParsedRequest::Action { deprecated, action } => {
                    if *deprecated {
                        metrics
                            .values
                            .deprecated_api
                            .deprecated_http_api_calls
                            .inc();
                    }
                    let latencies = &metrics.values.latencies_us;
                    match action {
                        VmmAction::Pause => Some(&latencies.pause_vm),
                        VmmAction::Resume => Some(&latencies.resume_vm),
                        _ => None,
                    }
                }
                ParsedRequest::Get(_) => None,
            };
            let started = std::time::Instant::now();
            let reply = state.controller.respond(parsed).await;
            if let Some(latency) = latency
                && reply.status.is_success()
            {
                latency.set(started.elapsed().as_micros() as u64);
            }
            reply
        }
        Err(e) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    log_reply(&reply);
    reply
}

/// The path the route table sees, as upstream's HTTP layer takes it from the request target:
/// an origin-form target as it is (query string included), the path of an `http://` target,
/// and nothing at all (the root) for any other target, such as `*` or another scheme.
fn absolute_path(uri: &axum::http::Uri) -> &str {
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    match uri.scheme_str() {
        Some("http") => path,
        Some(_) => "",
        None if path.starts_with('/') => path,
        None => "",
    }
}

fn log_request(method: &str, path: &str, body: &[u8]) {
    let method = method_for_log(method);
    if body.is_empty() || path == "/mmds" {
        tracing::info!("The API server received a {method} request on {path:?}.");
    } else if path == "/cpu-config" && !tracing::enabled!(tracing::Level::DEBUG) {
        tracing::info!(
            "The API server received a {method} request on {path:?}. To view the CPU template received by the API, configure log-level to DEBUG."
        );
    } else {
        let body = std::str::from_utf8(body).unwrap_or("inconvertible to UTF-8");
        tracing::info!(
            "The API server received a {method} request on {path:?} with body {body:?}."
        );
    }
}

fn log_reply(reply: &ApiResponse) {
    let status = reply.status;
    let reason = status.canonical_reason().unwrap_or("");
    if status.is_success() {
        tracing::info!(
            "The request was executed successfully. Status code: {} {reason}.",
            status.as_u16()
        );
    } else {
        let message = reply
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| {
                v.get("fault_message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        tracing::error!(
            "Received Error. Status code: {} {reason}. Message: {message}",
            status.as_u16()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(chunks: &[&str]) -> String {
        let mut head = LineStartRespelling::head_method();
        let mut out = String::new();
        for chunk in chunks {
            let mut bytes = chunk.as_bytes().to_vec();
            head.rewrite(&mut bytes);
            out.push_str(std::str::from_utf8(&bytes).unwrap());
        }
        out
    }

    #[test]
    fn head_is_spelled_as_an_extension_method() {
        assert_eq!(
            rewritten(&["HEAD / HTTP/1.1\r\n\r\n"]),
            "HEAd / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            rewritten(&["GET / HTTP/1.1\r\n\r\nHE", "AD /x HTTP/1.1\r\n"]),
            "GET / HTTP/1.1\r\n\r\nHEAd /x HTTP/1.1\r\n"
        );
        assert_eq!(
            rewritten(&["GET / HTTP/1.1\r", "\n", "H", "E", "A", "D"]),
            "GET / HTTP/1.1\r\nHEAd"
        );
        // Only at a line start, and only the method's spelling.
        assert_eq!(
            rewritten(&["GET /HEAD HTTP/1.1\r\n"]),
            "GET /HEAD HTTP/1.1\r\n"
        );
        assert_eq!(rewritten(&["HHEAD / HTTP/1.1"]), "HHEAD / HTTP/1.1");
        assert_eq!(rewritten(&["\n\nHEAD"]), "\n\nHEAd");
        assert_eq!(rewritten(&["HEAT\nHEAD"]), "HEAT\nHEAd");
    }

    #[test]
    fn connection_header_is_hidden_from_hyper() {
        let respelled = |chunks: &[&str]| {
            let mut matcher = LineStartRespelling::connection_header();
            let mut out = String::new();
            for chunk in chunks {
                let mut bytes = chunk.as_bytes().to_vec();
                matcher.rewrite(&mut bytes);
                out.push_str(std::str::from_utf8(&bytes).unwrap());
            }
            out
        };
        assert_eq!(
            respelled(&["GET / HTTP/1.1\r\nConnection: close\r\n\r\n"]),
            "GET / HTTP/1.1\r\nConnectiox: close\r\n\r\n"
        );
        assert_eq!(
            respelled(&["GET / HTTP/1.1\r\ncONNECT", "IO", "N: close\r\n"]),
            "GET / HTTP/1.1\r\ncONNECTIOx: close\r\n"
        );
        // Only a header name at a line start.
        assert_eq!(
            respelled(&["GET /connection HTTP/1.1\r\nX-Connection: close\r\n"]),
            "GET /connection HTTP/1.1\r\nX-Connection: close\r\n"
        );
    }

    #[test]
    fn request_targets_as_upstream_reads_them() {
        let path = |target: &str| absolute_path(&target.parse().unwrap()).to_string();
        assert_eq!(path("/machine-config?x=1"), "/machine-config?x=1");
        assert_eq!(path("http://localhost/drives/a"), "/drives/a");
        assert_eq!(path("*"), "");
        assert_eq!(path("https://localhost/drives/a"), "");
    }

    #[test]
    fn log_method_spelling() {
        assert_eq!(method_for_log("PATCH"), "Patch");
        assert_eq!(method_for_log("GET"), "Get");
    }
}
