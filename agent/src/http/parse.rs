//! HTTP/1.x heads from captured bytes: every request head in a request buffer (pipelining) and
//! the status of a response prefix.
//!
//! The bytes are hostile and often cut by the kernel's capture window, so parsing never panics,
//! keeps only the few headers the agent needs (never cookies or credentials), and still uses
//! the headers that were fully captured when a head is cut. `httparse` does the parsing; this
//! module only repairs what it cannot take as is (a cut head, a path that is not UTF-8, a NUL
//! in a header) in a fixed stack buffer, so the work is bounded by the input and nothing is
//! allocated beyond the returned values.

use std::mem::MaybeUninit;

use httparse::Status;

/// Headers parsed per head; a head with more is rejected (`ParseError::TooManyHeaders`).
pub const MAX_HEADERS: usize = 64;
/// Header values longer than this are treated as absent.
pub const MAX_VALUE_LEN: usize = 1024;
/// `RequestHead::path` is cut to this many bytes (at a character boundary).
pub const MAX_PATH_LEN: usize = 512;
/// Heads that need repair (cut by the capture window, non-UTF-8 path, NUL or bare CR in a
/// header) are repaired within their first this-many bytes, a copy on the stack. Larger than
/// the kernel's capture windows, so only oversized inputs from elsewhere are affected.
const SCRATCH_LEN: usize = 4096;
/// Interim (1xx) responses skipped when the same response buffer holds the final one.
const MAX_INTERIM: usize = 4;
/// The tenant header's value when the one sent was not printable ASCII or too long.
pub const UNREADABLE_VALUE: &str = "<unreadable>";
/// Headers that never leave the parser, whatever the selection says.
const DENIED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Whether `name` is one of `DENIED`.
fn is_denied(name: &str) -> bool {
    DENIED.iter().any(|d| name.eq_ignore_ascii_case(d))
}

/// Space for the headers of one parse, left uninitialised (`httparse` writes what it parses).
type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Request method; methods outside the registered set are `Other` (`_OTHER` in telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    /// The `http.request.method` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "_OTHER",
        }
    }

    /// Methods are case-sensitive (RFC 9110 9.1): `get` is `Other`.
    pub fn parse(b: &[u8]) -> Self {
        match b {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// Which request headers to keep (names compared case-insensitively). `Cookie`, `Set-Cookie`,
/// `Authorization` and `Proxy-Authorization` are never kept, even if selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSelection {
    /// The header carrying the tenant, e.g. `x-tenant-id`.
    pub tenant_header: String,
    /// Operator allowlist, kept in `RequestHead::extra`.
    pub extra: Vec<String>,
}

impl Default for HeaderSelection {
    /// The product's default tenant header, no extra headers.
    fn default() -> Self {
        Self {
            tenant_header: "x-tenant-id".to_owned(),
            extra: Vec::new(),
        }
    }
}

/// One request head, reduced to what the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Target without query string and fragment; absolute-form targets (`http://h/p?q`) reduced
    /// to the path (`/p`); `*` kept; empty for authority-form (`CONNECT h:443`) and anything else;
    /// invalid UTF-8 replaced lossily; at most `MAX_PATH_LEN` bytes.
    pub path: String,
    /// 0 or 1 (`HTTP/1.0`, `HTTP/1.1`).
    pub http_minor: u8,
    /// Host without port, lowercased, IPv6 without brackets; only a syntactically valid host,
    /// from an absolute-form target (RFC 9112 3.2.2) or a `CONNECT` target if any, else from a
    /// single `Host` header.
    pub host: Option<String>,
    /// The selected tenant header's value (its first occurrence).
    pub tenant_header: Option<String>,
    /// Passed through unvalidated (the OpenTelemetry propagators validate); `None` if repeated.
    pub traceparent: Option<String>,
    /// Repeated headers joined with `,` (W3C list semantics).
    pub tracestate: Option<String>,
    /// Repeated headers joined with `,` (W3C list semantics).
    pub baggage: Option<String>,
    /// Allowlisted headers only, names lowercased, in order of appearance.
    pub extra: Vec<(String, String)>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub upgrade_websocket: bool,
    /// The HTTP version's default (1.1 on, 1.0 off) changed by `Connection: close`/`keep-alive`.
    pub keep_alive: bool,
    /// A valid `Content-Length` without `Transfer-Encoding`.
    pub content_length: Option<u64>,
    /// False if the capture window cut the head: only the fully captured headers are present.
    pub complete: bool,
}

/// The status line of a response and the headers that matter for pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub http_minor: u8,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub upgrade_websocket: bool,
    pub keep_alive: bool,
    /// False if the capture window cut the head (or it had more than `MAX_HEADERS` headers).
    pub complete: bool,
}

/// Why bytes could not be read as an HTTP/1.x head.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no bytes to parse")]
    Empty,
    #[error("not an HTTP/1.x request or response")]
    NotHttp,
    #[error("the capture ended inside the request or status line")]
    Truncated,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed HTTP head: {0}")]
    Invalid(&'static str),
}

/// How the body after a complete request head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No `Content-Length` nor `Transfer-Encoding`: a request has no body (RFC 9112 6.3).
    Empty,
    Length(u64),
    /// Chunked, conflicting or unreadable framing: the next head cannot be found.
    Unknown,
}

/// A request head and where the next one may start.
struct Parsed {
    head: RequestHead,
    /// Offset after the head (only for a complete head).
    head_len: usize,
    body: Body,
}

/// Every request head in a captured request buffer, in order. After each complete head its body
/// is skipped by `Content-Length` and the next head parsed if one starts there; a chunked or
/// unreadable body, `Connection: close`, an upgrade or `CONNECT` end the search, and so does
/// anything after the first head that is not a request. A cut last head is returned with
/// `complete: false` if at least its request line was captured.
///
/// Errors describe the first head only (`Empty`, `NotHttp`, `Truncated`, `TooManyHeaders`,
/// `Invalid`); on success the vector is never empty.
pub fn parse_requests(buf: &[u8], sel: &HeaderSelection) -> Result<Vec<RequestHead>, ParseError> {
    let mut heads = Vec::new();
    let mut rest = buf;
    loop {
        let parsed = match parse_request_head(rest, sel) {
            Ok(p) => p,
            Err(e) if heads.is_empty() => return Err(e),
            Err(_) => break,
        };
        let next = next_head_offset(&parsed);
        heads.push(parsed.head);
        match next {
            Some(off) if off < rest.len() => rest = &rest[off..],
            _ => break,
        }
    }
    Ok(heads)
}

/// The status of a captured response prefix. Interim responses (1xx other than 101) followed by
/// another head in the same buffer are skipped: the final one is returned. A cut head or one
/// with too many headers still gives its status (`complete: false`).
pub fn parse_response(buf: &[u8]) -> Result<ResponseHead, ParseError> {
    let (mut head, mut len) = parse_response_head(buf)?;
    let mut skipped = 0;
    while head.complete && is_interim(head.status) && skipped < MAX_INTERIM {
        let Some(rest) = buf.get(len..).filter(|r| !r.is_empty()) else {
            break;
        };
        match parse_response_head(rest) {
            Ok((next, next_len)) => {
                head = next;
                len += next_len;
                skipped += 1;
            }
            Err(_) => break,
        }
    }
    Ok(head)
}

/// 1xx other than 101 Switching Protocols: the final response is still to come.
pub fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

fn parser_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    // A header line with invalid bytes is skipped instead of failing the whole head.
    config
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

/// Outcome of one `httparse` attempt that needs no further repair.
enum Attempt<T> {
    Done(Result<T, ParseError>),
    /// Cut by the end of the bytes; `true` if what was read looks like the start of a head. For
    /// a request that takes a complete method token in the form methods have (RFC 9110 18.2:
    /// uppercase), so that body bytes stashed after `100 Continue` are not taken for a request.
    Partial(bool),
    /// Failed in a way a sanitized copy may fix.
    Repairable,
}

