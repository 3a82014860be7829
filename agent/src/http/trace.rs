//! W3C Trace Context of a captured request, through the OpenTelemetry propagator (the rules
//! for invalid, future-version and all-zero values are its, not ours).

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The caller's span, from a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    pub parent_span_id: [u8; 8],
    pub sampled: bool,
}

/// Two borrowed headers as a propagator carrier (no allocation).
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Parses the request's trace context; `None` when absent or invalid (a new trace starts).
pub fn incoming(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Incoming> {
    let traceparent = traceparent?;
    // The propagator parses ids as numbers and so accepts short ones ("abc" as a trace id),
    // and it trims the value, so a one-digit field padded with a space passes a length check;
    // W3C requires exactly 2-32-16-2 hex digits (later versions may append "-..." fields).
    let mut fields = traceparent.split('-');
    let lengths_ok = [2, 32, 16, 2].iter().all(|n| {
        fields
            .next()
            .is_some_and(|f| f.len() == *n && f.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !lengths_ok || (traceparent.starts_with("00") && traceparent.len() != 55) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate,
    });
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| Incoming {
        trace_id: sc.trace_id().to_bytes(),
        parent_span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

/// Lowercase hex, as trace ids appear in exemplars and logs.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparent_joins_the_trace() {
        let i = incoming(Some(VALID), Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(hex(&i.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&i.parent_span_id), "00f067aa0ba902b7");
        assert!(i.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!incoming(Some(&unsampled), None).expect("valid").sampled);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            // version ff is forbidden
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero trace id and parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            // wrong lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            // one-digit flags padded to two characters (found by fuzzing: the propagator
            // trims the value and took the flags as `0`)
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0 ",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\t",
        ] {
            assert_eq!(incoming(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(incoming(None, Some("a=b")), None);
    }

    #[test]
    fn future_versions_parse_their_first_fields() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(incoming(Some(future), None).is_some());
    }
}
