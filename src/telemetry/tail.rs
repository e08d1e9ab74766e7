//! PROD's tail selection: ended spans wait in a bounded buffer until their trace proves worth
//! keeping (an error, a slow span, a `:888/trace` selection) or they are evicted.
//!
//! Almost every buffered span is evicted unseen, and under load the buffer is larger than the
//! CPU caches: what it costs is memory traffic, not instructions. So a waiting span is packed
//! into one contiguous allocation (~250 bytes instead of ~1.4 KB spread over a dozen
//! allocations: known attribute keys as one-byte indexes, the instrumentation scope shared) and
//! unpacked only when its trace is selected.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

use std::sync::Mutex;

use super::names::SPAN_ATTRIBUTES;

/// Traces PROD remembers as selected, and for how long after the last selection.
pub const SELECTED_TRACES_MAX: usize = 8192;
pub const SELECTION_TTL: Duration = Duration::from_secs(20);

/// Exports the spans of selected traces through `batch`; holds the others.
#[derive(Debug)]
pub struct Selector {
    batch: BatchSpanProcessor,
    /// The scope of every span this selector sees (packed spans do not repeat it).
    scope: InstrumentationScope,
    slow: Duration,
    capacity: usize,
    state: Mutex<SelectorState>,
}

#[derive(Debug, Default)]
struct SelectorState {
    buffer: VecDeque<Waiting>,
    selected: HashMap<TraceId, Instant>,
}

impl SelectorState {
    fn is_selected(&self, trace_id: TraceId) -> bool {
        // Most spans belong to unselected traces: skip the hash when there is nothing to find.
        !self.selected.is_empty()
            && self
                .selected
                .get(&trace_id)
                .is_some_and(|at| at.elapsed() < SELECTION_TTL)
    }

    /// Remember `trace_id` as selected and take its buffered spans.
    fn select(&mut self, trace_id: TraceId) -> Vec<Waiting> {
        if self.selected.len() >= SELECTED_TRACES_MAX {
            self.selected.retain(|_, at| at.elapsed() < SELECTION_TTL);
            if self.selected.len() >= SELECTED_TRACES_MAX {
                // Forget the oldest selection rather than grow without bound.
                if let Some(oldest) = self
                    .selected
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(t, _)| *t)
                {
                    self.selected.remove(&oldest);
                }
            }
        }
        self.selected.insert(trace_id, Instant::now());
        let mut flushed = Vec::new();
        self.buffer.retain_mut(|w| {
            if w.trace_id() == trace_id {
                flushed.push(std::mem::replace(w, Waiting::Taken));
                false
            } else {
                true
            }
        });
        flushed
    }
}

impl Selector {
    pub fn new(
        batch: BatchSpanProcessor,
        scope: InstrumentationScope,
        slow: Duration,
        capacity: usize,
    ) -> Selector {
        Selector {
            batch,
            scope,
            slow,
            capacity: capacity.max(1),
            state: Mutex::new(SelectorState::default()),
        }
    }

    /// The processor selected spans go to.
    pub fn batch(&self) -> &BatchSpanProcessor {
        &self.batch
    }

    /// Export `trace_id`'s buffered spans and its future ones.
    pub fn select(&self, trace_id: TraceId) {
        let flushed = self.state.lock().expect("selector lock").select(trace_id);
        self.export(flushed);
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.state
            .lock()
            .expect("selector lock")
            .is_selected(trace_id)
    }

    fn export(&self, spans: Vec<Waiting>) {
        for w in spans {
            if let Some(span) = w.unpack(&self.scope) {
                self.batch.on_end(span);
            }
        }
    }

