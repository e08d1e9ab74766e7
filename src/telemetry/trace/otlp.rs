//! OTLP/HTTP protobuf export: spans encoded straight into the `ExportTraceServiceRequest`
//! bytes (busgate's own spans from their packed bytes, others from the SDK's [`SpanData`]) and
//! posted by a blocking client on the exporting thread.
//!
//! Why not `opentelemetry-otlp`'s HTTP exporter (still used for gRPC): it converts every span
//! into the generated message structs (a copy of every string, a map to group by scope) and
//! prost then re-measures each nested message once per level it is nested in. That came to
//! ~18k instructions per span, most of what exporting every span cost the gateway. Here each
//! span is measured once and written once, and the resource is encoded once per exporter. The
//! bytes are checked against `opentelemetry-proto`'s own conversion in the tests.

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

use super::packed::{packed_key_value_len, packed_value_len, PackedSpan, PackedValue};
use super::protobuf::*;
use super::span::Waiting;

/// The body of the `Resource` message for `resource`.
pub fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut out = Proto::default();
    for (key, value) in resource.iter() {
        out.message_header(1, key_value_len(key.as_str(), value));
        out.key_value(key.as_str(), value);
    }
    out.0
}

/// An `ExportTraceServiceRequest` holding `spans` of one resource (`resource`: the encoded
/// `Resource` message body), grouped by instrumentation scope in order of first appearance;
/// packed spans are of `own_scope`.
pub fn encode_request(
    resource: &[u8],
    resource_schema_url: &str,
    own_scope: &InstrumentationScope,
    spans: &[Waiting],
) -> Vec<u8> {
    // Group by scope; a batch holds one or two scopes, so a list beats a map.
    let mut scopes: Vec<(&InstrumentationScope, Vec<usize>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let scope = match span {
            Waiting::Packed(_) => own_scope,
            Waiting::Data(d) => &d.instrumentation_scope,
        };
        match scopes
            .iter_mut()
            .find(|(s, _)| std::ptr::eq(*s, scope) || *s == scope)
        {
            Some((_, members)) => members.push(i),
            None => scopes.push((scope, vec![i])),
        }
    }
    // Measure every span once; the enclosing messages' lengths are sums.
    let span_lens: Vec<usize> = spans
        .iter()
        .map(|w| match w {
            Waiting::Packed(p) => packed_span_len(p),
            Waiting::Data(d) => span_len(d),
        })
        .collect();
    let scope_lens: Vec<(usize, usize)> = scopes
        .iter()
        .map(|(scope, members)| {
            let scope_msg = scope_len(scope);
            let body = field_len(1, scope_msg)
                + members
                    .iter()
                    .map(|&i| field_len(2, span_lens[i]))
                    .sum::<usize>()
                + string_len(3, scope.schema_url().unwrap_or_default());
            (scope_msg, body)
        })
        .collect();
    let resource_spans_len = field_len(1, resource.len())
        + scope_lens
            .iter()
            .map(|&(_, body)| field_len(2, body))
            .sum::<usize>()
        + string_len(3, resource_schema_url);

    let mut out = Proto(Vec::with_capacity(field_len(1, resource_spans_len)));
    out.message_header(1, resource_spans_len);
    out.message_header(1, resource.len());
    out.0.extend_from_slice(resource);
    for ((scope, members), &(scope_msg, body)) in scopes.iter().zip(&scope_lens) {
        out.message_header(2, body);
        out.message_header(1, scope_msg);
        out.scope(scope);
        for &i in members {
            out.message_header(2, span_lens[i]);
            match &spans[i] {
                Waiting::Packed(p) => out.packed_span(p),
                Waiting::Data(d) => out.span(d),
            }
        }
        out.string(3, scope.schema_url().unwrap_or_default());
    }
    out.string(3, resource_schema_url);
    out.0
}

#[inline]
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

#[inline]
fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// OTLP span flags: the W3C flags, and whether the parent is known to be remote.
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if parent_is_remote { IS_REMOTE } else { 0 }
}

