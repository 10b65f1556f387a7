//! The HTTP/1.1 subset the control API speaks (RFC 9112): one request per connection,
//! parsed by `httparse`, with hard limits on the head and the body; responses always
//! close the connection. Everything here is pure and unit-tested.

use std::fmt::Write as _;

/// Most bytes of request line plus headers.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 32;
/// Most bytes of a request body (the API's bodies are tiny JSON objects).
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole request.
    Complete(Request),
    /// Not a request this server takes: answer with this status and close.
    Reject(Status),
}

/// Response status codes the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 200,
    Accepted = 202,
    BadRequest = 400,
    NotFound = 404,
    MethodNotAllowed = 405,
    RequestTimeout = 408,
    Conflict = 409,
    PayloadTooLarge = 413,
    HeadersTooLarge = 431,
    Internal = 500,
    Unavailable = 503,
    VersionNotSupported = 505,
}

impl Status {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Accepted => "Accepted",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Internal => "Internal Server Error",
            Status::Unavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Parse what a client sent so far.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Reject(Status::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(Status::HeadersTooLarge),
        Err(_) => return Parsed::Reject(Status::BadRequest),
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Reject(Status::HeadersTooLarge);
    }
    if req.version != Some(1) {
        return Parsed::Reject(Status::VersionNotSupported);
    }
    let body_len = match body_length(req.headers) {
        Ok(n) => n,
        Err(status) => return Parsed::Reject(status),
    };
    if body_len > MAX_BODY_BYTES {
        return Parsed::Reject(Status::PayloadTooLarge);
    }
    let body = &buf[head_len..];
    if body.len() < body_len {
        return Parsed::Partial;
    }
    Parsed::Complete(Request {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        body: body[..body_len].to_vec(),
    })
}

/// The body length from Content-Length; chunked bodies are refused (no endpoint needs
/// one) and so are repeated or malformed lengths (request smuggling, RFC 9112 6.3).
fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, Status> {
    let mut len = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Status::BadRequest);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(Status::BadRequest)?;
            if len.is_some_and(|l| l != n) {
                return Err(Status::BadRequest);
            }
            len = Some(n);
        }
    }
    Ok(len.unwrap_or(0))
}

/// A response: status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: Status,
    pub body: serde_json::Value,
}

impl Response {
    pub fn json(status: Status, body: serde_json::Value) -> Response {
        Response { status, body }
    }

    /// An error response: `{"error": message}`.
    pub fn error(status: Status, message: impl Into<String>) -> Response {
        Response::json(status, serde_json::json!({ "error": message.into() }))
    }

    /// The bytes on the wire; the connection closes after them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = self.body.to_string();
        body.push('\n');
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.status.code(),
            self.status.reason(),
            body.len()
        );
        [head.into_bytes(), body.into_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Request {
        match parse(buf) {
            Parsed::Complete(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_get_without_body_is_complete() {
        let r = complete(b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/vm"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn a_body_is_read_to_its_content_length() {
        let head = b"PUT /vm/shutdown HTTP/1.1\r\nContent-Length: 19\r\n\r\n";
        assert_eq!(parse(head), Parsed::Partial);
        let full = [&head[..], b"{\"timeout_s\": 10}\r\n"].concat();
        assert_eq!(complete(&full).body, b"{\"timeout_s\": 10}\r\n");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert_eq!(parse(b"GET /vm HTTP/1.1\r\nHo"), Parsed::Partial);
        assert_eq!(parse(b""), Parsed::Partial);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            parse(b"GARBAGE\r\n\r\n"),
            Parsed::Reject(Status::BadRequest)
        );
        assert_eq!(
            parse(b"\x00\xff\x00\xff"),
            Parsed::Reject(Status::BadRequest)
        );
    }

    #[test]
    fn http_1_0_is_refused() {
        let r = parse(b"GET /vm HTTP/1.0\r\n\r\n");
        assert_eq!(r, Parsed::Reject(Status::VersionNotSupported));
    }

    #[test]
    fn an_oversized_head_is_refused_without_waiting_for_its_end() {
        let mut buf = b"GET /vm HTTP/1.1\r\nX-A: ".to_vec();
        buf.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse(&buf), Parsed::Reject(Status::HeadersTooLarge));
    }

    #[test]
    fn too_many_headers_are_refused() {
        let mut buf = b"GET /vm HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            buf.extend_from_slice(b"X-A: b\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse(&buf), Parsed::Reject(Status::HeadersTooLarge));
    }

    #[test]
    fn an_oversized_body_is_refused_from_its_length() {
        let r = parse(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
        assert_eq!(r, Parsed::Reject(Status::PayloadTooLarge));
    }

    #[test]
    fn bad_or_conflicting_lengths_and_chunked_bodies_are_refused() {
        for head in [
            &b"PUT /vm/pause HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(head), Parsed::Reject(Status::BadRequest), "{head:?}");
        }
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::error(Status::NotFound, "no such endpoint");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