fn parse_request_head(buf: &[u8], sel: &HeaderSelection) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    // Fast path: the head as captured, no copy.
    match try_request(buf, buf, sel, true) {
        Attempt::Done(Err(ParseError::TooManyHeaders)) => return first_headers_only(buf, sel),
        Attempt::Done(r) => return r,
        Attempt::Partial(_) | Attempt::Repairable => {}
    }
    // Slow path: a sanitized copy, cut after its last complete line if needed.
    let mut scratch = [0u8; SCRATCH_LEN];
    let n = sanitize(buf, &mut scratch, true);
    let cut_error = |plausible| {
        if plausible {
            ParseError::Truncated
        } else {
            ParseError::NotHttp
        }
    };
    let plausible = match try_request(&scratch[..n], buf, sel, true) {
        Attempt::Done(Err(ParseError::TooManyHeaders)) => return first_headers_only(buf, sel),
        Attempt::Done(r) => return r,
        Attempt::Repairable => return Err(request_error_fallback(&scratch[..n])),
        Attempt::Partial(plausible) => plausible,
    };
    let Some(cut) = close_after_last_line(&mut scratch, n) else {
        return Err(cut_error(plausible));
    };
    match try_request(&scratch[..cut], buf, sel, false) {
        Attempt::Done(Err(ParseError::TooManyHeaders)) => first_headers_only(buf, sel),
        Attempt::Done(r) => r,
        Attempt::Partial(plausible) => Err(cut_error(plausible)),
        Attempt::Repairable => Err(request_error_fallback(&scratch[..cut])),
    }
}

/// A head with more than `MAX_HEADERS` headers (a hostile or broken client) still counts: its
/// request line and first `MAX_HEADERS` headers, as a cut head (`complete: false`).
fn first_headers_only(buf: &[u8], sel: &HeaderSelection) -> Result<Parsed, ParseError> {
    let mut scratch = [0u8; SCRATCH_LEN];
    let n = sanitize(buf, &mut scratch, true);
    let mut end = first_line_end(&scratch[..n]).ok_or(ParseError::TooManyHeaders)?;
    for _ in 0..MAX_HEADERS {
        match scratch[end..n].iter().position(|&b| b == b'\n') {
            Some(i) => end += i + 1,
            None => break,
        }
    }
    let cut = close_after_last_line(&mut scratch, end).ok_or(ParseError::TooManyHeaders)?;
    match try_request(&scratch[..cut], buf, sel, false) {
        Attempt::Done(r) => r,
        Attempt::Partial(_) | Attempt::Repairable => Err(ParseError::TooManyHeaders),
    }
}

/// Parses `bytes` (the captured bytes or a same-offset sanitized copy of them); `orig` gives
/// the raw target bytes for the path.
fn try_request(
    bytes: &[u8],
    orig: &[u8],
    sel: &HeaderSelection,
    complete: bool,
) -> Attempt<Parsed> {
    let mut headers = header_slots();
    let mut req = httparse::Request::new(&mut []);
    match parser_config().parse_request_with_uninit_headers(&mut req, bytes, &mut headers) {
        Ok(Status::Complete(len)) => {
            Attempt::Done(Ok(extract_request(&req, bytes, orig, complete, len, sel)))
        }
        Ok(Status::Partial) => Attempt::Partial(req.method.is_some_and(|m| {
            m.len() <= 32
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        })),
        Err(httparse::Error::TooManyHeaders) => Attempt::Done(Err(ParseError::TooManyHeaders)),
        Err(_) => Attempt::Repairable,
    }
}

/// The error for bytes that still fail after sanitizing: was the request line readable?
fn request_error_fallback(bytes: &[u8]) -> ParseError {
    let mut headers = header_slots();
    let mut req = httparse::Request::new(&mut []);
    match parser_config().parse_request_with_uninit_headers(&mut req, bytes, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => ParseError::TooManyHeaders,
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            ParseError::Invalid("header line")
        }
        // httparse records the version before it checks the line ending.
        Err(httparse::Error::NewLine) if req.version.is_some() => {
            ParseError::Invalid("line ending")
        }
        _ => ParseError::NotHttp,
    }
}

fn parse_response_head(buf: &[u8]) -> Result<(ResponseHead, usize), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    match try_response(buf, true) {
        // Repaired below.
        Attempt::Done(Err(ParseError::TooManyHeaders)) => {}
        Attempt::Done(r) => return r,
        Attempt::Partial(_) | Attempt::Repairable => {}
    }
    let mut scratch = [0u8; SCRATCH_LEN];
    let n = sanitize(buf, &mut scratch, false);
    match try_response(&scratch[..n], true) {
        Attempt::Done(Err(ParseError::TooManyHeaders)) => {
            // Only the status matters for pairing: keep the status line alone.
            let line_end = first_line_end(&scratch[..n]).ok_or(ParseError::Truncated)?;
            let cut = close_after_last_line(&mut scratch, line_end).ok_or(ParseError::Truncated)?;
            return match try_response(&scratch[..cut], false) {
                Attempt::Done(r) => r,
                _ => Err(ParseError::TooManyHeaders),
            };
        }
        Attempt::Done(r) => return r,
        Attempt::Repairable => return Err(response_error_fallback(&scratch[..n])),
        Attempt::Partial(_) => {}
    }
    let cut = close_after_last_line(&mut scratch, n).ok_or(ParseError::Truncated)?;
    match try_response(&scratch[..cut], false) {
        Attempt::Done(r) => r,
        Attempt::Partial(_) => Err(ParseError::Truncated),
        Attempt::Repairable => Err(response_error_fallback(&scratch[..cut])),
    }
}

fn try_response(bytes: &[u8], complete: bool) -> Attempt<(ResponseHead, usize)> {
    let mut headers = header_slots();
    let mut resp = httparse::Response::new(&mut []);
    match parser_config().parse_response_with_uninit_headers(&mut resp, bytes, &mut headers) {
        Ok(Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            if status < 100 {
                return Attempt::Done(Err(ParseError::Invalid("status code below 100")));
            }
            let http_minor = resp.version.unwrap_or(1);
            let conn = ConnectionFlags::from_headers(resp.headers.iter());
            Attempt::Done(Ok((
                ResponseHead {
                    status,
                    http_minor,
                    upgrade_websocket: conn.upgrade && conn.websocket,
                    keep_alive: conn.keep_alive(http_minor),
                    complete,
                },
                len,
            )))
        }
        Ok(Status::Partial) => Attempt::Partial(true),
        Err(httparse::Error::TooManyHeaders) => Attempt::Done(Err(ParseError::TooManyHeaders)),
        Err(_) => Attempt::Repairable,
    }
}

fn response_error_fallback(bytes: &[u8]) -> ParseError {
    let mut headers = header_slots();
    let mut resp = httparse::Response::new(&mut []);
    match parser_config().parse_response_with_uninit_headers(&mut resp, bytes, &mut headers) {
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            ParseError::Invalid("header line")
        }
        Err(httparse::Error::NewLine) if resp.reason.is_some() => {
            ParseError::Invalid("line ending")
        }
        Err(httparse::Error::Status) if resp.version.is_some() => {
            ParseError::Invalid("status line")
        }
        _ => ParseError::NotHttp,
    }
}