fn status_code(s: &Status) -> u64 {
    match s {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { .. } => 2,
    }
}

fn status_message(s: &Status) -> &str {
    match s {
        Status::Error { description } => description,
        _ => "",
    }
}

/// The body of an `AnyValue` message.
#[inline]
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => tag_len(2) + 1,
        Value::I64(i) => tag_len(3) + varint_len(*i as u64),
        Value::F64(_) => tag_len(4) + 8,
        Value::String(s) => field_len(1, s.as_str().len()),
        Value::Array(a) => field_len(5, array_len(a)),
        // Kinds added after this was written go as their string form.
        other => field_len(1, other.as_str().len()),
    }
}

/// The body of an `ArrayValue` message: each element an `AnyValue`.
fn array_len(a: &Array) -> usize {
    fn each<T>(values: &[T], len: impl Fn(&T) -> usize) -> usize {
        values.iter().map(|v| field_len(1, len(v))).sum()
    }
    match a {
        Array::Bool(v) => each(v, |_| tag_len(2) + 1),
        Array::I64(v) => each(v, |i| tag_len(3) + varint_len(*i as u64)),
        Array::F64(v) => each(v, |_| tag_len(4) + 8),
        Array::String(v) => each(v, |s| field_len(1, s.as_str().len())),
        _ => 0,
    }
}

/// The fields every span has, whichever way it was recorded: ids, trace state, parent, flags,
/// name, kind and times (fields 1-8 and 16).
struct SpanHead<'a> {
    context: &'a opentelemetry::trace::SpanContext,
    parent: opentelemetry::trace::SpanId,
    parent_is_remote: bool,
    name: &'a [u8],
    kind: &'a SpanKind,
    start: SystemTime,
    end: SystemTime,
}

impl<'a> SpanHead<'a> {
    fn of_packed(p: &'a PackedSpan, name: &'a [u8]) -> SpanHead<'a> {
        SpanHead {
            context: &p.context,
            parent: p.parent_span_id(),
            parent_is_remote: p.parent_span_is_remote(),
            name,
            kind: p.kind(),
            start: p.start_time(),
            end: p.end_time,
        }
    }

    fn of_data(s: &'a SpanData) -> SpanHead<'a> {
        SpanHead {
            context: &s.span_context,
            parent: s.parent_span_id,
            parent_is_remote: s.parent_span_is_remote,
            name: s.name.as_bytes(),
            kind: &s.span_kind,
            start: s.start_time,
            end: s.end_time,
        }
    }

    fn has_parent(&self) -> bool {
        self.parent != opentelemetry::trace::SpanId::INVALID
    }

    fn len(&self) -> usize {
        field_len(1, 16)
            + field_len(2, 8)
            + string_len(3, &self.context.trace_state().header())
            + if self.has_parent() {
                field_len(4, 8)
            } else {
                0
            }
            + tag_len(16)
            + 4
            + bytes_len(5, self.name)
            + varint_field_len(6, kind(self.kind))
            + fixed64_field_len(7, nanos(self.start))
            + fixed64_field_len(8, nanos(self.end))
    }
}

/// The body of a `Span` message for a packed span (no events or links: those unpack it).
fn packed_span_len(p: &PackedSpan) -> usize {
    let (name, _, aside) = p.read();
    SpanHead::of_packed(p, name).len()
        + p.encoded_attributes_len()
        + attributes_len(9, aside)
        + field_len(15, status_len(&p.status()))
}

/// The body of a `KeyValue` message.
#[inline]
fn key_value_len(key: &str, value: &Value) -> usize {
    string_len(1, key) + field_len(2, any_value_len(value))
}

fn attributes_len(field: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| field_len(field, key_value_len(kv.key.as_str(), &kv.value)))
        .sum()
}

fn scope_len(s: &InstrumentationScope) -> usize {
    let attributes: usize = s
        .attributes()
        .map(|kv| field_len(3, key_value_len(kv.key.as_str(), &kv.value)))
        .sum();
    string_len(1, s.name()) + string_len(2, s.version().unwrap_or_default()) + attributes
}

