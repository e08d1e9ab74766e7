//! PROD's tail selection: ended spans wait in a bounded buffer until their trace proves worth
//! keeping (an error, a slow span, a `:888/trace` selection) or they are evicted.
//!
//! Almost every buffered span is evicted unseen, and under load what the buffer costs is memory
//! traffic, not instructions. So the buffer is a ring of fixed slots allocated once: a waiting
//! span is packed into its slot (~250 bytes written: known attribute keys as one-byte indexes,
//! the instrumentation scope shared), eviction is overwriting, and no allocation is made or
//! freed per span; a span is unpacked only when its trace is selected.

use std::collections::HashMap;
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

/// Bytes a slot holds for a span's name and attributes; a span that needs more waits as it is
/// (boxed). Only the bytes used are written.
const SLOT_BYTES: usize = 512;

/// Exports the spans of selected traces through `batch`; holds the others.
#[derive(Debug)]
pub struct Selector {
    batch: BatchSpanProcessor,
    /// The scope of every span this selector sees (packed spans do not repeat it).
    scope: InstrumentationScope,
    slow: Duration,
    state: Mutex<SelectorState>,
}

#[derive(Debug)]
struct SelectorState {
    ring: Ring,
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
    fn select(&mut self, trace_id: TraceId, scope: &InstrumentationScope) -> Vec<SpanData> {
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
        self.ring.take_trace(trace_id, scope)
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
            state: Mutex::new(SelectorState {
                ring: Ring::new(capacity),
                selected: HashMap::new(),
            }),
        }
    }

    /// The processor selected spans go to.
    pub fn batch(&self) -> &BatchSpanProcessor {
        &self.batch
    }

    /// Export `trace_id`'s buffered spans and its future ones.
    pub fn select(&self, trace_id: TraceId) {
        let flushed = self
            .state
            .lock()
            .expect("selector lock")
            .select(trace_id, &self.scope);
        for span in flushed {
            self.batch.on_end(span);
        }
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.state
            .lock()
            .expect("selector lock")
            .is_selected(trace_id)
    }

    pub fn on_end(&self, span: SpanData) {
        let trace_id = span.span_context.trace_id();
        let failed = matches!(span.status, Status::Error { .. });
        let slow = span
            .end_time
            .duration_since(span.start_time)
            .is_ok_and(|d| d >= self.slow);
        let mut st = self.state.lock().expect("selector lock");
        if st.is_selected(trace_id) {
            drop(st);
            self.batch.on_end(span);
            return;
        }
        if failed || slow {
            let flushed = st.select(trace_id, &self.scope);
            drop(st);
            for s in flushed {
                self.batch.on_end(s);
            }
            self.batch.on_end(span);
            return;
        }
        let leftovers = st.ring.push(span, &self.scope);
        drop(st);
        // Freed outside the lock: the span once packed, or a boxed span evicted.
        drop(leftovers);
    }
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Empty,
    Packed,
    Boxed,
}

