//! Hands parsed requests to the VMM loop (bounded channel, one reply channel per action,
//! a per-action time-out) and answers GETs from the published [`VmView`].

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use squib_vmm::{ActionRequest, ActionResult, VmView, VmmAction, VmmData, VmmHandle};
use tokio::sync::oneshot;

use crate::endpoints::reads;
use crate::request::ParsedRequest;
use crate::response::ApiResponse;

/// Default limit on one action before the client gets squib's 504 (docs/api-contract.md §13).
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an action got no answer from the VMM loop.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("VMM action timed out: {0}")]
    TimedOut(&'static str),
    #[error("The VMM is no longer running.")]
    VmmGone,
}

#[derive(Clone)]
pub struct Controller {
    handle: VmmHandle,
    action_timeout: Duration,
}

impl Controller {
    pub fn new(handle: VmmHandle, action_timeout: Duration) -> Self {
        Self {
            handle,
            action_timeout,
        }
    }

    /// The metrics registry the API's request counters go to.
    pub(crate) fn metrics(&self) -> &Arc<squib_metrics::MetricsRegistry> {
        &self.handle.metrics
    }

    pub(crate) fn view(&self) -> Arc<VmView> {
        self.handle.view.load_full()
    }

    /// Sends one action and waits for its result, at most the action time-out. A timed-out
    /// action keeps running in the VMM loop; only the wait is abandoned.
    pub async fn execute(&self, action: VmmAction) -> Result<ActionResult, DispatchError> {
        let name = action.name();
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.handle
                .actions
                .send(ActionRequest { action, reply })
                .await
                .map_err(|_| DispatchError::VmmGone)?;
            answer.await.map_err(|_| DispatchError::VmmGone)
        };
        tokio::time::timeout(self.action_timeout, exchange)
            .await
            .map_err(|_| DispatchError::TimedOut(name))?
    }

    /// Turns a parsed request into the client's answer.
    pub(crate) async fn respond(&self, request: ParsedRequest) -> ApiResponse {
        if self.handle.actions.is_closed() {
            // The VMM ended on a fatal error (a failed snapshot load) and squib is exiting: as
            // upstream, whose process is gone by then, nothing more is answered.
            return std::future::pending().await;
        }
        match request {
            ParsedRequest::Get(get) => reads::render(get, &self.view()),
            ParsedRequest::Action { action, deprecated } => {
                let response = match self.execute(action).await {
                    Ok(Ok(VmmData::Empty)) => ApiResponse::no_content(),
                    Ok(Err(e)) if e.is_payload_too_large() => {
                        ApiResponse::fault(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
                    }
                    Ok(Err(e)) => ApiResponse::fault(StatusCode::BAD_REQUEST, &e.to_string()),
                    Err(e @ DispatchError::TimedOut(_)) => {
                        ApiResponse::fault(StatusCode::GATEWAY_TIMEOUT, &e.to_string())
                    }
                    Err(e @ DispatchError::VmmGone) => {
                        ApiResponse::fault(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
                    }
                };
                response.with_deprecation(deprecated)
            }
        }
    }
}