fn status_len(s: &Status) -> usize {
    string_len(2, status_message(s)) + varint_field_len(3, status_code(s))
}

/// The body of an `Event` message.
fn event_len(e: &opentelemetry::trace::Event) -> usize {
    fixed64_field_len(1, nanos(e.timestamp))
        + string_len(2, &e.name)
        + attributes_len(3, &e.attributes)
        + varint_field_len(4, u64::from(e.dropped_attributes_count))
}

/// The body of a `Span` message.
fn span_len(s: &SpanData) -> usize {
    let events: usize = s.events.iter().map(|e| field_len(11, event_len(e))).sum();
    let links: usize = s.links.iter().map(|l| field_len(13, link_len(l))).sum();
    SpanHead::of_data(s).len()
        + attributes_len(9, &s.attributes)
        + varint_field_len(10, u64::from(s.dropped_attributes_count))
        + events
        + varint_field_len(12, u64::from(s.events.dropped_count))
        + links
        + varint_field_len(14, u64::from(s.links.dropped_count))
        + field_len(15, status_len(&s.status))
}

fn link_len(l: &opentelemetry::trace::Link) -> usize {
    let cx = &l.span_context;
    field_len(1, 16)
        + field_len(2, 8)
        + string_len(3, &cx.trace_state().header())
        + attributes_len(4, &l.attributes)
        + varint_field_len(5, u64::from(l.dropped_attributes_count))
        + tag_len(6)
        + 4
}

impl Proto {
    /// An `AnyValue` body. Its one-of field is written even when it holds a default value.
    fn any_value(&mut self, v: &Value) {
        match v {
            Value::Bool(b) => {
                self.tag(2, VARINT);
                self.varint(u64::from(*b));
            }
            Value::I64(i) => {
                self.tag(3, VARINT);
                self.varint(*i as u64);
            }
            Value::F64(f) => {
                self.tag(4, FIXED64);
                self.0.extend_from_slice(&f.to_le_bytes());
            }
            Value::String(s) => self.bytes(1, s.as_str().as_bytes()),
            Value::Array(a) => {
                self.message_header(5, array_len(a));
                self.array(a);
            }
            other => self.bytes(1, other.as_str().as_bytes()),
        }
    }

    fn array(&mut self, a: &Array) {
        match a {
            Array::Bool(v) => v.iter().for_each(|b| {
                self.message_header(1, tag_len(2) + 1);
                self.any_value(&Value::Bool(*b));
            }),
            Array::I64(v) => v.iter().for_each(|i| {
                self.message_header(1, tag_len(3) + varint_len(*i as u64));
                self.any_value(&Value::I64(*i));
            }),
            Array::F64(v) => v.iter().for_each(|f| {
                self.message_header(1, tag_len(4) + 8);
                self.any_value(&Value::F64(*f));
            }),
            Array::String(v) => v.iter().for_each(|s| {
                self.message_header(1, field_len(1, s.as_str().len()));
                self.bytes(1, s.as_str().as_bytes());
            }),
            _ => {}
        }
    }

    fn key_value(&mut self, key: &str, value: &Value) {
        self.string(1, key);
        self.message_header(2, any_value_len(value));
        self.any_value(value);
    }

    fn attributes(&mut self, field: u32, attributes: &[KeyValue]) {
        for kv in attributes {
            self.message_header(field, key_value_len(kv.key.as_str(), &kv.value));
            self.key_value(kv.key.as_str(), &kv.value);
        }
    }

    fn scope(&mut self, s: &InstrumentationScope) {
        self.string(1, s.name());
        self.string(2, s.version().unwrap_or_default());
        for kv in s.attributes() {
            self.message_header(3, key_value_len(kv.key.as_str(), &kv.value));
            self.key_value(kv.key.as_str(), &kv.value);
        }
    }

