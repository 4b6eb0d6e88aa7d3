//! What the MMDS answers to a parsed request (docs/api-contract.md §8.4–8.6): tokens, V1/V2 access rules,
//! JSON-pointer lookup and the IMDS/JSON renderings.
//!
//! The data lives with the VMM, which publishes every change into an [`MmdsData`] handle; this
//! module only ever reads a snapshot of it, so a guest request never waits for the API.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::http::{MediaType, Method, Request, Response};
use crate::metrics::{MmdsMetrics, inc};
use crate::token::TokenAuthority;

/// The shared data store handle: the VMM owns the document and publishes each new version with
/// `handle.store(Arc::new(value))`; the MMDS loads it per request. `Value::Null` means nothing
/// has been stored yet (`PUT /mmds` never happened), which the guest sees as §8.6 says.
pub type MmdsData = Arc<ArcSwap<Value>>;

/// A fresh, empty data handle.
pub fn new_data_handle() -> MmdsData {
    Arc::new(ArcSwap::from_pointee(Value::Null))
}

/// `version` of `PUT /mmds/config`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MmdsVersion {
    /// Tokens optional.
    #[default]
    V1,
    /// Tokens required for GET.
    V2,
}

/// The parts of `PUT /mmds/config` that shape answers (the address and the bound interfaces are
/// the stack's and the net device's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmdsConfig {
    /// V1 or V2.
    pub version: MmdsVersion,
    /// Always answer in IMDS format.
    pub imds_compat: bool,
    /// The MMDS IPv4 address.
    pub ipv4_address: Ipv4Addr,
}

/// The default MMDS address.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

impl Default for MmdsConfig {
    fn default() -> Self {
        Self {
            version: MmdsVersion::V1,
            imds_compat: false,
            ipv4_address: DEFAULT_IPV4,
        }
    }
}

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["X-metadata-token", "X-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds",
];
const FORWARDED_FOR: &str = "X-Forwarded-For";

/// The MMDS of one microVM: data handle, configuration, token authority and counters.
#[derive(Debug)]
pub struct Mmds {
    data: MmdsData,
    config: ArcSwap<MmdsConfig>,
    tokens: Mutex<TokenAuthority>,
    metrics: MmdsMetrics,
}

impl Mmds {
    /// An MMDS reading `data`, for the microVM `instance_id`.
    pub fn new(data: MmdsData, config: MmdsConfig, instance_id: &str) -> Self {
        Self {
            data,
            config: ArcSwap::from_pointee(config),
            tokens: Mutex::new(TokenAuthority::new(instance_id)),
            metrics: MmdsMetrics::default(),
        }
    }

    /// The data handle the VMM publishes into.
    pub fn data(&self) -> &MmdsData {
        &self.data
    }

    /// The current configuration.
    pub fn config(&self) -> MmdsConfig {
        **self.config.load()
    }

    /// Replaces the configuration (e.g. restored from a snapshot).
    pub fn set_config(&self, config: MmdsConfig) {
        self.config.store(Arc::new(config));
    }

    /// Rebinds tokens to another instance id; tokens issued before stop working.
    pub fn set_instance_id(&self, instance_id: &str) {
        self.lock_tokens().set_instance_id(instance_id);
    }

