//! The bytes a client sees: status, upstream's headers in upstream's order, and bodies.

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// A reply before it is rendered to HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiResponse {
    pub(crate) status: StatusCode,
    /// `Deprecation: true`, when the request used a deprecated field or version (docs/api-contract.md §3.6).
    pub(crate) deprecation: bool,
    /// `None` renders no Content-Type and no Content-Length (upstream's 204).
    pub(crate) body: Option<String>,
}

#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

impl ApiResponse {
    pub(crate) fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            deprecation: false,
            body: None,
        }
    }

    pub(crate) fn json<T: Serialize>(value: &T) -> Self {
        Self::json_text(serde_json::to_string(value).expect("API response types always serialize"))
    }

    /// A 200 whose body is already compact JSON.
    pub(crate) fn json_text(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            deprecation: false,
            body: Some(body),
        }
    }

    /// `{"fault_message":"…"}` with serde_json escaping.
    pub(crate) fn fault(status: StatusCode, message: &str) -> Self {
        let body = serde_json::to_string(&Fault {
            fault_message: message,
        })
        .expect("fault serializes");
        Self {
            status,
            deprecation: false,
            body: Some(body),
        }
    }

    /// The HTTP-layer error body of docs/api-contract.md §2.3: not valid JSON (a raw LF in the string).
    pub(crate) fn http_layer_error(message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            deprecation: false,
            body: Some(format!(
                "{{ \"error\": \"{message}\nAll previous unanswered requests will be dropped.\" }}"
            )),
        }
    }

    pub(crate) fn with_deprecation(mut self, deprecation: bool) -> Self {
        self.deprecation = deprecation;
        self
    }

    /// Renders the reply with `Server`, `Connection`, `Deprecation`, `Content-Type`, `Content-Length`
    /// in that order; the HTTP stack writes headers in insertion order.
    pub(crate) fn into_http(self) -> Response<Body> {
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::SERVER, HeaderValue::from_static("Firecracker API"))
            .header(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        if self.deprecation {
            builder = builder.header("Deprecation", HeaderValue::from_static("true"));
        }
        let body = match self.body {
            Some(text) => {
                builder = builder
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )
                    .header(header::CONTENT_LENGTH, text.len());
                Body::from(text)
            }
            None => Body::empty(),
        };
        builder.body(body).expect("static headers are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_is_escaped_compact_json() {
        let r = ApiResponse::fault(StatusCode::BAD_REQUEST, "a \"quoted\" text");
        assert_eq!(r.body.unwrap(), r#"{"fault_message":"a \"quoted\" text"}"#);
    }

    #[test]
    fn http_layer_error_has_raw_newline() {
        let r = ApiResponse::http_layer_error("Invalid HTTP Method: Unsupported HTTP method.");
        let body = r.body.unwrap();
        assert_eq!(body.len(), 110);
        assert!(body.contains("method.\nAll previous"));
    }

    #[test]
    fn header_order() {
        let resp = ApiResponse::json_text("{}".into())
            .with_deprecation(true)
            .into_http();
        let names: Vec<_> = resp
            .headers()
            .keys()
            .map(|k| k.as_str().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "server",
                "connection",
                "deprecation",
                "content-type",
                "content-length"
            ]
        );
        let resp = ApiResponse::no_content().into_http();
        assert_eq!(resp.headers().len(), 2);
    }
}