/// One waiting span: packed into `bytes`, or boxed when packing does not cover it (events,
/// links, array attributes, more than [`SLOT_BYTES`]).
#[derive(Debug)]
struct Slot {
    state: SlotState,
    context: SpanContext,
    parent_span_id: SpanId,
    parent_span_is_remote: bool,
    kind: SpanKind,
    start_time: SystemTime,
    end_time: SystemTime,
    /// `Status::Ok` rather than `Unset` (spans with errors are never packed).
    ok: bool,
    len: u16,
    /// The name, then per attribute: key (an index into [`SPAN_ATTRIBUTES`], or
    /// [`LITERAL_KEY`] and the key), type tag, value.
    bytes: [u8; SLOT_BYTES],
    boxed: Option<Box<SpanData>>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            state: SlotState::Empty,
            context: SpanContext::NONE,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            kind: SpanKind::Internal,
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            ok: false,
            len: 0,
            bytes: [0; SLOT_BYTES],
            boxed: None,
        }
    }

    fn trace_id(&self) -> TraceId {
        match self.state {
            SlotState::Empty => TraceId::INVALID,
            SlotState::Packed => self.context.trace_id(),
            SlotState::Boxed => self
                .boxed
                .as_ref()
                .map_or(TraceId::INVALID, |s| s.span_context.trace_id()),
        }
    }

    /// Put `span` here; returns what must be freed (the span once packed, an evicted box).
    fn fill(&mut self, span: SpanData, scope: &InstrumentationScope) -> Leftovers {
        let evicted = self.boxed.take();
        match encode(&span, scope, &mut self.bytes) {
            Some(len) => {
                self.state = SlotState::Packed;
                self.context = span.span_context.clone();
                self.parent_span_id = span.parent_span_id;
                self.parent_span_is_remote = span.parent_span_is_remote;
                self.kind = span.span_kind.clone();
                self.start_time = span.start_time;
                self.end_time = span.end_time;
                self.ok = matches!(span.status, Status::Ok);
                self.len = len as u16;
                Leftovers(Some(span), evicted)
            }
            None => {
                self.state = SlotState::Boxed;
                self.boxed = Some(Box::new(span));
                Leftovers(None, evicted)
            }
        }
    }

    /// The waiting span, leaving the slot empty.
    fn take(&mut self, scope: &InstrumentationScope) -> Option<SpanData> {
        let state = std::mem::replace(&mut self.state, SlotState::Empty);
        match state {
            SlotState::Empty => None,
            SlotState::Boxed => self.boxed.take().map(|b| *b),
            SlotState::Packed => self.unpack(scope),
        }
    }

    fn unpack(&self, scope: &InstrumentationScope) -> Option<SpanData> {
        let mut r = Reader(&self.bytes[..self.len as usize]);
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
            span_context: self.context.clone(),
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_span_is_remote,
            span_kind: self.kind.clone(),
            name: name.into(),
            start_time: self.start_time,
            end_time: self.end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if self.ok { Status::Ok } else { Status::Unset },
            instrumentation_scope: scope.clone(),
        })
    }
}

/// Memory to free after the lock is released.
#[allow(dead_code)] // Held only to be dropped.
struct Leftovers(Option<SpanData>, Option<Box<SpanData>>);

/// A fixed ring of slots, allocated as it first fills; the oldest span is overwritten.
#[derive(Debug)]
struct Ring {
    slots: Vec<Slot>,
    capacity: usize,
    next: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            slots: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    fn push(&mut self, span: SpanData, scope: &InstrumentationScope) -> Leftovers {
        if self.slots.len() < self.capacity {
            self.slots.push(Slot::empty());
        }
        let at = self.next;
        self.next = (self.next + 1) % self.capacity;
        self.slots[at].fill(span, scope)
    }

    /// Every waiting span of `trace_id`, oldest first.
    fn take_trace(&mut self, trace_id: TraceId, scope: &InstrumentationScope) -> Vec<SpanData> {
        let n = self.slots.len();
        // Oldest first: from the slot about to be overwritten, around the ring.
        let start = if n < self.capacity { 0 } else { self.next };
        let mut taken = Vec::new();
        for i in (0..n).map(|i| (start + i) % n) {
            let slot = &mut self.slots[i];
            if slot.trace_id() == trace_id {
                taken.extend(slot.take(scope));
            }
        }
        taken
    }
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

/// Writes into a slot's bytes; `None` once they are full.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.at.checked_add(bytes.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(bytes);
        self.at = end;
        Some(())
    }
    fn put_str(&mut self, s: &str) -> Option<()> {
        self.put(&(u32::try_from(s.len()).ok()?).to_le_bytes())?;
        self.put(s.as_bytes())
    }
}