    fn packed_value(&mut self, v: PackedValue<'_>) {
        match v {
            PackedValue::Bool(b) => {
                self.tag(2, VARINT);
                self.varint(u64::from(b));
            }
            PackedValue::I64(i) => {
                self.tag(3, VARINT);
                self.varint(i as u64);
            }
            PackedValue::F64(f) => {
                self.tag(4, FIXED64);
                self.0.extend_from_slice(&f.to_le_bytes());
            }
            PackedValue::Str(s) => self.bytes(1, s),
        }
    }

    /// A bytes field, omitted when empty (proto3).
    #[inline]
    fn optional_bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.bytes(field, b);
        }
    }

    fn span_head(&mut self, h: &SpanHead<'_>) {
        let cx = h.context;
        self.bytes(1, &cx.trace_id().to_bytes());
        self.bytes(2, &cx.span_id().to_bytes());
        self.string(3, &cx.trace_state().header());
        if h.has_parent() {
            self.bytes(4, &h.parent.to_bytes());
        }
        self.fixed32_field(16, span_flags(cx.trace_flags().to_u8(), h.parent_is_remote));
        self.optional_bytes(5, h.name);
        self.varint_field(6, kind(h.kind));
        self.fixed64_field(7, nanos(h.start));
        self.fixed64_field(8, nanos(h.end));
    }

    fn status(&mut self, s: &Status) {
        self.message_header(15, status_len(s));
        self.string(2, status_message(s));
        self.varint_field(3, status_code(s));
    }

    fn packed_span(&mut self, p: &PackedSpan) {
        let (name, packed, aside) = p.read();
        self.span_head(&SpanHead::of_packed(p, name));
        for a in packed {
            self.message_header(9, packed_key_value_len(a.key.bytes().len(), a.value));
            self.optional_bytes(1, a.key.bytes());
            self.message_header(2, packed_value_len(a.value));
            self.packed_value(a.value);
        }
        self.attributes(9, aside);
        self.status(&p.status());
    }

    fn span(&mut self, s: &SpanData) {
        self.span_head(&SpanHead::of_data(s));
        self.attributes(9, &s.attributes);
        self.varint_field(10, u64::from(s.dropped_attributes_count));
        for e in s.events.iter() {
            self.message_header(11, event_len(e));
            self.fixed64_field(1, nanos(e.timestamp));
            self.string(2, &e.name);
            self.attributes(3, &e.attributes);
            self.varint_field(4, u64::from(e.dropped_attributes_count));
        }
        self.varint_field(12, u64::from(s.events.dropped_count));
        for l in s.links.iter() {
            self.message_header(13, link_len(l));
            let lcx = &l.span_context;
            self.bytes(1, &lcx.trace_id().to_bytes());
            self.bytes(2, &lcx.span_id().to_bytes());
            self.string(3, &lcx.trace_state().header());
            self.attributes(4, &l.attributes);
            self.varint_field(5, u64::from(l.dropped_attributes_count));
            self.fixed32_field(6, span_flags(lcx.trace_flags().to_u8(), lcx.is_remote()));
        }
        self.varint_field(14, u64::from(s.links.dropped_count));
        self.status(&s.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;
    use std::str::FromStr;
    use std::time::Duration;

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_str(state).unwrap(),
        )
    }

    fn span(i: u64, scope: &InstrumentationScope) -> SpanData {
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        let statuses = [
            Status::Unset,
            Status::Ok,
            Status::error("it broke: ünïcødé"),
        ];
        let mut attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("empty", ""),
            KeyValue::new("flag", i.is_multiple_of(2)),
            KeyValue::new("negative", -(i as i64) - 1),
            KeyValue::new("zero", 0i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("ratio", 0.125 * i as f64),
            KeyValue::new("bools", Value::Array(vec![true, false].into())),
            KeyValue::new("ints", Value::Array(vec![0i64, -5, 300].into())),
            KeyValue::new("floats", Value::Array(vec![1.5f64, -0.0].into())),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "".into(), "ü".into()])),
            ),
            // Lengths past one and two varint bytes.
            KeyValue::new("long", "x".repeat(200 * i as usize)),
        ];
        if i == 3 {
            attributes.push(KeyValue::new("huge", "y".repeat(20_000)));
        }
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        if i % 2 == 1 {
            events.events.push(Event::new(
                "exception",
                SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                vec![
                    KeyValue::new("exception.type", "Timeout"),
                    KeyValue::new("exception.message", "slow"),
                ],
                2,
            ));
            events
                .events
                .push(Event::new("bare", SystemTime::UNIX_EPOCH, vec![], 0));
            events.dropped_count = 4;
            links.links.push(Link::new(
                context(99, 98, true, "k=v"),
                vec![KeyValue::new("link.kind", "follows")],
                1,
            ));
            links.dropped_count = 1;
        }
        SpanData {
            span_context: context(
                7 + u128::from(i),
                100 + i,
                false,
                if i == 2 { "a=1,b=2" } else { "" },
            ),
            parent_span_id: if i == 0 {
                SpanId::INVALID
            } else {
                SpanId::from(50 + i)
            },
            parent_span_is_remote: i == 1,
            span_kind: kinds[i as usize % kinds.len()].clone(),
            name: format!(":443/route/{i}").into(),
            start_time: SystemTime::UNIX_EPOCH
                + Duration::from_nanos(1_700_000_000_000_000_000 + i),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_001_000_000_000 + i),
            attributes,
            dropped_attributes_count: i as u32,
            events,
            links,
            status: statuses[i as usize % statuses.len()].clone(),
            instrumentation_scope: scope.clone(),
        }
    }

    /// The bytes decode to exactly what `opentelemetry-proto` (the crate the collector's
    /// schema is generated into) builds from the same spans.
    #[test]
    fn requests_decode_to_what_opentelemetry_proto_builds() {
        let own = InstrumentationScope::builder("busgate")
            .with_version("0.1.0")
            .build();
        let handler = InstrumentationScope::builder("busgate.handler")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([KeyValue::new("scope.attr", 3i64)])
            .build();
        // Scopes interleaved: grouping keeps the order of first appearance.
        let mut waiting: Vec<Waiting> = (0..6)
            .map(|i| Waiting::Data(Box::new(span(i, if i % 3 == 1 { &handler } else { &own }))))
            .collect();
        // busgate's own spans, packed, of the own scope: one with a parent and attributes of
        // every packed kind, one root whose name and an attribute did not fit.
        let mut p = PackedSpan::new(
            &context(5, 6, true, "x=y"),
            SpanKind::Client,
            "GET calculator.example:443/arithmetic",
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_500),
        );
        p.push_str(crate::telemetry::names::A_MESSAGING_SYSTEM, "nats");
        p.push_str(crate::telemetry::names::SpanKey::custom("custom.key"), "");
        p.push_i64(crate::telemetry::names::A_SERVER_PORT, -443);
        p.push_f64(crate::telemetry::names::A_ACK_LATENCY_MS, 0.25);
        p.push(KeyValue::new("flag", false));
        p.push(KeyValue::new("list", Value::Array(vec![1i64, 2].into())));
        p.set_ok(true);
        p.context = context(5, 60, false, "x=y");
        p.end_time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_900_000);
        waiting.insert(1, Waiting::Packed(p));
        let mut p = PackedSpan::new(
            &SpanContext::NONE,
            SpanKind::Server,
            &"n".repeat(1000),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_700),
        );
        p.push_str(crate::telemetry::names::A_URL_PATH, &"p".repeat(1000));
        p.context = context(8, 80, false, "");
        p.end_time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_900_700);
        waiting.push(Waiting::Packed(p));
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "calculator.example"),
                KeyValue::new("service.version", "7"),
                KeyValue::new("service.instance.id", "a1b2c3d4e5"),
            ])
            .build();
        let ours = ExportTraceServiceRequest::decode(
            &encode_request(&encode_resource(&resource), "", &own, &waiting)[..],
        )
        .expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                waiting.into_iter().map(|w| w.into_data(&own)).collect(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(ours, theirs);
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
    }

    #[test]
    fn varint_lengths() {
        for (v, len) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), len, "{v}");
            let mut p = Proto::default();
            p.varint(v);
            assert_eq!(p.0.len(), len, "{v}");
        }
    }
}
