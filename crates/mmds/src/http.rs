//! The guest-facing HTTP/1.x wire format of the MMDS (docs/api-contract.md §8.3 and §2.1): request parsing
//! with micro_http's rules and response bytes with Firecracker's exact framing.
//!
//! Hand-written rather than built on a general HTTP parser because the rules to reproduce are
//! stricter and odder than any parser's defaults: a request ends at the first blank line even
//! when that line is a bare LF, yet a bare LF inside the head is an error; only four methods and
//! two versions exist; the query string stays in the path.

/// The largest request head a connection buffers; more resets the connection.
pub const MAX_REQUEST: usize = 2500;

/// Methods micro_http knows; anything else is a parse error (501).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
}

/// `HTTP/1.0` or `HTTP/1.1`; responses copy it (parse errors aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// The media types micro_http recognises; `Accept` defaults to plain text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    /// `text/plain`
    PlainText,
    /// `application/json`
    ApplicationJson,
}

impl MediaType {
    fn as_str(self) -> &'static str {
        match self {
            MediaType::PlainText => "text/plain",
            MediaType::ApplicationJson => "application/json",
        }
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The absolute path: scheme and host removed, query kept, no decoding. Empty when the
    /// request URI was neither `/…` nor `http://…/…`.
    pub path: String,
    /// The version, copied into the response.
    pub version: Version,
    /// `Accept`, when exactly one of the recognised types; plain text otherwise.
    pub accept: MediaType,
    /// Every other header as sent (name spelling kept); on a duplicate the last one wins.
    pub custom: Vec<(String, String)>,
}

impl Request {
    /// The first of `names` present (case-insensitively), with the name as the client spelled it.
    pub fn header<'a>(&'a self, names: &[&str]) -> Option<(&'a str, &'a str)> {
        names.iter().find_map(|want| {
            self.custom
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(want))
                .map(|(k, v)| (k.as_str(), v.as_str()))
        })
    }
}

/// Why a request could not be parsed; the Display text is the response body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Missing request-line part, bare LF line ends, a body, …
    #[error("Invalid request.")]
    InvalidRequest,
    /// A method other than the four micro_http knows.
    #[error("Unsupported HTTP method.")]
    UnsupportedMethod,
    /// A version other than HTTP/1.0 or HTTP/1.1.
    #[error("Unsupported HTTP version.")]
    UnsupportedVersion,
    /// `GET  HTTP/1.1`.
    #[error("Invalid URI: Empty URI not allowed.")]
    EmptyUri,
    /// Bytes that are not UTF-8 in the URI.
    #[error("Invalid URI: Cannot parse URI as UTF-8.")]
    UriNotUtf8,
    /// A header line without a colon.
    #[error("Invalid header. Reason: Header is incorrectly formatted. Key: {0}")]
    HeaderFormat(String),
    /// A header line that is not UTF-8.
    #[error("Invalid header. Reason: Header contains invalid characters. Key: {0}")]
    HeaderNotUtf8(String),
    /// A `Content-Length` that is not a u32.
    #[error("Invalid header. Reason: Invalid value. Key:Content-Length; Value:{0}")]
    ContentLength(String),
}

impl ParseError {
    /// Parse errors answer with an HTTP/1.1 status line, plain text under a JSON content type
    /// (upstream's default), and 501 for the method and version cases.
    pub fn to_response(&self) -> Response {
        let status = match self {
            ParseError::UnsupportedMethod | ParseError::UnsupportedVersion => 501,
            _ => 400,
        };
        Response::new(
            Version::Http11,
            status,
            MediaType::ApplicationJson,
            self.to_string(),
        )
    }
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No blank line yet: wait for more bytes.
    Incomplete,
    /// A whole head of `consumed` bytes, well-formed or not.
    Complete {
        /// Bytes to drop from the buffer.
        consumed: usize,
        /// The request, or why it is not one.
        request: Result<Request, ParseError>,
    },
}

/// Looks for one request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some((head_end, consumed)) = find_head_end(buf) else {
        return Parsed::Incomplete;
    };
    Parsed::Complete {
        consumed,
        request: parse_head(&buf[..head_end], &buf[head_end..consumed]),
    }
}

