//! Just enough HTTP/1.0 to serve the counters: one request per
//! connection, its head read in full (at most [`MAX_REQUEST_BYTES`]),
//! then one response and the connection closed.
//!
//! Whoever can reach the host's interface can send anything, so nothing
//! here trusts the bytes: a head that is too long, not text, or not a
//! request line gets `400`, a method other than `GET` or `HEAD` `405`, a
//! path other than the two pages `404`. Nothing panics and nothing grows
//! with what the client sends.

use alloc::vec::Vec;
use core::fmt::Write;

/// The most bytes of a request head the server reads: a request line and
/// the few headers a browser or `curl` sends fit many times over.
pub const MAX_REQUEST_BYTES: usize = 2048;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the HTML page.
    Page,
    /// `GET /counters`: the JSON.
    Counters,
    /// Any other path.
    NotFound,
    /// A method other than `GET` or `HEAD`.
    MethodNotAllowed,
    /// Not a request line, or a head too long.
    BadRequest,
}

/// A parsed request: where it goes, and whether the body is wanted
/// (`HEAD` asks for the head only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which page.
    pub route: Route,
    /// `false` for `HEAD`.
    pub wants_body: bool,
}

/// Whether `received` holds a whole request head (it ends with an empty
/// line), or so much that the server should stop reading and answer.
pub fn head_complete(received: &[u8]) -> bool {
    received.len() >= MAX_REQUEST_BYTES
        || received.windows(4).any(|w| w == b"\r\n\r\n")
        || received.windows(2).any(|w| w == b"\n\n")
}

/// Reads the request line of `head` (the bytes [`head_complete`] said
/// were enough).
pub fn parse(head: &[u8]) -> Request {
    let bad = Request {
        route: Route::BadRequest,
        wants_body: true,
    };
    if head.len() > MAX_REQUEST_BYTES {
        return bad;
    }
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = core::str::from_utf8(&head[..line_end]) else {
        return bad;
    };
    let mut words = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return bad;
    };
    let version_ok = match words.next() {
        Some(version) => version.starts_with("HTTP/") && words.next().is_none(),
        None => false,
    };
    if !version_ok || !target.starts_with('/') {
        return bad;
    }
    let wants_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return Request {
            route: Route::MethodNotAllowed,
            wants_body,
        };
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let route = match path {
        "/" | "/index.html" => Route::Page,
        "/counters" | "/counters.json" => Route::Counters,
        _ => Route::NotFound,
    };
    Request { route, wants_body }
}

/// The status line's code and reason for `route`.
pub fn status(route: Route) -> (u16, &'static str) {
    match route {
        Route::Page | Route::Counters => (200, "OK"),
        Route::NotFound => (404, "Not Found"),
        Route::MethodNotAllowed => (405, "Method Not Allowed"),
        Route::BadRequest => (400, "Bad Request"),
    }
}

/// A whole HTTP/1.0 response: status line, headers, and `body` unless the
/// request was `HEAD`.
pub fn response(request: Request, content_type: &str, body: &[u8]) -> Vec<u8> {
    let (code, reason) = status(request.route);
    let mut head = alloc::string::String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "HTTP/1.0 {code} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if request.route == Route::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if request.wants_body {
        bytes.extend_from_slice(body);
    }
    bytes
}