/// Copies at most `SCRATCH_LEN - 2` bytes at the same offsets, replacing what `httparse` rejects
/// outright with bytes it rejects per line (so `ignore_invalid_headers` drops only that header):
/// NUL and a CR not followed by LF become DEL. In a request line, bytes >= 0x80 become `"`, which
/// `httparse` accepts in a target, so a non-UTF-8 path parses (its raw bytes are taken from the
/// original) while a method or version with such bytes still fails.
fn sanitize(src: &[u8], dst: &mut [u8; SCRATCH_LEN], request: bool) -> usize {
    let n = src.len().min(SCRATCH_LEN - 2);
    let mut in_first_line = true;
    let mut seen_content = false;
    for (i, (d, &b)) in dst.iter_mut().zip(src).take(n).enumerate() {
        *d = match b {
            0 => 0x7f,
            b'\r' if src.get(i + 1).is_some_and(|&next| next != b'\n') => 0x7f,
            b'\n' => {
                // Leading empty lines (skipped by httparse) do not end the first line.
                in_first_line &= !seen_content;
                b'\n'
            }
            0x80.. if request && in_first_line => b'"',
            _ => b,
        };
        if b != b'\r' && b != b'\n' {
            seen_content = true;
        }
    }
    n
}

/// Cuts `scratch[..n]` after its last LF and appends the empty line that ends a head. Returns the
/// new length, `None` without any LF.
fn close_after_last_line(scratch: &mut [u8; SCRATCH_LEN], n: usize) -> Option<usize> {
    let cut = scratch.get(..n)?.iter().rposition(|&b| b == b'\n')? + 1;
    // cut <= n <= SCRATCH_LEN - 2 (see `sanitize`), so the two bytes fit.
    scratch.get_mut(cut..cut + 2)?.copy_from_slice(b"\r\n");
    Some(cut + 2)
}

/// Offset after the first LF that ends a non-empty line.
fn first_line_end(bytes: &[u8]) -> Option<usize> {
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let lf = bytes.get(start..)?.iter().position(|&b| b == b'\n')?;
    Some(start + lf + 1)
}

/// Where the next pipelined head starts, if one can.
fn next_head_offset(p: &Parsed) -> Option<usize> {
    let h = &p.head;
    if !h.complete || !h.keep_alive || h.upgrade_websocket || h.method == Method::Connect {
        return None;
    }
    match p.body {
        Body::Empty => Some(p.head_len),
        Body::Length(len) => usize::try_from(len)
            .ok()
            .and_then(|len| p.head_len.checked_add(len)),
        Body::Unknown => None,
    }
}

/// Connection-management headers shared by requests and responses.
#[derive(Default)]
struct ConnectionFlags {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    websocket: bool,
}

impl ConnectionFlags {
    fn from_headers<'a>(headers: impl Iterator<Item = &'a httparse::Header<'a>>) -> Self {
        let mut flags = Self::default();
        for h in headers {
            match header_name(h.name) {
                Some(Known::Connection) => flags.connection(h.value),
                Some(Known::Upgrade) => flags.upgrade(h.value),
                _ => {}
            }
        }
        flags
    }

    /// A `Connection` header's value.
    fn connection(&mut self, value: &[u8]) {
        let Some(value) = clean_bytes(value) else {
            return;
        };
        for token in tokens(value) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
        }
    }

    /// An `Upgrade` header's value.
    fn upgrade(&mut self, value: &[u8]) {
        let Some(value) = clean_bytes(value) else {
            return;
        };
        // Protocol tokens may carry a version: `websocket/13`.
        self.websocket |= tokens(value).any(|t| {
            t.split(|&b| b == b'/')
                .next()
                .is_some_and(|p| p.eq_ignore_ascii_case(b"websocket"))
        });
    }

    fn keep_alive(&self, http_minor: u8) -> bool {
        if self.close {
            false
        } else {
            http_minor >= 1 || self.keep_alive
        }
    }
}

/// The non-empty comma-separated elements of a clean value, without surrounding spaces (a clean
/// value's only whitespace is the space).
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The request and response headers this module reads (besides the selected ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Host,
    Connection,
    Upgrade,
    ContentLength,
    TransferEncoding,
    Expect,
    Traceparent,
    Tracestate,
    Baggage,
}

/// Which of the `Known` headers `name` is (case-insensitively): the length picks the
/// candidates, a word comparison or two confirms one.
fn header_name(name: &str) -> Option<Known> {
    const HOST: LowerName = LowerName::new("host");
    const EXPECT: LowerName = LowerName::new("expect");
    const UPGRADE: LowerName = LowerName::new("upgrade");
    const BAGGAGE: LowerName = LowerName::new("baggage");
    const CONNECTION: LowerName = LowerName::new("connection");
    const TRACESTATE: LowerName = LowerName::new("tracestate");
    const TRACEPARENT: LowerName = LowerName::new("traceparent");
    const CONTENT_LENGTH: LowerName = LowerName::new("content-length");
    let n = name.as_bytes();
    let known = match n.len() {
        4 if HOST.matches(n) => Known::Host,
        6 if EXPECT.matches(n) => Known::Expect,
        7 if UPGRADE.matches(n) => Known::Upgrade,
        7 if BAGGAGE.matches(n) => Known::Baggage,
        10 if CONNECTION.matches(n) => Known::Connection,
        10 if TRACESTATE.matches(n) => Known::Tracestate,
        11 if TRACEPARENT.matches(n) => Known::Traceparent,
        14 if CONTENT_LENGTH.matches(n) => Known::ContentLength,
        17 if name.eq_ignore_ascii_case("transfer-encoding") => Known::TransferEncoding,
        _ => return None,
    };
    Some(known)
}

/// A lowercase ASCII name of 4 to 16 bytes, compared case-insensitively a word at a time: its
/// first and last 4 bytes (names up to 8 bytes) or 8 bytes (up to 16), overlapping. OR-ing
/// 0x20 into the byte of a letter accepts exactly that letter's two cases; other bytes must be
/// equal, so this is `eq_ignore_ascii_case` for any bytes.
struct LowerName {
    len: usize,
    /// 4 or 8.
    word: usize,
    /// The first and the last word, little endian.
    pattern: [u64; 2],
    /// 0x20 at the letters of each word.
    letters: [u64; 2],
}

