//! A span being recorded by busgate itself (one per hop), its name, and the span waiting
//! for export once it ended.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Event, SpanContext, Status, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;

use super::packed::PackedSpan;
use crate::error::Error;
use crate::telemetry::names::*;

/// A span's name, in its parts: written out only when the span is recorded, and told muffled
/// or not without being written (three names a request were built only for that check).
#[derive(Debug, Clone, Copy)]
pub enum SpanName<'a> {
    /// `:<port><path>`, a SERVER span.
    Server { port: u16, path: &'a str },
    /// `<METHOD> <host>:<port><path>`, a CLIENT span.
    Client {
        method: &'a str,
        host: &'a str,
        port: u16,
        path: &'a str,
    },
    /// Any other name, as it is.
    Text(&'a str),
}

/// Suffixes of the names of metrics scrapes, whose spans nobody wants to see.
const MUFFLED_SUFFIXES: [&str; 2] = ["/metrics.core/collect", "/metrics.core:443/collect"];

impl SpanName<'_> {
    /// The name written out.
    pub fn to_text(&self) -> String {
        match *self {
            SpanName::Server { port, path } => server_span_name(port, path),
            SpanName::Client {
                method,
                host,
                port,
                path,
            } => client_span_name(method, host, port, path),
            SpanName::Text(text) => text.to_owned(),
        }
    }

    /// Spans nobody wants to see: the `:888/trace` broadcast and metrics scrapes (their
    /// children follow, because they are not sampled). As the written name would tell for
    /// every name busgate makes: its paths start with `/` (or are empty) and its hosts hold
    /// none, so a suffix that starts with `/` can only end a name within its path.
    pub fn is_muffled(&self) -> bool {
        let muffled_path = |path: &str| MUFFLED_SUFFIXES.iter().any(|s| path.ends_with(s));
        match *self {
            SpanName::Server { port, path } => {
                (port == 888 && path == "/trace") || muffled_path(path)
            }
            SpanName::Client { path, .. } => muffled_path(path),
            SpanName::Text(text) => text == ":888/trace" || muffled_path(text),
        }
    }
}

/// `:<port><path>`, the name of SERVER spans (built without the formatting machinery: this
/// runs for every recorded hop).
fn server_span_name(port: u16, path: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut name = String::with_capacity(1 + port.len() + path.len());
    name.push(':');
    name.push_str(port);
    name.push_str(path);
    name
}

/// `<METHOD> <host>:<port><path>`, the name of CLIENT spans.
fn client_span_name(method: &str, host: &str, port: u16, path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule on the written name, as it was applied before names were kept in parts.
    fn muffled_text(name: &str) -> bool {
        name == ":888/trace"
            || name.ends_with("/metrics.core/collect")
            || name.ends_with("/metrics.core:443/collect")
    }

    #[test]
    fn names_are_muffled_as_their_written_text_would_be() {
        let paths = [
            "",
            "/",
            "/trace",
            "/trace/x",
            "/collect",
            "/metrics.core/collect",
            "/metrics.core:443/collect",
            "/metrics.core/collect/",
            "/x/metrics.core/collect",
            "/metrics.core:444/collect",
            "metrics.core/collect",
        ];
        for port in [0, 80, 443, 888, 8080] {
            for path in paths {
                let server = SpanName::Server { port, path };
                assert_eq!(server.to_text(), format!(":{port}{path}"));
                assert_eq!(
                    server.is_muffled(),
                    muffled_text(&server.to_text()),
                    "{server:?}"
                );
                for host in ["metrics.core", "calc.example"] {
                    let client = SpanName::Client {
                        method: "GET",
                        host,
                        port,
                        path,
                    };
                    assert_eq!(client.to_text(), format!("GET {host}:{port}{path}"));
                    assert_eq!(
                        client.is_muffled(),
                        muffled_text(&client.to_text()),
                        "{client:?}"
                    );
                }
            }
        }
        for text in [
            ":888/trace",
            ":443/x",
            "GET a:443/metrics.core/collect",
            "x",
        ] {
            assert_eq!(SpanName::Text(text).is_muffled(), muffled_text(text));
            assert_eq!(SpanName::Text(text).to_text(), text);
        }
    }
}