// The head ends at the first LF followed by LF or CRLF. Returns (end of the last header line
// without its line end, end of the blank line).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some((lf + 1, lf + 2)),
            Some([b'\r', b'\n', ..]) => return Some((lf + 1, lf + 3)),
            _ => i = lf + 1,
        }
    }
    None
}

fn parse_head(head: &[u8], terminator: &[u8]) -> Result<Request, ParseError> {
    // Every line, the blank one included, must end in CRLF.
    if terminator != b"\r\n" {
        return Err(ParseError::InvalidRequest);
    }
    let mut lines = Vec::new();
    let mut rest = head;
    while !rest.is_empty() {
        let lf = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(ParseError::InvalidRequest)?;
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(ParseError::InvalidRequest);
        }
        lines.push(&rest[..lf - 1]);
        rest = &rest[lf + 1..];
    }
    let (request_line, header_lines) = lines.split_first().ok_or(ParseError::InvalidRequest)?;

    let mut parts = request_line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::InvalidRequest);
    };
    let method = match method {
        b"GET" => Method::Get,
        b"PUT" => Method::Put,
        b"PATCH" => Method::Patch,
        b"DELETE" => Method::Delete,
        _ => return Err(ParseError::UnsupportedMethod),
    };
    if uri.is_empty() {
        return Err(ParseError::EmptyUri);
    }
    let uri = std::str::from_utf8(uri).map_err(|_| ParseError::UriNotUtf8)?;
    let version = match version {
        b"HTTP/1.0" => Version::Http10,
        b"HTTP/1.1" => Version::Http11,
        _ => return Err(ParseError::UnsupportedVersion),
    };

    let mut accept = MediaType::PlainText;
    let mut custom: Vec<(String, String)> = Vec::new();
    for line in header_lines {
        let line =
            std::str::from_utf8(line).map_err(|e| ParseError::HeaderNotUtf8(e.to_string()))?;
        let (raw_name, raw_value) = line
            .split_once(':')
            .ok_or_else(|| ParseError::HeaderFormat(line.to_owned()))?;
        let (name, value) = (raw_name.trim(), raw_value.trim());
        if name.eq_ignore_ascii_case("Content-Length") {
            let len: u32 = value
                .parse()
                .map_err(|_| ParseError::ContentLength(raw_value.to_owned()))?;
            // The MMDS takes no bodies.
            if len > 0 {
                return Err(ParseError::InvalidRequest);
            }
        } else if name.eq_ignore_ascii_case("Accept") {
            accept = match value {
                "application/json" => MediaType::ApplicationJson,
                _ => MediaType::PlainText,
            };
        } else if !is_other_standard_header(name) {
            custom.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            custom.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(Request {
        method,
        path: abs_path(uri).to_owned(),
        version,
        accept,
        custom,
    })
}

// Headers micro_http interprets itself and so never lists among the custom ones.
fn is_other_standard_header(name: &str) -> bool {
    [
        "Content-Type",
        "Transfer-Encoding",
        "Expect",
        "Accept-Encoding",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

// micro_http's `Uri::get_abs_path`.
fn abs_path(uri: &str) -> &str {
    if let Some(rest) = uri.strip_prefix("http://") {
        return rest.find('/').map_or("", |i| &rest[i..]);
    }
    if uri.starts_with('/') { uri } else { "" }
}

/// A response, rendered by [`Response::to_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Copied from the request, HTTP/1.1 for parse errors.
    pub version: Version,
    /// Three-digit status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: MediaType,
    /// `Allow: GET, PUT` (405 only).
    pub allow_get_put: bool,
    /// Extra headers (the token TTL echo).
    pub custom: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// A response with no extra headers.
    pub fn new(version: Version, status: u16, content_type: MediaType, body: String) -> Self {
        Self {
            version,
            status,
            content_type,
            allow_get_put: false,
            custom: Vec::new(),
            body,
        }
    }

    /// Firecracker's framing: no reason phrase, fixed header order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n",
            self.version.as_str(),
            self.status
        );
        if self.allow_get_put {
            out.push_str("Allow: GET, PUT\r\n");
        }
        for (k, v) in &self.custom {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            self.content_type.as_str(),
            self.body.len()
        ));
        out.push_str(&self.body);
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Request, ParseError> {
        match parse(raw.as_bytes()) {
            Parsed::Complete { request, consumed } => {
                assert_eq!(consumed, raw.len(), "whole input is one request");
                request
            }
            Parsed::Incomplete => panic!("incomplete: {raw:?}"),
        }
    }

    #[test]
    fn request_line_and_headers() {
        let r = req("GET http://169.254.169.254/a//b?x=1 HTTP/1.0\r\nAccept: application/json\r\nX-metadata-token: t\r\nx-METADATA-token: u\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/a//b?x=1");
        assert_eq!(r.version, Version::Http10);
        assert_eq!(r.accept, MediaType::ApplicationJson);
        assert_eq!(r.custom, vec![("x-METADATA-token".into(), "u".into())]);
        assert_eq!(
            r.header(&["X-Metadata-Token"]),
            Some(("x-METADATA-token", "u"))
        );
        assert_eq!(req("GET foo HTTP/1.1\r\n\r\n").unwrap().path, "");
        assert_eq!(req("GET http://host HTTP/1.1\r\n\r\n").unwrap().path, "");
        assert_eq!(
            req("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n").unwrap().accept,
            MediaType::PlainText
        );
    }

    #[test]
    fn head_boundaries() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nA: b\r\n\r"), Parsed::Incomplete);
        // Two requests back to back: the first is consumed alone.
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let Parsed::Complete { consumed, request } = parse(two) else {
            panic!()
        };
        assert_eq!(consumed, 19);
        assert_eq!(request.unwrap().path, "/a");
        // LF LF ends the head but bare LFs make it invalid.
        assert_eq!(req("GET / HTTP/1.1\n\n"), Err(ParseError::InvalidRequest));
        assert_eq!(
            req("GET / HTTP/1.1\r\nA: b\n\r\n"),
            Err(ParseError::InvalidRequest)
        );
    }

    #[test]
    fn parse_errors_and_their_responses() {
        let cases = [
            (
                "POST / HTTP/1.1\r\n\r\n",
                ParseError::UnsupportedMethod,
                501,
            ),
            ("get / HTTP/1.1\r\n\r\n", ParseError::UnsupportedMethod, 501),
            (
                "GET / HTTP/2.0\r\n\r\n",
                ParseError::UnsupportedVersion,
                501,
            ),
            ("GET /\r\n\r\n", ParseError::InvalidRequest, 400),
            ("GET  HTTP/1.1\r\n\r\n", ParseError::EmptyUri, 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                ParseError::InvalidRequest,
                400,
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                ParseError::ContentLength(" x".into()),
                400,
            ),
            (
                "GET / HTTP/1.1\r\nnocolon\r\n\r\n",
                ParseError::HeaderFormat("nocolon".into()),
                400,
            ),
        ];
        for (raw, err, status) in cases {
            assert_eq!(req(raw), Err(err.clone()), "{raw:?}");
            let resp = err.to_response();
            assert_eq!(resp.status, status);
            assert_eq!(resp.version, Version::Http11);
            assert_eq!(resp.content_type, MediaType::ApplicationJson);
        }
        assert!(req("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_ok());
        assert_eq!(
            ParseError::UnsupportedMethod.to_response().to_bytes(),
            b"HTTP/1.1 501 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\nUnsupported HTTP method."
        );
    }

    #[test]
    fn response_framing() {
        let mut r = Response::new(
            Version::Http10,
            405,
            MediaType::PlainText,
            "Not allowed HTTP method.".into(),
        );
        r.allow_get_put = true;
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.0 405 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nAllow: GET, PUT\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\nNot allowed HTTP method."
        );
        let mut r = Response::new(Version::Http11, 200, MediaType::PlainText, "tok".into());
        r.custom
            .push(("x-metadata-token-ttl-seconds".into(), "60".into()));
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nx-metadata-token-ttl-seconds: 60\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\ntok"
        );
    }
}