impl LowerName {
    const fn new(lower: &str) -> Self {
        let bytes = lower.as_bytes();
        let len = bytes.len();
        assert!(len >= 4 && len <= 16);
        let word = if len <= 8 { 4 } else { 8 };
        let starts = [0, len - word];
        let mut pattern = [0u64; 2];
        let mut letters = [0u64; 2];
        let mut w = 0;
        while w < 2 {
            let mut i = 0;
            while i < word {
                let b = bytes[starts[w] + i];
                assert!(b.is_ascii() && !b.is_ascii_uppercase());
                pattern[w] |= (b as u64) << (8 * i);
                if b.is_ascii_lowercase() {
                    letters[w] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            w += 1;
        }
        Self {
            len,
            word,
            pattern,
            letters,
        }
    }

    fn matches(&self, name: &[u8]) -> bool {
        if name.len() != self.len {
            return false;
        }
        let words = if self.word == 4 {
            match (name.first_chunk::<4>(), name.last_chunk::<4>()) {
                (Some(first), Some(last)) => [
                    u64::from(u32::from_le_bytes(*first)),
                    u64::from(u32::from_le_bytes(*last)),
                ],
                _ => return false,
            }
        } else {
            match (name.first_chunk::<8>(), name.last_chunk::<8>()) {
                (Some(first), Some(last)) => {
                    [u64::from_le_bytes(*first), u64::from_le_bytes(*last)]
                }
                _ => return false,
            }
        };
        words[0] | self.letters[0] == self.pattern[0]
            && words[1] | self.letters[1] == self.pattern[1]
    }
}

/// The value if it is not empty, printable ASCII (space included) and at most `MAX_VALUE_LEN`
/// bytes (httparse already trimmed the surrounding whitespace).
fn clean_bytes(value: &[u8]) -> Option<&[u8]> {
    if value.is_empty() || value.len() > MAX_VALUE_LEN {
        return None;
    }
    // No early exit: the check runs a vector at a time.
    let unprintable = value
        .iter()
        .fold(0u8, |bad, &b| bad | u8::from(!(0x20..=0x7e).contains(&b)));
    (unprintable == 0).then_some(value)
}

/// `clean_bytes` as text, for the values that are kept.
fn clean_value(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(clean_bytes(value)?).ok()
}

/// Offset of `sub` inside `whole` (both from the same parse).
fn offset_in(whole: &[u8], sub: &[u8]) -> Option<usize> {
    let off = (sub.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (off.checked_add(sub.len())? <= whole.len()).then_some(off)
}

fn extract_request(
    req: &httparse::Request<'_, '_>,
    bytes: &[u8],
    orig: &[u8],
    complete: bool,
    head_len: usize,
    sel: &HeaderSelection,
) -> Parsed {
    let method = Method::parse(req.method.unwrap_or("").as_bytes());
    let http_minor = req.version.unwrap_or(1);
    // The target's raw bytes: the copy may have had non-UTF-8 bytes replaced.
    let target_str = req.path.unwrap_or("");
    let target_parsed = target_str.as_bytes();
    let target = offset_in(bytes, target_parsed)
        .and_then(|off| orig.get(off..off + target_parsed.len()))
        .unwrap_or(target_parsed);
    let (path, authority) = split_target(target);
    let authority = authority.filter(|_| path != b"" || method == Method::Connect);
    // Unless bytes were replaced, the path is part of the target `httparse` checked as UTF-8.
    let path_str = std::ptr::eq(target, target_parsed)
        .then(|| offset_in(target, path))
        .flatten()
        .and_then(|off| target_str.get(off..off + path.len()))
        .filter(|p| p.len() <= MAX_PATH_LEN);

    let mut head = RequestHead {
        method,
        path: match path_str {
            Some(p) => p.to_owned(),
            None => lossy_capped(path, MAX_PATH_LEN),
        },
        http_minor,
        host: None,
        tenant_header: None,
        traceparent: None,
        tracestate: None,
        baggage: None,
        extra: Vec::new(),
        expect_continue: false,
        upgrade_websocket: false,
        keep_alive: false,
        content_length: None,
        complete,
    };
    let mut conn = ConnectionFlags::default();
    let mut hosts = 0usize;
    let mut host_header = None;
    let mut tenant_seen = false;
    let mut traceparents = 0usize;
    let mut lengths = Lengths::default();
    let mut traceparent = None;

    for h in req.headers.iter() {
        let name = h.name;
        // Selected headers; a denied one is never kept (no `DENIED` name is `Known`, so only
        // the selection has to check).
        if !tenant_seen && name.eq_ignore_ascii_case(&sel.tenant_header) && !is_denied(name) {
            // The first occurrence decides, as most server frameworks read it.
            tenant_seen = true;
            head.tenant_header = match clean_value(h.value) {
                Some(v) => Some(v.to_owned()),
                // Present but unprintable (invalid UTF-8, control bytes) or too long: a value
                // no tenant rule admits, so that the chain counts it invalid, not absent.
                None if !h.value.is_empty() => Some(UNREADABLE_VALUE.to_owned()),
                None => None,
            };
        }
        if !sel.extra.is_empty()
            && sel.extra.iter().any(|e| name.eq_ignore_ascii_case(e))
            && !is_denied(name)
            && let Some(v) = clean_value(h.value)
        {
            head.extra.push((name.to_ascii_lowercase(), v.to_owned()));
        }
        let Some(known) = header_name(name) else {
            continue;
        };
        match known {
            Known::Connection => conn.connection(h.value),
            Known::Upgrade => conn.upgrade(h.value),
            Known::ContentLength => lengths.add_content_length(h.value),
            Known::TransferEncoding => lengths.transfer_encoding = true,
            Known::Host => {
                hosts += 1;
                host_header = clean_bytes(h.value);
            }
            Known::Expect => {
                head.expect_continue |= clean_bytes(h.value)
                    .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
            }
            Known::Traceparent => {
                traceparents += 1;
                traceparent = clean_value(h.value);
            }
            Known::Tracestate => append_list(&mut head.tracestate, clean_value(h.value)),
            Known::Baggage => append_list(&mut head.baggage, clean_value(h.value)),
        }
    }

    // W3C Trace Context: several traceparent headers cannot be combined.
    if traceparents == 1 {
        head.traceparent = traceparent.map(str::to_owned);
    }
    // A single Host header only (RFC 9112 3.2: several are a client error); an absolute-form or
    // CONNECT target's authority comes first.
    head.host = authority
        .and_then(parse_host)
        .or_else(|| host_header.filter(|_| hosts == 1).and_then(parse_host));
    head.keep_alive = conn.keep_alive(http_minor);
    head.upgrade_websocket = conn.upgrade && conn.websocket;

    let mut body = lengths.body();
    if complete && header_lines(bytes, target_parsed, head_len) != Some(req.headers.len()) {
        // httparse skipped an invalid header line, which may have been framing: the body
        // length is not trustworthy.
        body = Body::Unknown;
    }
    head.content_length = match body {
        Body::Length(n) => Some(n),
        _ => None,
    };
    Parsed {
        head,
        head_len,
        body,
    }
}

/// Number of header lines in a complete head: the LFs after the target, minus the request
/// line's and the empty line's.
fn header_lines(bytes: &[u8], target: &[u8], head_len: usize) -> Option<usize> {
    let start = offset_in(bytes, target)?;
    count_lf(bytes.get(start..head_len)?).checked_sub(2)
}

/// Number of LF bytes, counted a vector at a time.
fn count_lf(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(32);
    let mut n = 0;
    for chunk in &mut chunks {
        // At most 32 per chunk: a byte counter does not overflow.
        n += usize::from(
            chunk
                .iter()
                .fold(0u8, |count, &b| count + u8::from(b == b'\n')),
        );
    }
    n + chunks.remainder().iter().filter(|&&b| b == b'\n').count()
}

#[derive(Default)]
struct Lengths {
    content_length: Option<u64>,
    conflict: bool,
    transfer_encoding: bool,
}

impl Lengths {
    fn add_content_length(&mut self, value: &[u8]) {
        // Digits only: no sign, no list (`5, 5`), no spaces inside.
        let parsed = clean_bytes(value)
            .filter(|v| v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
            // At most 19 digits: no overflow.
            .map(|v| v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')));
        match (parsed, self.content_length) {
            (None, _) => self.conflict = true,
            (Some(n), Some(prev)) if n != prev => self.conflict = true,
            (Some(n), _) => self.content_length = Some(n),
        }
    }

    fn body(&self) -> Body {
        if self.transfer_encoding || self.conflict {
            Body::Unknown
        } else if let Some(n) = self.content_length {
            Body::Length(n)
        } else {
            Body::Empty
        }
    }
}

fn append_list(slot: &mut Option<String>, value: Option<&str>) {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return;
    };
    match slot {
        Some(s) => {
            s.push(',');
            s.push_str(v);
        }
        None => *slot = Some(v.to_owned()),
    }
}

/// Path part of a request target, and the authority of an absolute-form or authority-form target.
fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    if target == b"*" || target.first() == Some(&b'/') {
        return (strip_query(target), None);
    }
    if let Some(after_scheme) = after_scheme(target) {
        let auth_end = after_scheme
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(auth_end);
        // Userinfo (`user:pass@`) never leaves this function.
        let authority = match authority.iter().rposition(|&b| b == b'@') {
            Some(at) => &authority[at + 1..],
            None => authority,
        };
        let path = strip_query(rest);
        return (if path.is_empty() { b"/" } else { path }, Some(authority));
    }
    // Authority-form (`CONNECT host:port`) has no path, its authority is the host; any other
    // form is not a target, and is not kept (it could hold anything).
    (b"", Some(target))
}

fn strip_query(t: &[u8]) -> &[u8] {
    let end = t
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(t.len());
    &t[..end]
}

/// The bytes after `scheme://` when `target` starts with a URI scheme (RFC 3986 3.1).
fn after_scheme(target: &[u8]) -> Option<&[u8]> {
    let colon = target.iter().position(|&b| b == b':')?;
    let (scheme, rest) = target.split_at(colon);
    let first = *scheme.first()?;
    let valid = first.is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if valid {
        rest.strip_prefix(b"://")
    } else {
        None
    }
}

/// Lossy UTF-8, cut to at most `max` bytes at a character boundary.
fn lossy_capped(bytes: &[u8], max: usize) -> String {
    let bytes = &bytes[..bytes.len().min(max)];
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A `Host` value (or absolute-form authority) without its port, lowercased; `None` unless it is
/// a syntactically valid registered name, IPv4 address or bracketed IPv6 address.
fn parse_host(value: &[u8]) -> Option<String> {
    if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']')?;
        let inner = &value[1..close];
        if !valid_port(&value[close + 1..])
            || inner.len() < 2
            || inner.len() > 45
            || !inner.contains(&b':')
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        return ascii_lowercase(inner);
    }
    let (name, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], &value[colon..]),
        None => (value, &b""[..]),
    };
    if !valid_port(port) {
        return None;
    }
    // One trailing dot is the DNS root, not part of the name.
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let labels_ok = name.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    ascii_lowercase(name)
}

