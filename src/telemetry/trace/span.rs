//! A span being recorded by busgate itself (one per hop), its name, and the span waiting
//! for export once it ended.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Event, SpanContext, Status, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;

use super::packed::PackedSpan;
use crate::error::Error;
use crate::telemetry::names::*;

/// `:<port><path>`, the name of SERVER spans (built without the formatting machinery: this
/// runs for every recorded hop).
pub fn server_span_name(port: u16, path: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut name = String::with_capacity(1 + port.len() + path.len());
    name.push(':');
    name.push_str(port);
    name.push_str(path);
    name
}

/// `<METHOD> <host>:<port><path>`, the name of CLIENT spans.
pub fn client_span_name(method: &str, host: &str, port: u16, path: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut name = String::with_capacity(method.len() + host.len() + port.len() + path.len() + 2);
    for part in [method, " ", host, ":", port, path] {
        name.push_str(part);
    }
    name
}

/// A span being recorded. Request paths own it outright (no locks, no shared state) and hand it
/// to [`ServiceTracer::end`](super::tracer::ServiceTracer::end); a span that is dropped instead is not exported.
#[derive(Debug)]
pub struct Span {
    pub(super) context: SpanContext,
    pub(super) recording: Recording,
}

/// How a span is being recorded.
#[derive(Debug)]
pub(super) enum Recording {
    /// Not recorded (telemetry off, nowhere to export, not sampled): the span still has ids,
    /// for propagation and logs.
    Off,
    /// As bytes, written in place: what almost every span stays.
    Packed(Box<PackedSpan>),
    /// As the SDK exports it: a span with an error (status message, `exception` event).
    Data(Box<SpanData>),
}

/// Attributes of a span being started, written as bytes into the span (no allocation per
/// value).
pub struct Attributes<'a>(pub(super) &'a mut PackedSpan);

impl Attributes<'_> {
    pub fn str(&mut self, key: SpanKey, value: &str) {
        self.0.push_str(key, value);
    }

    pub fn int(&mut self, key: SpanKey, value: i64) {
        self.0.push_i64(key, value);
    }
}

impl Span {
    /// The context children and outgoing messages carry.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether attributes are kept; skip building expensive ones otherwise.
    pub fn is_recording(&self) -> bool {
        !matches!(self.recording, Recording::Off)
    }

    pub fn set_int(&mut self, key: SpanKey, value: i64) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(KeyValue::new(key, value)),
            Recording::Packed(p) => p.push_i64(key, value),
        }
    }

    pub fn set_f64(&mut self, key: SpanKey, value: f64) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(KeyValue::new(key, value)),
            Recording::Packed(p) => p.push_f64(key, value),
        }
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(attribute),
            Recording::Packed(p) => p.push(attribute),
        }
    }

    pub fn set_status(&mut self, status: Status) {
        match (&mut self.recording, status) {
            (Recording::Off, _) => {}
            (Recording::Packed(p), Status::Ok) => p.set_ok(true),
            (Recording::Packed(p), Status::Unset) => p.set_ok(false),
            (_, status) => {
                if let Some(d) = self.data() {
                    d.status = status;
                }
            }
        }
    }

    /// The span as SDK data, unpacking a packed one (errors are rare: they take this path).
    fn data(&mut self) -> Option<&mut SpanData> {
        if let Recording::Packed(p) = &self.recording {
            // The tracer sets the scope when the span ends.
            let data = p.unpack(&InstrumentationScope::default());
            self.recording = Recording::Data(Box::new(data));
        }
        match &mut self.recording {
            Recording::Data(d) => Some(d),
            _ => None,
        }
    }

    /// Mark the span failed with `err`: status, HTTP status and an `exception` event.
    pub fn record_error(&mut self, err: &Error) {
        let Some(d) = self.data() else {
            return;
        };
        d.attributes
            .push(KeyValue::new(A_HTTP_STATUS, err.status().as_u16() as i64));
        d.events.events.push(Event::new(
            "exception",
            SystemTime::now(),
            vec![
                KeyValue::new(A_EXCEPTION_TYPE, format!("{:?}", err.kind())),
                KeyValue::new(A_EXCEPTION_MESSAGE, err.message().to_owned()),
                KeyValue::new(A_EXCEPTION_STACKTRACE, err.verbose()),
            ],
            0,
        ));
        d.status = Status::error(err.message().to_owned());
    }
}

/// A span waiting in the ring: packed (busgate's own), or as the SDK made it (handler spans,
/// spans turned into [`SpanData`] by an error).
#[derive(Debug)]
pub enum Waiting {
    Packed(Box<PackedSpan>),
    Data(Box<SpanData>),
}

impl Waiting {
    pub fn trace_id(&self) -> TraceId {
        match self {
            Waiting::Packed(p) => p.context.trace_id(),
            Waiting::Data(d) => d.span_context.trace_id(),
        }
    }

    pub(super) fn failed(&self) -> bool {
        match self {
            // A packed span has no error status: recording one unpacks it.
            Waiting::Packed(_) => false,
            Waiting::Data(d) => matches!(d.status, Status::Error { .. }),
        }
    }

    pub(super) fn duration(&self) -> Duration {
        let (start, end) = match self {
            Waiting::Packed(p) => (p.start_time(), p.end_time),
            Waiting::Data(d) => (d.start_time, d.end_time),
        };
        end.duration_since(start).unwrap_or_default()
    }

    pub fn into_data(self, scope: &InstrumentationScope) -> SpanData {
        match self {
            Waiting::Packed(p) => p.unpack(scope),
            Waiting::Data(d) => *d,
        }
    }
}
