//! W3C trace context in the HTTP headers of bus messages: `traceparent` and `tracestate` read
//! and written without the SDK's propagator (every hop does both).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The W3C trace context in `headers` (names are case-insensitive there), marked remote; the
/// invalid [`SpanContext::NONE`] when there is none or it is malformed.
pub fn extract(headers: &HeaderMap) -> SpanContext {
    let Some((trace_id, span_id, flags)) = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    else {
        return SpanContext::NONE;
    };
    let trace_state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(trace_id, span_id, flags, true, trace_state)
}

/// `version-traceid-parentid-flags`, lowercase hex, as W3C Trace Context level 1 defines it;
/// versions after 00 may append fields.
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])? as u8;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])? as u64;
    let flags = hex(&v[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// Lowercase hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | v as u128)
    })
}

fn put_hex(out: &mut [u8], mut n: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Write `Traceparent` (and a non-empty `Tracestate`) for `cx`, replacing what was there.
pub fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    if !cx.is_valid() {
        return;
    }
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(
        &mut tp[3..35],
        u128::from_be_bytes(cx.trace_id().to_bytes()),
    );
    put_hex(
        &mut tp[36..52],
        u64::from_be_bytes(cx.span_id().to_bytes()) as u128,
    );
    put_hex(&mut tp[53..55], cx.trace_flags().to_u8() as u128);
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_bytes(&tp).expect("hex digits are a valid header value"),
    );
    // An empty `tracestate` says nothing; Microbus does not send it either.
    let state = cx.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// The 32-hex trace id of `cx`.
pub fn trace_id(cx: &SpanContext) -> String {
    trace_id_hex(cx.trace_id())
}

/// `trace_id` in 32 hex digits, written into a buffer and copied once: `{:032x}` cost ~750
/// instructions and `hex::encode` (a `String` collected from `char`s) ~1,200; this ~150.
pub fn trace_id_hex(trace_id: TraceId) -> String {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(trace_id.to_bytes(), &mut digits).expect("32 digits for 16 bytes");
    std::str::from_utf8(&digits).expect("hex digits").to_owned()
}

/// An OpenTelemetry context holding `cx` as a remote parent, for code that records its own
/// spans with an OpenTelemetry tracer.
pub fn otel_context(cx: &SpanContext) -> Context {
    Context::new().with_remote_span_context(cx.clone())
}

/// Parse a 32-hex trace id, as `:888/trace?id=` carries it.
pub fn parse_trace_id(hex: &str) -> Option<TraceId> {
    if hex.len() != 32 {
        return None;
    }
    TraceId::from_hex(hex)
        .ok()
        .filter(|t| *t != TraceId::INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_through_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "TRACEPARENT",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let cx = extract(&h);
        assert_eq!(trace_id(&cx), "0af7651916cd43dd8448eb211c80319c");
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(parse_trace_id("0af7651916cd43dd8448eb211c80319c").is_some());
        for bad in [
            "",
            "xyz",
            "00000000000000000000000000000000",
            "0af7651916cd43dd8448eb211c80319",
        ] {
            assert!(parse_trace_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for bad in [
            "",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            assert!(!extract(&h).is_valid(), "{bad}");
        }
        // A later version may append fields; flags other than sampled are not carried on.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static(
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-future",
            ),
        );
        let cx = extract(&h);
        assert!(cx.is_valid() && cx.is_remote() && cx.is_sampled());
        assert_eq!(cx.trace_flags(), TraceFlags::SAMPLED);
        h.insert("traceparent", HeaderValue::from_static(valid));
        h.insert("tracestate", HeaderValue::from_static("vendor=abc,other=1"));
        let cx = extract(&h);
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], valid);
        assert_eq!(out["tracestate"], "vendor=abc,other=1");
        // Injecting a context without state removes a stale one.
        inject(
            &SpanContext::new(
                cx.trace_id(),
                cx.span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            &mut out,
        );
        assert!(out.get("tracestate").is_none());
    }
}