    pub fn on_end(&self, span: SpanData) {
        let trace_id = span.span_context.trace_id();
        let failed = matches!(span.status, Status::Error { .. });
        let slow = span
            .end_time
            .duration_since(span.start_time)
            .is_ok_and(|d| d >= self.slow);
        if !(failed || slow) {
            // Packed before taking the lock: the lock guards only the queue.
            let waiting = Waiting::pack(span, &self.scope);
            let mut st = self.state.lock().expect("selector lock");
            if !st.is_selected(trace_id) {
                let evicted = if st.buffer.len() >= self.capacity {
                    st.buffer.pop_front()
                } else {
                    None
                };
                st.buffer.push_back(waiting);
                drop(st);
                // Freed outside the lock.
                drop(evicted);
                return;
            }
            drop(st);
            self.export(vec![waiting]);
            return;
        }
        let flushed = {
            let mut st = self.state.lock().expect("selector lock");
            if st.is_selected(trace_id) {
                Vec::new()
            } else {
                st.select(trace_id)
            }
        };
        self.export(flushed);
        self.batch.on_end(span);
    }
}

/// A span in the tail buffer.
#[derive(Debug)]
enum Waiting {
    Packed(Box<PackedSpan>),
    /// What packing does not cover (events, links, array attributes) waits as it is.
    Full(Box<SpanData>),
    /// Moved out by a selection.
    Taken,
}

/// The fields of a plain span, with its name and attributes in one byte string.
#[derive(Debug)]
struct PackedSpan {
    context: SpanContext,
    parent_span_id: SpanId,
    parent_span_is_remote: bool,
    kind: SpanKind,
    start_time: SystemTime,
    end_time: SystemTime,
    /// `Status::Ok` rather than `Unset` (spans with errors are never packed).
    ok: bool,
    /// The name, then per attribute: key (an index into [`SPAN_ATTRIBUTES`], or
    /// [`LITERAL_KEY`] and the key), type tag, value (see [`Waiting::pack`]).
    bytes: Box<[u8]>,
}

const TAG_BOOL: u8 = 0;
const TAG_I64: u8 = 1;
const TAG_F64: u8 = 2;
const TAG_STRING: u8 = 3;
/// A key that is not in [`SPAN_ATTRIBUTES`] follows as a string.
const LITERAL_KEY: u8 = 0xff;