/// `bytes` (checked ASCII by the caller) lowercased.
fn ascii_lowercase(bytes: &[u8]) -> Option<String> {
    let mut s = std::str::from_utf8(bytes).ok()?.to_owned();
    s.make_ascii_lowercase();
    Some(s)
}

/// Empty, or `:` followed by a port number (an empty port is allowed by RFC 3986).
fn valid_port(port: &[u8]) -> bool {
    match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                // At most 5 digits: no overflow.
                && digits
                    .iter()
                    .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
                    <= 65535
        }
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser-like request as a server reads it (headers of real traffic, secrets fake).
    const REQUEST: &[u8] = b"GET /api/v1/orders/123?expand=items&token=s3cr3t#frag HTTP/1.1\r\n\
Host: Shop.Example.com:8443\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\n\
Cookie: session=COOKIE-SECRET\r\n\
Authorization: Bearer AUTH-SECRET\r\n\
X-Tenant-ID: acme\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n\
baggage: userId=alice,serverNode=DF%2028\r\n\
X-Request-ID: 7f3c9a\r\n\
Connection: keep-alive\r\n\
\r\n";

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 1234\r\n\
Date: Tue, 03 Jun 2025 10:00:00 GMT\r\n\
\r\n\
{\"id\":123}";

    fn sel() -> HeaderSelection {
        HeaderSelection {
            tenant_header: "x-tenant-id".into(),
            extra: vec!["X-Request-Id".into(), "user-agent".into()],
        }
    }

    fn one(buf: &[u8]) -> RequestHead {
        let heads = parse_requests(buf, &sel()).expect("parses");
        assert_eq!(
            heads.len(),
            1,
            "one head in {:?}",
            String::from_utf8_lossy(buf)
        );
        heads.into_iter().next().expect("one head")
    }

    fn head_with(header_lines: &str) -> RequestHead {
        one(format!("GET / HTTP/1.1\r\n{header_lines}\r\n").as_bytes())
    }

    /// xorshift64*: deterministic inputs without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    /// What must hold for any successful parse, whatever the input.
    fn check_invariants(heads: &[RequestHead]) {
        check_invariants_with(heads, true);
    }

    /// `pristine`: the input was not mutated, so secrets can only leak through a bug (a mutated
    /// separator can legitimately merge a secret into a kept header's value).
    fn check_invariants_with(heads: &[RequestHead], pristine: bool) {
        for h in heads {
            assert!(
                h.path.len() <= MAX_PATH_LEN,
                "path too long: {}",
                h.path.len()
            );
            assert!(h.http_minor <= 1);
            let values = [&h.tenant_header, &h.traceparent, &h.tracestate, &h.baggage];
            for v in values.into_iter().flatten() {
                assert!(
                    v.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                    "unprintable value kept: {v:?}"
                );
            }
            for (name, v) in &h.extra {
                assert!(v.len() <= MAX_VALUE_LEN && v.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                assert!(
                    !DENIED.contains(&name.as_str()),
                    "denied header kept: {name}"
                );
            }
            if let Some(host) = &h.host {
                assert_eq!(host, &host.to_ascii_lowercase());
                assert!(!host.is_empty() && !host.contains('@'));
            }
            let dump = format!("{h:?}");
            if !pristine {
                continue;
            }
            for secret in ["COOKIE-SECRET", "AUTH-SECRET", "s3cr3t", "PASSWORD"] {
                assert!(!dump.contains(secret), "{secret} leaked: {dump}");
            }
        }
    }

    #[test]
    fn realistic_request() {
        let h = one(REQUEST);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/api/v1/orders/123");
        assert_eq!(h.http_minor, 1);
        assert_eq!(h.host.as_deref(), Some("shop.example.com"));
        assert_eq!(h.tenant_header.as_deref(), Some("acme"));
        assert_eq!(
            h.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            h.tracestate.as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            h.baggage.as_deref(),
            Some("userId=alice,serverNode=DF%2028")
        );
        assert_eq!(
            h.extra,
            vec![
                (
                    "user-agent".to_owned(),
                    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
                        .to_owned()
                ),
                ("x-request-id".to_owned(), "7f3c9a".to_owned()),
            ]
        );
        assert!(h.keep_alive && h.complete && !h.expect_continue && !h.upgrade_websocket);
        assert_eq!(h.content_length, None);
        check_invariants(&[h]);
    }

    #[test]
    fn methods() {
        for m in [
            Method::Get,
            Method::Head,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Connect,
            Method::Options,
            Method::Trace,
            Method::Patch,
        ] {
            assert_eq!(Method::parse(m.as_str().as_bytes()), m);
        }
        assert_eq!(Method::parse(b"get"), Method::Other);
        assert_eq!(Method::parse(b"PROPFIND"), Method::Other);
        assert_eq!(Method::Other.as_str(), "_OTHER");
        assert_eq!(one(b"PROPFIND /dav HTTP/1.1\r\n\r\n").method, Method::Other);
    }

    #[test]
    fn split_heads_parse_as_whole() {
        let whole = parse_requests(REQUEST, &sel()).expect("whole");
        for cut in 0..=REQUEST.len() {
            // The kernel stash is the concatenation of several reads.
            let joined = [&REQUEST[..cut], &REQUEST[cut..]].concat();
            assert_eq!(parse_requests(&joined, &sel()).expect("joined"), whole);
            // Three chunks, as from three reads.
            let mid = cut + (REQUEST.len() - cut) / 2;
            let joined = [&REQUEST[..cut], &REQUEST[cut..mid], &REQUEST[mid..]].concat();
            assert_eq!(parse_requests(&joined, &sel()).expect("joined"), whole);
        }
    }

    #[test]
    fn truncation_at_every_byte_keeps_the_captured_headers() {
        let whole = one(REQUEST);
        let line_end = REQUEST.iter().position(|&b| b == b'\n').expect("line") + 1;
        let line_ends = |name: &str| {
            let at = REQUEST
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .expect("header present");
            at + REQUEST[at..].iter().position(|&b| b == b'\n').expect("lf") + 1
        };
        for cut in 0..REQUEST.len() {
            let prefix = &REQUEST[..cut];
            match parse_requests(prefix, &sel()) {
                Err(e) => {
                    assert!(cut < line_end, "cut {cut}: {e}");
                    let method_end = REQUEST.iter().position(|&b| b == b' ').expect("sp");
                    let expected = match cut {
                        0 => ParseError::Empty,
                        // Until the method is complete, it may be any bytes.
                        c if c <= method_end => ParseError::NotHttp,
                        _ => ParseError::Truncated,
                    };
                    assert_eq!(e, expected);
                }
                Ok(heads) => {
                    assert!(cut >= line_end, "cut {cut}: head before its request line");
                    check_invariants(&heads);
                    let [h] = heads.as_slice() else {
                        panic!("cut {cut}: {heads:?}")
                    };
                    assert!(!h.complete, "cut {cut}: complete");
                    assert_eq!(
                        (h.method, h.path.as_str()),
                        (whole.method, whole.path.as_str())
                    );
                    let has = |name: &str| cut >= line_ends(name);
                    assert_eq!(h.host.is_some(), has("Host:"), "cut {cut}");
                    assert_eq!(h.tenant_header.is_some(), has("X-Tenant-ID:"), "cut {cut}");
                    assert_eq!(h.traceparent.is_some(), has("traceparent:"), "cut {cut}");
                    assert_eq!(h.baggage.is_some(), has("baggage:"), "cut {cut}");
                    // Every kept field is the whole head's value, never a cut one.
                    for (got, want) in [
                        (&h.host, &whole.host),
                        (&h.tenant_header, &whole.tenant_header),
                        (&h.traceparent, &whole.traceparent),
                        (&h.tracestate, &whole.tracestate),
                        (&h.baggage, &whole.baggage),
                    ] {
                        assert!(got.is_none() || got == want, "cut {cut}: {got:?}");
                    }
                    assert!(whole.extra.starts_with(&h.extra), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn pipelined_requests_with_bodies() {
        let two = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let heads = parse_requests(two, &sel()).expect("two");
        let paths: Vec<_> = heads.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b"]);
        assert_eq!(heads[0].content_length, Some(5));
        assert!(heads.iter().all(|h| h.complete));

        // A body that looks like a head is skipped, not parsed.
        let body = b"GET /fake HTTP/1.1\r\n\r\n";
        let three = [
            format!("PUT /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
            b"GET /y HTTP/1.1\r\nX-Tenant-ID: t2\r\n\r\n",
            b"DELETE /z HTTP/1.1\r\nX-Tenant-ID: t3\r\n\r\n",
        ]
        .concat();
        let heads = parse_requests(&three, &sel()).expect("three");
        let got: Vec<_> = heads
            .iter()
            .map(|h| (h.method, h.path.as_str(), h.tenant_header.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Method::Put, "/x", None),
                (Method::Get, "/y", Some("t2")),
                (Method::Delete, "/z", Some("t3"))
            ]
        );

        // The last head cut by the window: returned incomplete with what was captured.
        let cut = &three[..three.len() - 10];
        let heads = parse_requests(cut, &sel()).expect("cut");
        assert_eq!(heads.len(), 3);
        assert!(heads[1].complete && !heads[2].complete);
        assert_eq!(heads[2].tenant_header, None);

        // The last head cut inside its request line: dropped.
        let cut = &three[..three.len() - 30];
        assert_eq!(parse_requests(cut, &sel()).expect("cut").len(), 2);
    }

    #[test]
    fn pipelining_stops_where_the_next_head_cannot_be_found() {
        let cases: [&[u8]; 7] = [
            // Chunked body.
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            // Length and chunked: ambiguous framing.
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            // Conflicting lengths.
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            // A list is not a length.
            b"POST /a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            // A header line httparse skipped may have been framing.
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: \x015\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            // The body goes past the capture.
            b"POST /a HTTP/1.1\r\nContent-Length: 500\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            // The connection closes after this request.
            b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ];
        for case in cases {
            let heads = parse_requests(case, &sel()).expect("first head");
            assert_eq!(heads.len(), 1, "{:?}", String::from_utf8_lossy(case));
            assert_eq!(heads[0].path, "/a");
        }
        let heads = parse_requests(
            b"POST /a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            &sel(),
        )
        .expect("parses");
        assert_eq!(heads[0].content_length, None);
        // Noise after a complete head is not an error.
        let heads = parse_requests(b"GET /a HTTP/1.1\r\n\r\n\x16\x03\x01garbage", &sel())
            .expect("first head");
        assert_eq!(heads.len(), 1);
    }

    #[test]
    fn expect_continue_and_interim_responses() {
        let h = one(b"POST /upload HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 10\r\n\r\n");
        assert!(h.expect_continue);
        assert_eq!(h.content_length, Some(10));
        assert!(!head_with("Expect: something-else\r\n").expect_continue);

        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n").expect("100");
        assert_eq!(r.status, 100);
        assert!(is_interim(100) && is_interim(103) && !is_interim(101) && !is_interim(200));
        // Interim and final response in one write: the final one counts.
        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Len")
            .expect("201");
        assert_eq!((r.status, r.complete), (201, false));
        let r = parse_response(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        )
        .expect("200");
        assert_eq!(r.status, 200);
        // Noise after the interim response: the interim one is what we know.
        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n\x00\x01").expect("100");
        assert_eq!(r.status, 100);
    }

    #[test]
    fn websocket_upgrade() {
        let h = one(b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
        assert!(h.upgrade_websocket);
        assert!(!head_with("Upgrade: websocket\r\n").upgrade_websocket);
        assert!(!head_with("Upgrade: h2c\r\nConnection: Upgrade\r\n").upgrade_websocket);
        assert!(head_with("Upgrade: WebSocket/13\r\nConnection: upgrade\r\n").upgrade_websocket);

        let r = parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .expect("101");
        assert_eq!(r.status, 101);
        assert!(r.upgrade_websocket && r.complete);
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let ka = |req: &[u8]| one(req).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert_eq!(one(b"GET / HTTP/1.0\r\n\r\n").http_minor, 0);

        let r = |b: &[u8]| parse_response(b).expect("response").keep_alive;
        assert!(r(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!r(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(!r(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(r(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn targets() {
        let path = |target: &[u8]| one(&[b"GET ", target, b" HTTP/1.1\r\n\r\n"].concat()).path;
        assert_eq!(path(b"/a/b?q=1&r=2"), "/a/b");
        assert_eq!(path(b"/a/b#frag"), "/a/b");
        assert_eq!(path(b"/?only=query"), "/");
        assert_eq!(path(b"*"), "*");
        assert_eq!(path(b"http://api.example.com/v1/x?y=1"), "/v1/x");
        assert_eq!(path(b"https://api.example.com"), "/");
        assert_eq!(path(b"http://api.example.com?q"), "/");
        assert_eq!(path(b"HTTP://h:80/p#f"), "/p");
        assert_eq!(path(b"example.com:443"), "");
        assert_eq!(path(b"user:PASSWORD@garbage"), "");
        let h = one(b"CONNECT Proxy.Example:443 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(
            (h.path.as_str(), h.host.as_deref()),
            ("", Some("proxy.example"))
        );
        assert_eq!(one(b"GET proxy.example:443 HTTP/1.1\r\n\r\n").host, None);
        assert_eq!(path(b"/caf\xc3\xa9"), "/caf\u{e9}");
        assert_eq!(path(b"/bad\xff\xfe/x?\xff"), "/bad\u{fffd}\u{fffd}/x");

        // Absolute form: the target's authority is the host (RFC 9112 3.2.2); userinfo dropped.
        let h =
            one(b"GET http://user:PASSWORD@API.Example.com:8080/p HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(
            (h.path.as_str(), h.host.as_deref()),
            ("/p", Some("api.example.com"))
        );
        check_invariants(&[h]);

        let long = [b"/".as_slice(), &[b'a'; 600], b"?q"].concat();
        assert_eq!(path(&long).len(), MAX_PATH_LEN);
        // A multi-byte character across the cap is cut whole.
        let long = [
            [b'/'; 1].as_slice(),
            &[b'a'; 510],
            "\u{e9}\u{e9}".as_bytes(),
        ]
        .concat();
        let p = path(&long);
        assert!(p.len() <= MAX_PATH_LEN && p.ends_with('a'), "{}", p.len());
        let long = [[b'/'; 1].as_slice(), &[0xff; 600]].concat();
        assert!(path(&long).len() <= MAX_PATH_LEN);
    }

    #[test]
    fn hosts() {
        let host = |v: &str| head_with(&format!("Host: {v}\r\n")).host;
        assert_eq!(host("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(host("example.com.:8080").as_deref(), Some("example.com"));
        assert_eq!(host("10.1.2.3:80").as_deref(), Some("10.1.2.3"));
        assert_eq!(host("[2001:DB8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(host("svc_name.ns.svc:").as_deref(), Some("svc_name.ns.svc"));
        for bad in [
            "bad host",
            "a..b",
            ".a",
            "a:99999",
            "a:12x",
            "a:1:2",
            "[::1",
            "[zz::1]",
            "user@host",
            "host/path",
            "",
        ] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        assert_eq!(host(&"a".repeat(64)), None);
        let two = head_with("Host: a.example\r\nHost: b.example\r\n");
        assert_eq!(two.host, None, "several Host headers are a client error");
    }

    #[test]
    fn header_values_must_be_printable_and_bounded() {
        let ok = "t".repeat(MAX_VALUE_LEN);
        assert_eq!(
            head_with(&format!("X-Tenant-ID: {ok}\r\n")).tenant_header,
            Some(ok.clone())
        );
        let big = format!("{ok}t");
        let h = head_with(&format!("X-Tenant-ID: {big}\r\nX-Request-ID: r\r\n"));
        assert_eq!(h.tenant_header.as_deref(), Some(UNREADABLE_VALUE));
        assert_eq!(h.extra, [("x-request-id".to_owned(), "r".to_owned())]);

        // An empty value is no value.
        assert_eq!(head_with("X-Tenant-ID:  \r\n").tenant_header, None);
        // Surrounding whitespace is not part of the value.
        assert_eq!(
            head_with("X-Tenant-ID: \t acme \t\r\n")
                .tenant_header
                .as_deref(),
            Some("acme")
        );
        // The first occurrence decides, even when it is unusable.
        assert_eq!(
            head_with("x-tenant-id: a\r\nX-TENANT-ID: b\r\n")
                .tenant_header
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            head_with("X-Tenant-ID: a\tb\r\nX-Tenant-ID: c\r\n")
                .tenant_header
                .as_deref(),
            Some(UNREADABLE_VALUE)
        );
        // Repeated list headers are joined; several traceparents are invalid.
        let h =
            head_with("tracestate: a=1\r\ntracestate: b=2\r\nbaggage: k=v\r\nBaggage: k2=v2\r\n");
        assert_eq!(h.tracestate.as_deref(), Some("a=1,b=2"));
        assert_eq!(h.baggage.as_deref(), Some("k=v,k2=v2"));
        let h = head_with("traceparent: 00-aa-bb-01\r\ntraceparent: 00-cc-dd-01\r\n");
        assert_eq!(h.traceparent, None);
    }

    #[test]
    fn invalid_utf8_in_values() {
        let h = one(b"GET / HTTP/1.1\r\nX-Tenant-ID: acm\xc3\xa9\r\nX-Request-ID: \xff\xfe\r\nHost: h\xffx\r\nbaggage: k=v\r\n\r\n");
        assert_eq!(
            (h.tenant_header.as_deref(), h.host),
            (Some(UNREADABLE_VALUE), None)
        );
        assert!(h.extra.is_empty());
        assert_eq!(h.baggage.as_deref(), Some("k=v"));
        assert!(h.complete);
    }

    #[test]
    fn hostile_values() {
        // NUL, a bare CR (response splitting attempt), DEL: that header is dropped by the
        // parser or kept as unreadable (so the tenant chain counts it invalid), never kept.
        for bad in [
            &b"X-Tenant-ID: ac\x00me\r\n"[..],
            b"X-Tenant-ID: acme\rSet-Cookie: x=1\r\n",
            b"X-Tenant-ID: acme\x7f\r\n",
            b"X-Tenant-ID: acme\x1b[31m\r\n",
        ] {
            let req = [
                b"GET /p HTTP/1.1\r\n",
                bad,
                b"X-Request-ID: after\r\nHost: h\r\n\r\n",
            ]
            .concat();
            let h = one(&req);
            assert!(
                matches!(h.tenant_header.as_deref(), None | Some(UNREADABLE_VALUE)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                h.tenant_header
            );
            assert_eq!(h.extra, [("x-request-id".to_owned(), "after".to_owned())]);
            assert_eq!(
                (h.path.as_str(), h.host.as_deref(), h.complete),
                ("/p", Some("h"), true)
            );
        }
        // A bare LF ends a line (httparse, like most servers): the injected line is its own
        // header, and denied.
        let h = one(b"GET / HTTP/1.1\r\nX-Tenant-ID: acme\nCookie: COOKIE-SECRET\r\n\r\n");
        assert_eq!(h.tenant_header.as_deref(), Some("acme"));
        check_invariants(&[h]);
        // In the request line it is not HTTP.
        for bad in [
            &b"GET /a\x00b HTTP/1.1\r\n\r\n"[..],
            b"GET /a\rb HTTP/1.1\r\n\r\n",
            b"G\xc3\xa9T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_requests(bad, &sel()),
                Err(ParseError::NotHttp),
                "{bad:?}"
            );
        }
        // Obsolete line folding is not a continuation here: the folded line is dropped.
        let h = one(b"GET / HTTP/1.1\r\nX-Tenant-ID: a\r\n b\r\nX-Request-ID: r\r\n\r\n");
        assert_eq!(h.tenant_header.as_deref(), Some("a"));
        assert_eq!(h.extra.len(), 1);
    }

    #[test]
    fn denied_headers_are_never_kept() {
        let greedy = HeaderSelection {
            tenant_header: "authorization".into(),
            extra: vec![
                "cookie".into(),
                "Authorization".into(),
                "proxy-authorization".into(),
                "x-a".into(),
            ],
        };
        let req = b"GET / HTTP/1.1\r\nCookie: COOKIE-SECRET\r\nAuthorization: AUTH-SECRET\r\nProxy-Authorization: AUTH-SECRET\r\nX-A: kept\r\n\r\n";
        let heads = parse_requests(req, &greedy).expect("parses");
        assert_eq!(heads[0].tenant_header, None);
        assert_eq!(heads[0].extra, [("x-a".to_owned(), "kept".to_owned())]);
        check_invariants(&heads);
        // Not selected: not kept.
        let h = one(b"GET / HTTP/1.1\r\nX-Other: v\r\nAccept: */*\r\n\r\n");
        assert!(h.extra.is_empty());
    }

    #[test]
    fn too_many_headers() {
        let with = |n: usize| {
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            req
        };
        let first = |req: &[u8]| {
            let heads = parse_requests(req, &sel()).expect("request line and first headers");
            assert_eq!(heads.len(), 1);
            heads.into_iter().next().unwrap()
        };
        assert!(first(&with(MAX_HEADERS)).complete);
        // More: counted from the request line and the first MAX_HEADERS headers, as a cut head
        // (so nothing pipelined after it is looked for).
        let mut req = with(MAX_HEADERS + 1);
        req.splice(16..16, b"X-Tenant-ID: acme\r\n".iter().copied());
        let h = first(&req);
        assert_eq!((h.path.as_str(), h.complete), ("/", false));
        assert_eq!(h.tenant_header.as_deref(), Some("acme"));
        // Also when cut by the window after the 65th header.
        let req = with(MAX_HEADERS + 5);
        assert!(!first(&req[..req.len() - 12]).complete);

        // A response keeps its status.
        let mut resp = with(MAX_HEADERS + 1);
        resp.splice(
            ..16,
            b"HTTP/1.1 503 Service Unavailable\r\n".iter().copied(),
        );
        let r = parse_response(&resp).expect("status");
        assert_eq!((r.status, r.complete), (503, false));
    }

    #[test]
    fn garbage_is_not_http() {
        let cases: [&[u8]; 8] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"{\"json\":true}",
            b"\x00\x00\x00\x00",
        ];
        for case in cases {
            assert_eq!(
                parse_requests(case, &sel()),
                Err(ParseError::NotHttp),
                "{case:?}"
            );
            assert_eq!(parse_response(case), Err(ParseError::NotHttp), "{case:?}");
        }
        assert_eq!(parse_requests(b"", &sel()), Err(ParseError::Empty));
        assert_eq!(
            parse_requests(b"\r\n\r\n", &sel()),
            Err(ParseError::NotHttp)
        );
        // Body bytes (stashed after `100 Continue`) are not a cut request.
        for body in [&b"payload"[..], b"hello world", b"GET", b"get /x"] {
            assert_eq!(
                parse_requests(body, &sel()),
                Err(ParseError::NotHttp),
                "{body:?}"
            );
        }
        assert_eq!(
            parse_requests(b"GET /very-long-url", &sel()),
            Err(ParseError::Truncated)
        );
        assert_eq!(parse_response(b""), Err(ParseError::Empty));
        assert_eq!(parse_response(b"HTTP/1.1 20"), Err(ParseError::Truncated));
        assert_eq!(
            parse_response(b"HTTP/1.1 000 Zero\r\n\r\n"),
            Err(ParseError::Invalid("status code below 100"))
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn responses() {
        let r = parse_response(RESPONSE).expect("200");
        assert_eq!(
            r,
            ResponseHead {
                status: 200,
                http_minor: 1,
                upgrade_websocket: false,
                keep_alive: true,
                complete: true
            }
        );
        // A reason phrase with obs-text, or none.
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Nicht gefunden \xe4\r\n\r\n")
                .expect("404")
                .status,
            404
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 204\r\n\r\n").expect("204").status,
            204
        );
        // A hostile header does not hide the status.
        let r =
            parse_response(b"HTTP/1.1 500 Internal\r\nX-Bad: a\x00b\r\nConnection: close\r\n\r\n")
                .expect("500");
        assert_eq!((r.status, r.keep_alive, r.complete), (500, false, true));

        let status_line = RESPONSE.iter().position(|&b| b == b'\n').expect("lf") + 1;
        for cut in 0..RESPONSE.len() {
            match parse_response(&RESPONSE[..cut]) {
                Ok(r) => {
                    assert!(cut >= status_line, "cut {cut}");
                    assert_eq!(r.status, 200);
                    // The head ends before the body: complete once the empty line is in.
                    let head_end = RESPONSE
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .expect("end")
                        + 4;
                    assert_eq!(r.complete, cut >= head_end, "cut {cut}");
                }
                Err(e) => {
                    assert!(cut < status_line, "cut {cut}: {e}");
                }
            }
        }
    }

    /// Header lines from real traffic and hostile ones, for the generated heads.
    const HEADER_POOL: [&[u8]; 24] = [
        b"Host: api.example.com",
        b"Host: [::1]:8080",
        b"Host: bad host",
        b"X-Tenant-ID: acme",
        b"x-tenant-id: \xff\xfe",
        b"X-Tenant-ID: a\x00b",
        b"X-Tenant-ID: a\rInjected: 1",
        b"Cookie: session=COOKIE-SECRET",
        b"Authorization: Basic AUTH-SECRET",
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"tracestate: congo=t61rcWkgMzE",
        b"baggage: tenant=acme",
        b"Content-Length: 3",
        b"Content-Length: -1",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Connection: keep-alive, Upgrade",
        b"Upgrade: websocket",
        b"Expect: 100-continue",
        b"User-Agent: curl/8.5.0",
        b"X-Request-ID: 42",
        b": no name",
        b"Bad Name: x",
        b"X-Folded: a\r\n b",
    ];

    fn generated_request(rng: &mut Rng) -> Vec<u8> {
        let methods: [&[u8]; 5] = [b"GET", b"POST", b"CONNECT", b"get", b"M\xff"];
        let targets: [&[u8]; 7] = [
            b"/",
            b"/a/b?c=d#e",
            b"*",
            b"http://user:PASSWORD@h.example:80/p?q",
            b"/\xff\xfe\x00",
            b"/%2e%2e/\xc3\xa9",
            b"h.example:443",
        ];
        let mut req = Vec::new();
        for _ in 0..rng.below(3) {
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(rng.pick(&methods));
        req.push(b' ');
        req.extend_from_slice(rng.pick(&targets));
        req.extend_from_slice(rng.pick::<&[u8]>(&[
            b" HTTP/1.1\r\n",
            b" HTTP/1.0\r\n",
            b" HTTP/1.1\n",
        ]));
        for _ in 0..rng.below(12) {
            req.extend_from_slice(rng.pick(&HEADER_POOL));
            req.extend_from_slice(rng.pick::<&[u8]>(&[b"\r\n", b"\r\n", b"\n"]));
        }
        req.extend_from_slice(b"\r\n");
        if rng.below(3) == 0 {
            req.extend_from_slice(b"abc");
        }
        req
    }

    #[test]
    fn generated_inputs_never_panic_and_keep_invariants() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4000 {
            let mut buf = Vec::new();
            for _ in 0..1 + rng.below(3) {
                buf.extend(generated_request(&mut rng));
            }
            // Mutations as a hostile peer or a cut capture would produce them.
            let mutation = rng.below(4);
            match mutation {
                0 => {
                    let at = rng.below(buf.len() + 1);
                    buf.truncate(at);
                }
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(buf.len());
                        buf[at] = rng.next() as u8;
                    }
                }
                2 => {
                    let at = rng.below(buf.len() + 1);
                    let junk: [&[u8]; 4] = [b"\r", b"\n", b"\x00", b"\r\n\r\n"];
                    buf.splice(at..at, rng.pick(&junk).iter().copied());
                }
                _ => {}
            }
            buf.truncate(1024);
            if let Ok(heads) = parse_requests(&buf, &sel()) {
                assert!(!heads.is_empty());
                check_invariants_with(&heads, mutation == 0 || mutation == 3);
                assert!(
                    heads.iter().rev().skip(1).all(|h| h.complete),
                    "only the last head may be cut"
                );
            }
            let _ = parse_response(&buf);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        let mut buf = [0u8; 1500];
        for round in 0..3000 {
            let len = rng.below(buf.len() + 1);
            for b in &mut buf[..len] {
                // Mostly HTTP-ish bytes so that the parser gets past the first line.
                *b = match rng.below(8) {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => rng.next() as u8,
                    _ => b"GET /HTP1.0 abc"[rng.below(15)],
                };
            }
            let prefix: &[u8] = if round % 2 == 0 {
                b"GET / HTTP/1.1\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\n"
            };
            let input = [prefix, &buf[..len]].concat();
            if let Ok(heads) = parse_requests(&input, &sel()) {
                check_invariants(&heads);
            }
            let _ = parse_response(&input);
            let _ = parse_requests(&buf[..len], &sel());
            let _ = parse_response(&buf[..len]);
        }
    }

    #[test]
    fn oversized_inputs_are_bounded() {
        // Larger than the repair buffer: a cut head is used within its first bytes.
        let mut req = b"GET /big HTTP/1.1\r\nX-Tenant-ID: acme\r\n".to_vec();
        let pad = format!("X-Pad: {}\r\n", "p".repeat(500));
        while req.len() < 3 * SCRATCH_LEN {
            req.extend_from_slice(pad.as_bytes());
        }
        let h = one(&req);
        assert_eq!(
            (h.tenant_header.as_deref(), h.complete),
            (Some("acme"), false)
        );
        let huge = vec![b'a'; 1 << 20];
        assert_eq!(parse_requests(&huge, &sel()), Err(ParseError::NotHttp));
        let huge = [b"GET /".as_slice(), &vec![b'a'; 1 << 20]].concat();
        assert_eq!(parse_requests(&huge, &sel()), Err(ParseError::Truncated));
        assert_eq!(parse_response(&huge), Err(ParseError::NotHttp));
    }
}
