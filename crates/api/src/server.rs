//! The HTTP/1.1 server on the API's Unix socket: hyper for the wire, an axum router whose
//! one handler applies upstream's HTTP-layer rules and then the route table.

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;

use crate::controller::Controller;
use crate::response::ApiResponse;
use crate::routing::{ParsedRequest, parse_request};
use squib_vmm::VmmAction;

/// Upstream's default for `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

struct ApiState {
    controller: Controller,
    max_payload: usize,
}

/// Binds the API socket. Like upstream, an existing file is not removed: binding fails instead.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(path)
}

/// Serves connections until the task is dropped. Connections are independent; requests on
/// one connection are answered in order (pipelining included).
pub async fn serve(
    listener: UnixListener,
    controller: Controller,
    max_payload: usize,
) -> io::Result<()> {
    let state = Arc::new(ApiState {
        controller,
        max_payload,
    });
    let router = Router::new().fallback(handle).with_state(state);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .auto_date_header(false)
                .title_case_headers(true)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("API connection ended: {e}");
            }
        });
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

async fn handle(State(state): State<Arc<ApiState>>, request: Request) -> Response<Body> {
    respond(&state, request).await.into_http()
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
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body = match Limited::new(request.into_body(), state.max_payload)
        .collect()
        .await
    {
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
    let parsed = parse_request(&method, &path, &body);
    let metrics = state.controller.metrics();
    crate::request_metrics::record(metrics, &method, &path, !body.is_empty(), parsed.is_ok());
    let reply = match parsed {
        Ok(parsed) => {
            // Pause and resume latencies at the API level (contract §10.2 `latencies_us`).
            let latency = match &parsed {
                ParsedRequest::Action { deprecated, action } => {
                    if *deprecated {
                        metrics.inc("deprecated_api", "deprecated_http_api_calls");
                    }
                    match action {
                        VmmAction::Pause => Some("pause_vm"),
                        VmmAction::Resume => Some("resume_vm"),
                        _ => None,
                    }
                }
                ParsedRequest::Get(_) => None,
            };
            let started = std::time::Instant::now();
            let reply = state.controller.respond(parsed).await;
            if let Some(key) = latency
                && reply.status.is_success()
            {
                metrics.store("latencies_us", key, started.elapsed().as_micros() as u64);
            }
            reply
        }
        Err(e) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    log_reply(&reply);
    reply
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

    #[test]
    fn log_method_spelling() {
        assert_eq!(method_for_log("PATCH"), "Patch");
        assert_eq!(method_for_log("GET"), "Get");
    }
}