/// Pack the name and attributes of `span` into `out`: the length used, or `None` when packing
/// does not cover the span.
fn encode(span: &SpanData, scope: &InstrumentationScope, out: &mut [u8]) -> Option<usize> {
    let packable = span.events.is_empty()
        && span.links.is_empty()
        && span.dropped_attributes_count == 0
        && !matches!(span.status, Status::Error { .. })
        && span.instrumentation_scope.name() == scope.name()
        && span.instrumentation_scope.version() == scope.version();
    if !packable {
        return None;
    }
    let mut w = Writer { out, at: 0 };
    w.put_str(&span.name)?;
    for kv in &span.attributes {
        match known_key(kv.key.as_str()) {
            Some(i) => w.put(&[i])?,
            None => {
                w.put(&[LITERAL_KEY])?;
                w.put_str(kv.key.as_str())?;
            }
        }
        match &kv.value {
            Value::Bool(b) => w.put(&[TAG_BOOL, *b as u8])?,
            Value::I64(i) => {
                w.put(&[TAG_I64])?;
                w.put(&i.to_le_bytes())?;
            }
            Value::F64(f) => {
                w.put(&[TAG_F64])?;
                w.put(&f.to_le_bytes())?;
            }
            Value::String(s) => {
                w.put(&[TAG_STRING])?;
                w.put_str(s.as_str())?;
            }
            _ => return None,
        }
    }
    u16::try_from(w.at).ok().map(usize::from)
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("busgate")
            .with_version("1")
            .build()
    }

    fn span(trace: u128, attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
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
        let original = span(
            7,
            vec![
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
            ],
        );
        let mut slot = Slot::empty();
        let _ = slot.fill(original.clone(), &scope());
        assert_eq!(slot.state, SlotState::Packed);
        assert_eq!(slot.trace_id(), TraceId::from(7u128));
        assert_eq!(slot.take(&scope()).unwrap(), original);
        assert_eq!(slot.state, SlotState::Empty);
        assert!(slot.take(&scope()).is_none());
    }

    #[test]
    fn spans_packing_does_not_cover_wait_boxed() {
        let mut with_event = span(1, vec![]);
        with_event
            .events
            .events
            .push(opentelemetry::trace::Event::new(
                "exception",
                SystemTime::UNIX_EPOCH,
                vec![],
                0,
            ));
        let with_array = span(
            1,
            vec![KeyValue::new("list", Value::Array(vec![1i64, 2].into()))],
        );
        let mut failed = span(1, vec![]);
        failed.status = Status::error("boom");
        let too_big = span(1, vec![KeyValue::new("url.path", "x".repeat(SLOT_BYTES))]);
        for s in [with_event, with_array, failed, too_big] {
            let mut slot = Slot::empty();
            let _ = slot.fill(s.clone(), &scope());
            assert_eq!(slot.state, SlotState::Boxed);
            assert_eq!(slot.take(&scope()).unwrap(), s);
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_spans_and_gives_a_trace_back_oldest_first() {
        let mut ring = Ring::new(4);
        for (i, trace) in [1u128, 2, 1, 3, 1, 2].into_iter().enumerate() {
            let mut s = span(trace, vec![KeyValue::new("server.port", i as i64)]);
            s.span_context = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(i as u64 + 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            );
            let _ = ring.push(s, &scope());
        }
        // Capacity 4: spans 0 and 1 were overwritten; trace 1 keeps spans 2 and 4.
        let ports = |spans: Vec<SpanData>| -> Vec<String> {
            spans
                .iter()
                .map(|s| s.attributes[0].value.to_string())
                .collect()
        };
        assert_eq!(
            ports(ring.take_trace(TraceId::from(1u128), &scope())),
            ["2", "4"]
        );
        assert!(ring.take_trace(TraceId::from(1u128), &scope()).is_empty());
        assert_eq!(
            ports(ring.take_trace(TraceId::from(2u128), &scope())),
            ["5"]
        );
        assert_eq!(
            ports(ring.take_trace(TraceId::from(3u128), &scope())),
            ["3"]
        );
    }
}
