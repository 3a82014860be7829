//! Input formats shared by the fuzz targets (which read them) and `examples/make_seeds.rs`
//! (which writes the committed seed corpora), so both always agree. Every reader accepts any
//! bytes: a short or odd input simply ends the sequence.

/// `agent_http_parse`: a sequence of kernel-like records and closes on a few connections.
pub mod records {
    /// Connections the ops address (`ctrl & CONN_MASK`).
    pub const CONN_MASK: u8 = 0x03;
    const CLIENT: u8 = 0x04;
    const CLOSE: u8 = 0x80;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op<'a> {
        /// One record: the request bytes stashed since `req_ts` and the response prefix seen
        /// `dt_ms` later.
        Record {
            conn: u64,
            client: bool,
            dt_ms: u8,
            request: &'a [u8],
            response: &'a [u8],
        },
        /// The kernel saw the connection close.
        Close { conn: u64 },
    }

    /// Reads ops until the input ends. Layout of one op: a control byte (bit 7 close, bit 2
    /// client role, bits 0-1 connection); a record then has `dt_ms` (u8), the request and
    /// response lengths (u16 LE each) and their bytes (cut at the end of the input).
    pub fn read(mut data: &[u8]) -> Vec<Op<'_>> {
        let mut ops = Vec::new();
        while let Some((&ctrl, rest)) = data.split_first() {
            data = rest;
            let conn = u64::from(ctrl & CONN_MASK);
            if ctrl & CLOSE != 0 {
                ops.push(Op::Close { conn });
                continue;
            }
            let Some((head, rest)) = data.split_first_chunk::<5>() else {
                break;
            };
            let req_len = usize::from(u16::from_le_bytes([head[1], head[2]]));
            let resp_len = usize::from(u16::from_le_bytes([head[3], head[4]]));
            let (request, rest) = rest.split_at(req_len.min(rest.len()));
            let (response, rest) = rest.split_at(resp_len.min(rest.len()));
            data = rest;
            ops.push(Op::Record {
                conn,
                client: ctrl & CLIENT != 0,
                dt_ms: head[0],
                request,
                response,
            });
        }
        ops
    }

    /// Appends one op in the layout `read` expects.
    pub fn write(out: &mut Vec<u8>, op: &Op<'_>) {
        match *op {
            Op::Close { conn } => out.push(CLOSE | (conn as u8 & CONN_MASK)),
            Op::Record {
                conn,
                client,
                dt_ms,
                request,
                response,
            } => {
                out.push((conn as u8 & CONN_MASK) | if client { CLIENT } else { 0 });
                out.push(dt_ms);
                out.extend_from_slice(&(request.len() as u16).to_le_bytes());
                out.extend_from_slice(&(response.len() as u16).to_le_bytes());
                out.extend_from_slice(request);
                out.extend_from_slice(response);
            }
        }
    }
}

/// `agent_trace_tenant`: one request's trace and tenant inputs, as lines of text.
pub mod request_fields {
    /// The fields, in line order after the first line (which picks a tenant configuration).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Fields<'a> {
        pub config: u8,
        pub traceparent: Option<&'a str>,
        pub tracestate: Option<&'a str>,
        pub baggage: Option<&'a str>,
        pub tenant_header: Option<&'a str>,
        pub host: Option<&'a str>,
        pub path: &'a str,
        pub service: &'a str,
    }

    /// Line 1: the configuration (its first byte); then traceparent, tracestate, baggage,
    /// tenant header, host, path, service. A missing line is an absent header; a line that is
    /// exactly `-` is an absent header too (so a later line can be given without it).
    pub fn read(text: &str) -> Fields<'_> {
        let mut lines = text.split('\n');
        let config = lines.next().and_then(|l| l.bytes().next()).unwrap_or(0);
        let mut next = || lines.next().filter(|l| *l != "-");
        Fields {
            config,
            traceparent: next(),
            tracestate: next(),
            baggage: next(),
            tenant_header: next(),
            host: next(),
            path: next().unwrap_or(""),
            service: next().unwrap_or(""),
        }
    }

    /// The text `read` parses back into `f` (fields must not contain a newline).
    pub fn write(f: &Fields<'_>) -> String {
        let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
        [
            (f.config as char).to_string(),
            opt(f.traceparent),
            opt(f.tracestate),
            opt(f.baggage),
            opt(f.tenant_header),
            opt(f.host),
            f.path.to_owned(),
            f.service.to_owned(),
        ]
        .join("\n")
    }
}

/// `collector_otlp_ingest`: one OTLP/HTTP request, a control byte then the body.
pub mod otlp_request {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Signal {
        Metrics,
        Traces,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BodyEncoding {
        Protobuf,
        Json,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Compression {
        /// No `Content-Encoding`.
        Identity,
        /// The harness gzips the body and says `gzip` (reaches the decoder through gzip).
        Gzip,
        /// The body as given, labelled `gzip` (hostile compressed bytes).
        RawGzip,
        /// An encoding the collector does not take.
        Unsupported,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Auth {
        /// The bearer token of an agent (may ingest).
        Agent,
        None,
        /// A tenant-scoped token (may read, not ingest).
        Tenant,
        /// A token nobody holds.
        Wrong,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Request<'a> {
        pub signal: Signal,
        pub encoding: BodyEncoding,
        pub compression: Compression,
        pub auth: Auth,
        pub body: &'a [u8],
    }

    /// Control byte: bit 0 signal, bit 1 encoding, bits 2-3 compression, bits 4-5 auth.
    pub fn read(data: &[u8]) -> Option<Request<'_>> {
        let (&ctrl, body) = data.split_first()?;
        Some(Request {
            signal: [Signal::Metrics, Signal::Traces][usize::from(ctrl & 1)],
            encoding: [BodyEncoding::Protobuf, BodyEncoding::Json][usize::from((ctrl >> 1) & 1)],
            compression: [
                Compression::Identity,
                Compression::Gzip,
                Compression::RawGzip,
                Compression::Unsupported,
            ][usize::from((ctrl >> 2) & 3)],
            auth: [Auth::Agent, Auth::None, Auth::Tenant, Auth::Wrong]
                [usize::from((ctrl >> 4) & 3)],
            body,
        })
    }

    pub fn write(r: &Request<'_>) -> Vec<u8> {
        let ctrl = (r.signal as u8)
            | (r.encoding as u8) << 1
            | (r.compression as u8) << 2
            | (r.auth as u8) << 4;
        let mut out = vec![ctrl];
        out.extend_from_slice(r.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let ops = [
            records::Op::Record {
                conn: 2,
                client: true,
                dt_ms: 7,
                request: b"GET / HTTP/1.1\r\n\r\n",
                response: b"HTTP/1.1 200 OK\r\n\r\n",
            },
            records::Op::Close { conn: 1 },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            records::write(&mut bytes, op);
        }
        assert_eq!(records::read(&bytes), ops);

        let f = request_fields::Fields {
            config: b'3',
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            tenant_header: Some("acme"),
            path: "/api/v1/items/42",
            service: "shop",
            ..Default::default()
        };
        assert_eq!(request_fields::read(&request_fields::write(&f)), f);

        let r = otlp_request::Request {
            signal: otlp_request::Signal::Traces,
            encoding: otlp_request::BodyEncoding::Json,
            compression: otlp_request::Compression::Gzip,
            auth: otlp_request::Auth::Tenant,
            body: b"{}",
        };
        assert_eq!(otlp_request::read(&otlp_request::write(&r)), Some(r));
    }
}