    /// The `mmds` counters.
    pub fn metrics(&self) -> &MmdsMetrics {
        &self.metrics
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, TokenAuthority> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to one request at monotonic time `now`.
    pub fn respond(&self, req: &Request, now: Instant) -> Response {
        if req.path.is_empty() {
            return text(req, 400, "Invalid URI.".into());
        }
        match req.method {
            Method::Get => self.get(req, now),
            Method::Put => self.put_token(req, now),
            Method::Patch | Method::Delete => {
                let mut r = text(req, 405, "Not allowed HTTP method.".into());
                r.allow_get_put = true;
                r
            }
        }
    }

    fn get(&self, req: &Request, now: Instant) -> Response {
        let token = req.header(&TOKEN_HEADERS).map(|(_, v)| v);
        let valid = token.is_some_and(|t| self.lock_tokens().is_valid(t, now));
        match (self.config().version, token, valid) {
            (_, _, true) => {}
            (MmdsVersion::V1, None, _) => inc(&self.metrics.rx_no_token),
            (MmdsVersion::V1, Some(_), false) => inc(&self.metrics.rx_invalid_token),
            (MmdsVersion::V2, None, _) => {
                inc(&self.metrics.rx_no_token);
                return text(
                    req,
                    401,
                    "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token.".into(),
                );
            }
            (MmdsVersion::V2, Some(_), false) => {
                inc(&self.metrics.rx_invalid_token);
                return text(req, 401, "MMDS token not valid.".into());
            }
        }
        self.read(req)
    }

    fn read(&self, req: &Request) -> Response {
        let pointer = normalize(&req.path);
        let pointer = pointer.strip_suffix('/').unwrap_or(&pointer);
        let data = self.data.load();
        let Some(node) = data.pointer(pointer) else {
            return text(req, 404, format!("Resource not found: {}.", req.path));
        };
        let json = req.accept == MediaType::ApplicationJson && !self.config().imds_compat;
        let body = if json {
            Ok(node.to_string())
        } else {
            imds(node)
        };
        match body {
            // The content type follows Accept even when imds_compat forces IMDS (upstream quirk).
            Ok(body) => Response::new(req.version, 200, req.accept, body),
            Err(()) => text(
                req,
                501,
                "Cannot retrieve value. The value has an unsupported type.".into(),
            ),
        }
    }

    fn put_token(&self, req: &Request, now: Instant) -> Response {
        if let Some((name, _)) = req.header(&[FORWARDED_FOR]) {
            return text(
                req,
                400,
                format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
            );
        }
        if normalize(&req.path) != TOKEN_PATH {
            return text(req, 404, format!("Resource not found: {}.", req.path));
        }
        let Some((name, value)) = req.header(&TTL_HEADERS) else {
            return text(
                req,
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.".into(),
            );
        };
        let Ok(ttl) = value.parse::<u32>() else {
            return text(
                req,
                400,
                format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
            );
        };
        match self.lock_tokens().generate(ttl, now) {
            Ok(token) => {
                let mut r = Response::new(req.version, 200, MediaType::PlainText, token);
                r.custom.push((name.to_owned(), ttl.to_string()));
                r
            }
            Err(err) => text(req, 400, err.to_string()),
        }
    }
}

fn text(req: &Request, status: u16, body: String) -> Response {
    Response::new(req.version, status, MediaType::PlainText, body)
}

// `//` collapses to `/`, repeatedly.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

// IMDS rendering: an object lists its keys (sorted; sub-objects get a `/`), a string is itself,
// anything else has no IMDS form.
fn imds(node: &Value) -> Result<String, ()> {
    match node {
        Value::Object(map) => {
            let mut keys: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect();
            keys.sort();
            Ok(keys.join("\n"))
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::http::{Parsed, parse};

    fn mmds(version: MmdsVersion, imds_compat: bool) -> Mmds {
        let data = new_data_handle();
        data.store(Arc::new(json!({
            "latest": {"meta-data": {"ami-id": "ami-123", "reservation-id": "r-1"}},
            "age": 43,
            "list": [1, 2],
            "flag": true,
            "empty": {},
            "name": {"first": "John"},
        })));
        Mmds::new(
            data,
            MmdsConfig {
                version,
                imds_compat,
                ..MmdsConfig::default()
            },
            "vm-1",
        )
    }

    fn ask(m: &Mmds, raw: &str, now: Instant) -> String {
        let Parsed::Complete { request, .. } = parse(raw.as_bytes()) else {
            panic!("incomplete {raw:?}")
        };
        let resp = match request {
            Ok(r) => m.respond(&r, now),
            Err(e) => e.to_response(),
        };
        String::from_utf8(resp.to_bytes()).unwrap()
    }

    fn reply(version: &str, status: u16, ctype: &str, extra: &str, body: &str) -> String {
        format!(
            "{version} {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn token(m: &Mmds, ttl: u32, now: Instant) -> String {
        let raw = ask(
            m,
            &format!(
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {ttl}\r\n\r\n"
            ),
            now,
        );
        raw.rsplit("\r\n\r\n").next().unwrap().to_owned()
    }

    #[test]
    fn v1_get_renders_imds_and_json() {
        let m = mmds(MmdsVersion::V1, false);
        let t = Instant::now();
        assert_eq!(
            ask(&m, "GET / HTTP/1.1\r\n\r\n", t),
            reply(
                "HTTP/1.1",
                200,
                "text/plain",
                "",
                "age\nempty/\nflag\nlatest/\nlist\nname/"
            )
        );
        assert_eq!(
            ask(
                &m,
                "GET /latest//meta-data/ HTTP/1.0\r\nAccept: */*\r\n\r\n",
                t
            ),
            reply("HTTP/1.0", 200, "text/plain", "", "ami-id\nreservation-id")
        );
        assert_eq!(
            ask(
                &m,
                "GET http://169.254.169.254/latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
                t
            ),
            reply("HTTP/1.1", 200, "text/plain", "", "ami-123")
        );
        assert_eq!(
            ask(
                &m,
                "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                t
            ),
            reply("HTTP/1.1", 200, "application/json", "", "\"ami-123\"")
        );
        assert_eq!(
            ask(
                &m,
                "GET /name HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                200,
                "application/json",
                "",
                r#"{"first":"John"}"#
            )
        );
        assert_eq!(
            ask(&m, "GET /empty HTTP/1.1\r\n\r\n", t),
            reply("HTTP/1.1", 200, "text/plain", "", "")
        );
        for path in ["/age", "/list", "/flag"] {
            assert_eq!(
                ask(&m, &format!("GET {path} HTTP/1.1\r\n\r\n"), t),
                reply(
                    "HTTP/1.1",
                    501,
                    "text/plain",
                    "",
                    "Cannot retrieve value. The value has an unsupported type."
                )
            );
        }
        assert_eq!(
            ask(
                &m,
                "GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                t
            ),
            reply("HTTP/1.1", 200, "application/json", "", "43")
        );
        // The query string is part of the pointer; the original URI is echoed.
        assert_eq!(
            ask(&m, "GET /name//first?x HTTP/1.1\r\n\r\n", t),
            reply(
                "HTTP/1.1",
                404,
                "text/plain",
                "",
                "Resource not found: /name//first?x."
            )
        );
        // V1 serves without a token, counting it.
        assert_eq!(m.metrics().rx_no_token.load(Ordering::Relaxed), 11);
        let resp = ask(
            &m,
            "GET /name/first HTTP/1.1\r\nX-metadata-token: bogus\r\n\r\n",
            t,
        );
        assert!(resp.ends_with("\r\n\r\nJohn"));
        assert_eq!(m.metrics().rx_invalid_token.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn imds_compat_forces_imds_but_content_type_copies_accept() {
        let m = mmds(MmdsVersion::V1, true);
        let t = Instant::now();
        assert_eq!(
            ask(
                &m,
                "GET /name HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                t
            ),
            reply("HTTP/1.1", 200, "application/json", "", "first")
        );
    }

    #[test]
    fn empty_store() {
        let m = Mmds::new(new_data_handle(), MmdsConfig::default(), "vm");
        let t = Instant::now();
        assert_eq!(
            ask(&m, "GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n", t),
            reply("HTTP/1.1", 200, "application/json", "", "null")
        );
        assert!(ask(&m, "GET / HTTP/1.1\r\n\r\n", t).starts_with("HTTP/1.1 501 "));
        assert!(ask(&m, "GET /a HTTP/1.1\r\n\r\n", t).starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn methods_and_uris() {
        let m = mmds(MmdsVersion::V1, false);
        let t = Instant::now();
        for method in ["PATCH", "DELETE"] {
            assert_eq!(
                ask(&m, &format!("{method} / HTTP/1.0\r\n\r\n"), t),
                reply(
                    "HTTP/1.0",
                    405,
                    "text/plain",
                    "Allow: GET, PUT\r\n",
                    "Not allowed HTTP method."
                )
            );
        }
        assert_eq!(
            ask(&m, "POST / HTTP/1.0\r\n\r\n", t),
            reply(
                "HTTP/1.1",
                501,
                "application/json",
                "",
                "Unsupported HTTP method."
            )
        );
        assert_eq!(
            ask(&m, "GET / HTTP/3\r\n\r\n", t),
            reply(
                "HTTP/1.1",
                501,
                "application/json",
                "",
                "Unsupported HTTP version."
            )
        );
        assert_eq!(
            ask(&m, "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", t),
            reply("HTTP/1.1", 400, "application/json", "", "Invalid request.")
        );
        assert_eq!(
            ask(&m, "GET foo HTTP/1.0\r\n\r\n", t),
            reply("HTTP/1.0", 400, "text/plain", "", "Invalid URI.")
        );
    }

    #[test]
    fn token_requests() {
        let m = mmds(MmdsVersion::V1, false);
        let t = Instant::now();
        // X-Forwarded-For comes first, with the name as sent.
        assert_eq!(
            ask(
                &m,
                "PUT /other HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                400,
                "text/plain",
                "",
                "Invalid header. Reason: Unsupported header name. Key: x-forwarded-for"
            )
        );
        assert_eq!(
            ask(
                &m,
                "PUT /latest/api/tokens HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                404,
                "text/plain",
                "",
                "Resource not found: /latest/api/tokens."
            )
        );
        assert_eq!(
            ask(&m, "PUT /latest/api/token HTTP/1.1\r\n\r\n", t),
            reply(
                "HTTP/1.1",
                400,
                "text/plain",
                "",
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime."
            )
        );
        assert_eq!(
            ask(
                &m,
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: -1\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                400,
                "text/plain",
                "",
                "Invalid header. Reason: Invalid value. Key:X-aws-ec2-metadata-token-ttl-seconds; Value:-1"
            )
        );
        assert_eq!(
            ask(
                &m,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                400,
                "text/plain",
                "",
                "Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."
            )
        );
        assert_eq!(
            ask(
                &m,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
                t
            ),
            reply(
                "HTTP/1.1",
                400,
                "text/plain",
                "",
                "Invalid time to live value provided for token: 21601. Please provide a value between 1 and 21600."
            )
        );
        // Success: the TTL header echoed under the client's spelling, normalised number.
        let raw = ask(
            &m,
            "PUT //latest//api/token HTTP/1.0\r\nx-metadata-token-TTL-seconds: 0021600\r\n\r\n",
            t,
        );
        let tok = raw.rsplit("\r\n\r\n").next().unwrap();
        assert_eq!(tok.len(), 48);
        assert_eq!(
            raw,
            reply(
                "HTTP/1.0",
                200,
                "text/plain",
                "x-metadata-token-TTL-seconds: 21600\r\n",
                tok
            )
        );
    }

    #[test]
    fn v2_requires_a_live_token_checked_before_the_path() {
        let m = mmds(MmdsVersion::V2, false);
        let t0 = Instant::now();
        assert_eq!(
            ask(&m, "GET /nope HTTP/1.1\r\n\r\n", t0),
            reply(
                "HTTP/1.1",
                401,
                "text/plain",
                "",
                "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token."
            )
        );
        assert_eq!(
            ask(
                &m,
                "GET /nope HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n",
                t0
            ),
            reply("HTTP/1.1", 401, "text/plain", "", "MMDS token not valid.")
        );
        let tok = token(&m, 10, t0);
        let get = format!("GET /name/first HTTP/1.1\r\nX-aws-ec2-metadata-token: {tok}\r\n\r\n");
        assert_eq!(
            ask(&m, &get, t0 + Duration::from_secs(9)),
            reply("HTTP/1.1", 200, "text/plain", "", "John")
        );
        assert_eq!(
            ask(&m, &get, t0 + Duration::from_secs(10)),
            reply("HTTP/1.1", 401, "text/plain", "", "MMDS token not valid.")
        );
        assert_eq!(m.metrics().rx_no_token.load(Ordering::Relaxed), 1);
        assert_eq!(m.metrics().rx_invalid_token.load(Ordering::Relaxed), 2);
        // A new instance id voids earlier tokens.
        let tok = token(&m, 10, t0);
        m.set_instance_id("vm-2");
        let get = format!("GET / HTTP/1.1\r\nX-metadata-token: {tok}\r\n\r\n");
        assert!(ask(&m, &get, t0).starts_with("HTTP/1.1 401 "));
    }

    #[test]
    fn the_store_is_read_live() {
        let m = mmds(MmdsVersion::V1, false);
        let t = Instant::now();
        m.data().store(Arc::new(json!({"k": "v2"})));
        assert!(ask(&m, "GET /k HTTP/1.1\r\n\r\n", t).ends_with("\r\n\r\nv2"));
    }
}