fn known_key(key: &str) -> Option<u8> {
    SPAN_ATTRIBUTES
        .iter()
        .position(|k| k.len() == key.len() && *k == key)
        .map(|i| i as u8)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn word(&mut self) -> Option<[u8; 8]> {
        self.take(8).map(|b| b.try_into().expect("8 bytes"))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

impl Waiting {
    fn trace_id(&self) -> TraceId {
        match self {
            Waiting::Packed(p) => p.context.trace_id(),
            Waiting::Full(s) => s.span_context.trace_id(),
            Waiting::Taken => TraceId::INVALID,
        }
    }

    fn pack(span: SpanData, scope: &InstrumentationScope) -> Waiting {
        let packable = span.events.is_empty()
            && span.links.is_empty()
            && span.dropped_attributes_count == 0
            && !matches!(span.status, Status::Error { .. })
            && span.instrumentation_scope.name() == scope.name()
            && span.instrumentation_scope.version() == scope.version()
            && span.attributes.iter().all(|kv| {
                matches!(
                    kv.value,
                    Value::Bool(_) | Value::I64(_) | Value::F64(_) | Value::String(_)
                )
            });
        if !packable {
            return Waiting::Full(Box::new(span));
        }
        // Exact, so that the boxed slice needs no reallocation.
        let size = 4
            + span.name.len()
            + span
                .attributes
                .iter()
                .map(|kv| {
                    let key = match known_key(kv.key.as_str()) {
                        Some(_) => 1,
                        None => 5 + kv.key.as_str().len(),
                    };
                    let value = match &kv.value {
                        Value::Bool(_) => 1,
                        Value::String(s) => 4 + s.as_str().len(),
                        _ => 8,
                    };
                    key + 1 + value
                })
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        put_str(&mut bytes, &span.name);
        for kv in &span.attributes {
            match known_key(kv.key.as_str()) {
                Some(i) => bytes.push(i),
                None => {
                    bytes.push(LITERAL_KEY);
                    put_str(&mut bytes, kv.key.as_str());
                }
            }
            match &kv.value {
                Value::Bool(b) => bytes.extend_from_slice(&[TAG_BOOL, *b as u8]),
                Value::I64(i) => {
                    bytes.push(TAG_I64);
                    bytes.extend_from_slice(&i.to_le_bytes());
                }
                Value::F64(f) => {
                    bytes.push(TAG_F64);
                    bytes.extend_from_slice(&f.to_le_bytes());
                }
                Value::String(s) => {
                    bytes.push(TAG_STRING);
                    put_str(&mut bytes, s.as_str());
                }
                _ => unreachable!("checked above"),
            }
        }
        debug_assert_eq!(bytes.len(), size);
        Waiting::Packed(Box::new(PackedSpan {
            context: span.span_context,
            parent_span_id: span.parent_span_id,
            parent_span_is_remote: span.parent_span_is_remote,
            kind: span.span_kind,
            start_time: span.start_time,
            end_time: span.end_time,
            ok: matches!(span.status, Status::Ok),
            bytes: bytes.into_boxed_slice(),
        }))
    }

    fn unpack(self, scope: &InstrumentationScope) -> Option<SpanData> {
        let p = match self {
            Waiting::Packed(p) => p,
            Waiting::Full(s) => return Some(*s),
            Waiting::Taken => return None,
        };
        let mut r = Reader(&p.bytes);
        let name = r.str()?.to_owned();
        let mut attributes = Vec::new();
        while !r.0.is_empty() {
            let key = match r.u8()? {
                LITERAL_KEY => Key::from(r.str()?.to_owned()),
                i => Key::from_static_str(SPAN_ATTRIBUTES.get(i as usize)?),
            };
            let value = match r.u8()? {
                TAG_BOOL => Value::Bool(r.u8()? != 0),
                TAG_I64 => Value::I64(i64::from_le_bytes(r.word()?)),
                TAG_F64 => Value::F64(f64::from_le_bytes(r.word()?)),
                TAG_STRING => Value::from(r.str()?.to_owned()),
                _ => return None,
            };
            attributes.push(KeyValue::new(key, value));
        }
        Some(SpanData {
            span_context: p.context,
            parent_span_id: p.parent_span_id,
            parent_span_is_remote: p.parent_span_is_remote,
            span_kind: p.kind,
            name: name.into(),
            start_time: p.start_time,
            end_time: p.end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if p.ok { Status::Ok } else { Status::Unset },
            instrumentation_scope: scope.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("busgate")
            .with_version("1")
            .build()
    }

    fn span(attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(3u64),
            parent_span_is_remote: true,
            span_kind: SpanKind::Client,
            name: "GET calculator.example:443/arithmetic".into(),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: scope(),
        }
    }

    #[test]
    fn a_packed_span_unpacks_to_the_same_span() {
        let original = span(vec![
            KeyValue::new(super::super::names::A_MESSAGING_SYSTEM, "nats"),
            KeyValue::new("custom.key", "not a known key"),
            KeyValue::new(
                "messaging.destination.name",
                "microbus.443.x.|.GET.y".to_owned(),
            ),
            KeyValue::new("server.port", 443i64),
            KeyValue::new("microbus.ack.latency_ms", 0.125),
            KeyValue::new("flag", true),
            KeyValue::new("empty", ""),
            KeyValue::new("unicode", "ünïcødé ✓"),
        ]);
        let packed = Waiting::pack(original.clone(), &scope());
        assert!(matches!(packed, Waiting::Packed(_)));
        assert_eq!(packed.trace_id(), TraceId::from(7u128));
        assert_eq!(packed.unpack(&scope()).unwrap(), original);
    }

    #[test]
    fn spans_packing_does_not_cover_wait_as_they_are() {
        let mut with_event = span(vec![]);
        with_event
            .events
            .events
            .push(opentelemetry::trace::Event::new(
                "exception",
                SystemTime::UNIX_EPOCH,
                vec![],
                0,
            ));
        let with_array = span(vec![KeyValue::new(
            "list",
            Value::Array(vec![1i64, 2].into()),
        )]);
        let mut failed = span(vec![]);
        failed.status = Status::error("boom");
        for s in [with_event, with_array, failed] {
            let waiting = Waiting::pack(s.clone(), &scope());
            assert!(matches!(waiting, Waiting::Full(_)));
            assert_eq!(waiting.unpack(&scope()).unwrap(), s);
        }
    }
}
