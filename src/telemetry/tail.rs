//! PROD's tail selection: ended spans wait in a bounded buffer until their trace proves worth
//! keeping (an error, a slow span, a `:888/trace` selection) or they are evicted.
//!
//! Almost every recorded span is evicted unseen, so in PROD a span is recorded packed from the
//! start ([`PackedSpan`]): its name and attributes are written as bytes into one block as the
//! request path hands them over (known attribute keys as one-byte indexes, no string
//! allocated per attribute, the instrumentation scope shared), the ring holds that block as is,
//! and a span is unpacked into the SDK's [`SpanData`] only when its trace is selected.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use std::sync::{Mutex, OnceLock};

use super::export::Export;
use super::names::{SpanKey, SPAN_ATTRIBUTES};
use super::otlp::attribute_field_len;

/// Traces PROD remembers as selected, and for how long after the last selection.
pub const SELECTED_TRACES_MAX: usize = 8192;
pub const SELECTION_TTL: Duration = Duration::from_secs(20);

/// Bytes a packed span holds for its name and attributes: the ingress span, the largest, needs
/// ~250. Attributes past the end are kept aside, owned.
pub const PACKED_BYTES: usize = 448;

/// Exports the spans of selected traces through `export`; holds the others.
#[derive(Debug)]
pub struct Selector {
    export: Export,
    /// The scope of every packed span (they do not repeat it).
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
        self.ring.take_trace(trace_id)
    }
}

impl Selector {
    pub fn new(
        export: Export,
        scope: InstrumentationScope,
        slow: Duration,
        capacity: usize,
    ) -> Selector {
        Selector {
            export,
            scope,
            slow,
            state: Mutex::new(SelectorState {
                ring: Ring::new(capacity),
                selected: HashMap::new(),
            }),
        }
    }

    /// Where selected spans go.
    pub fn exporter(&self) -> &Export {
        &self.export
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SelectorState> {
        // Nothing in the state is left half-updated by a panic: keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Export `trace_id`'s buffered spans and its future ones.
    pub fn select(&self, trace_id: TraceId) {
        let flushed = self.lock().select(trace_id);
        self.export(flushed);
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.lock().is_selected(trace_id)
    }

    fn export(&self, spans: impl IntoIterator<Item = Waiting>) {
        for span in spans {
            self.export.on_end(span, &self.scope);
        }
    }

    /// An ended span: exported when its trace is selected, or when it failed or was slow
    /// (which selects its trace); held otherwise.
    pub fn on_end(&self, span: Waiting) {
        let trace_id = span.trace_id();
        let select = span.failed() || span.duration() >= self.slow;
        let mut st = self.lock();
        if st.is_selected(trace_id) {
            drop(st);
            self.export([span]);
        } else if select {
            let flushed = st.select(trace_id);
            drop(st);
            self.export(flushed.into_iter().chain([span]));
        } else {
            let evicted = st.ring.push(span);
            drop(st);
            // Freed outside the lock.
            drop(evicted);
        }
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

    fn failed(&self) -> bool {
        match self {
            // A packed span has no error status: recording one unpacks it.
            Waiting::Packed(_) => false,
            Waiting::Data(d) => matches!(d.status, Status::Error { .. }),
        }
    }

    fn duration(&self) -> Duration {
        let (start, end) = match self {
            Waiting::Packed(p) => (p.start_time, p.end_time),
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

/// A span recorded as bytes: fixed fields, then the name and per attribute a key (an index
/// into [`SPAN_ATTRIBUTES`], or [`LITERAL_KEY`] and the key), a type tag and the value.
#[derive(Debug)]
pub struct PackedSpan {
    pub context: SpanContext,
    parent_span_id: SpanId,
    parent_span_is_remote: bool,
    kind: SpanKind,
    start_time: SystemTime,
    pub end_time: SystemTime,
    /// `Status::Ok` rather than `Unset` (an error unpacks the span).
    ok: bool,
    len: u16,
    /// The name did not fit: it is `overflow[0]`.
    name_aside: bool,
    encoded_attributes: u32,
    /// Attributes that did not fit in `bytes`, and values packing does not cover (arrays).
    overflow: Vec<KeyValue>,
    bytes: [u8; PACKED_BYTES],
}

impl PackedSpan {
    pub fn new(
        parent: &SpanContext,
        kind: SpanKind,
        name: &str,
        start_time: SystemTime,
    ) -> Box<PackedSpan> {
        let mut p = Box::new(PackedSpan {
            context: SpanContext::NONE,
            parent_span_id: if parent.is_valid() {
                parent.span_id()
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: parent.is_remote(),
            kind,
            start_time,
            end_time: start_time,
            ok: false,
            len: 0,
            name_aside: false,
            encoded_attributes: 0,
            overflow: Vec::new(),
            bytes: [0; PACKED_BYTES],
        });
        if p.writer().bytes(name.as_bytes()).is_none() {
            // A name longer than the block: keep it aside (unpacked first).
            p.len = 0;
            p.name_aside = true;
            p.overflow.push(KeyValue::new(NAME_KEY, name.to_owned()));
        }
        p
    }

    fn writer(&mut self) -> Writer<'_> {
        Writer {
            out: &mut self.bytes,
            at: &mut self.len,
        }
    }

    /// Append one attribute, or keep it aside (owned) when the block is full.
    fn append(
        &mut self,
        key_index: u8,
        key_name: &str,
        value: PackedValue<'_>,
        owned: impl FnOnce() -> KeyValue,
    ) {
        let mark = self.len;
        let mut w = self.writer();
        let packed = match key_index {
            SpanKey::CUSTOM => w
                .put(&[LITERAL_KEY])
                .and_then(|_| w.bytes(key_name.as_bytes())),
            i => w.put(&[i]),
        }
        .and_then(|_| match value {
            PackedValue::Bool(b) => w.put(&[TAG_BOOL, b as u8]),
            PackedValue::I64(i) => w.put(&[TAG_I64]).and_then(|_| w.put(&i.to_le_bytes())),
            PackedValue::F64(f) => w.put(&[TAG_F64]).and_then(|_| w.put(&f.to_le_bytes())),
            PackedValue::Str(s) => w.put(&[TAG_STRING]).and_then(|_| w.bytes(s)),
        });
        match packed {
            Some(()) => {
                self.encoded_attributes += attribute_field_len(key_name.len(), value) as u32;
            }
            None => {
                self.len = mark;
                self.overflow.push(owned());
            }
        }
    }

    pub fn push_str(&mut self, key: SpanKey, value: &str) {
        self.append(
            key.index,
            key.name,
            PackedValue::Str(value.as_bytes()),
            || KeyValue::new(key, value.to_owned()),
        );
    }

    pub fn push_i64(&mut self, key: SpanKey, value: i64) {
        self.append(key.index, key.name, PackedValue::I64(value), || {
            KeyValue::new(key, value)
        });
    }

    pub fn push_f64(&mut self, key: SpanKey, value: f64) {
        self.append(key.index, key.name, PackedValue::F64(value), || {
            KeyValue::new(key, value)
        });
    }

    /// Any attribute (keys and values of any kind; arrays are kept aside).
    pub fn push(&mut self, kv: KeyValue) {
        let name = kv.key.as_str();
        // A key known by name is stored by index; any other by name (copied).
        let index = known_key(name).unwrap_or(SpanKey::CUSTOM);
        let value = match &kv.value {
            Value::Bool(b) => PackedValue::Bool(*b),
            Value::I64(i) => PackedValue::I64(*i),
            Value::F64(f) => PackedValue::F64(*f),
            Value::String(s) => PackedValue::Str(s.as_str().as_bytes()),
            _ => {
                self.overflow.push(kv);
                return;
            }
        };
        self.append(index, name, value, || kv.clone());
    }

    /// The protobuf size of the packed attributes as OTLP span attributes (field 9), kept as
    /// they are written so that the exporter need not read them twice.
    pub fn encoded_attributes_len(&self) -> usize {
        self.encoded_attributes as usize
    }

    pub fn set_ok(&mut self, ok: bool) {
        self.ok = ok;
    }

    pub fn parent_span_id(&self) -> SpanId {
        self.parent_span_id
    }

    pub fn parent_span_is_remote(&self) -> bool {
        self.parent_span_is_remote
    }

    pub fn kind(&self) -> &SpanKind {
        &self.kind
    }

    pub fn start_time(&self) -> SystemTime {
        self.start_time
    }

    pub fn status(&self) -> Status {
        if self.ok {
            Status::Ok
        } else {
            Status::Unset
        }
    }

    /// The name (UTF-8), and the packed attributes and those kept aside, read in place.
    pub fn read(&self) -> (&[u8], PackedAttributes<'_>, &[KeyValue]) {
        let mut r = Reader(&self.bytes[..self.len as usize]);
        let (name, aside) = match (self.name_aside, self.overflow.split_first()) {
            (true, Some((kv, rest))) => match &kv.value {
                Value::String(s) => (s.as_str().as_bytes(), rest),
                _ => (&b""[..], rest),
            },
            _ => (r.bytes().unwrap_or_default(), &self.overflow[..]),
        };
        (name, PackedAttributes(r), aside)
    }

    /// The span as the SDK exports it.
    pub fn unpack(&self, scope: &InstrumentationScope) -> SpanData {
        let (name, packed, aside) = self.read();
        let mut attributes = Vec::with_capacity(16);
        attributes.extend(packed.map(|a| a.to_key_value()));
        attributes.extend(aside.iter().cloned());
        SpanData {
            span_context: self.context.clone(),
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_span_is_remote,
            span_kind: self.kind.clone(),
            name: owned(name).into(),
            start_time: self.start_time,
            end_time: self.end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.status(),
            instrumentation_scope: scope.clone(),
        }
    }
}

/// A packed attribute, borrowed from the span's bytes. Strings stay bytes (UTF-8 when they
/// were written): the protobuf encoder copies them as they are, without validating them again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedAttribute<'a> {
    pub key: Key<'a>,
    pub value: PackedValue<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Key<'a> {
    Known(&'static str),
    Literal(&'a [u8]),
}

impl Key<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Key::Known(k) => k.as_bytes(),
            Key::Literal(k) => k,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PackedValue<'a> {
    Bool(bool),
    I64(i64),
    F64(f64),
    Str(&'a [u8]),
}

fn owned(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl PackedAttribute<'_> {
    fn to_key_value(self) -> KeyValue {
        let key = match self.key {
            Key::Known(k) => opentelemetry::Key::from_static_str(k),
            Key::Literal(k) => opentelemetry::Key::from(owned(k)),
        };
        let value = match self.value {
            PackedValue::Bool(b) => Value::Bool(b),
            PackedValue::I64(i) => Value::I64(i),
            PackedValue::F64(f) => Value::F64(f),
            PackedValue::Str(s) => Value::from(owned(s)),
        };
        KeyValue::new(key, value)
    }
}

/// The packed attributes of a span, in order.
pub struct PackedAttributes<'a>(Reader<'a>);

impl<'a> Iterator for PackedAttributes<'a> {
    type Item = PackedAttribute<'a>;

    fn next(&mut self) -> Option<PackedAttribute<'a>> {
        self.0.attribute()
    }
}

/// The key under which a name too long for the block is kept aside (first in `overflow`).
const NAME_KEY: &str = "name";

/// A fixed ring of waiting spans, grown as it first fills; the oldest is replaced.
#[derive(Debug)]
struct Ring {
    slots: Vec<Option<Waiting>>,
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

    /// Hold `span`; returns the span it replaces, to be freed by the caller.
    fn push(&mut self, span: Waiting) -> Option<Waiting> {
        let at = self.next;
        self.next = (self.next + 1) % self.capacity;
        if self.slots.len() < self.capacity {
            self.slots.push(Some(span));
            None
        } else {
            self.slots[at].replace(span)
        }
    }

    /// Every waiting span of `trace_id`, oldest first.
    fn take_trace(&mut self, trace_id: TraceId) -> Vec<Waiting> {
        let n = self.slots.len();
        // Oldest first: from the slot about to be replaced, around the ring.
        let start = if n < self.capacity { 0 } else { self.next };
        let mut taken = Vec::new();
        for i in (0..n).map(|i| (start + i) % n) {
            let slot = &mut self.slots[i];
            if slot.as_ref().is_some_and(|w| w.trace_id() == trace_id) {
                taken.extend(slot.take());
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
const LITERAL_KEY: u8 = SpanKey::CUSTOM;

/// The index of `key` in [`SPAN_ATTRIBUTES`]: an open-addressing table over a hash of the
/// length and two bytes, built once (a scan compared ~26 keys per attribute).
fn known_key(key: &str) -> Option<u8> {
    const EMPTY: u8 = u8::MAX;
    const SLOTS: usize = 256;
    static TABLE: OnceLock<[u8; SLOTS]> = OnceLock::new();
    fn hash(k: &[u8]) -> usize {
        let n = k.len();
        if n == 0 {
            return 0;
        }
        (n.wrapping_mul(37)
            ^ (k[n - 1] as usize).wrapping_mul(11)
            ^ (k[n / 2] as usize) << 2
            ^ (k[n * 3 / 4] as usize).wrapping_mul(5))
            % SLOTS
    }
    let table = TABLE.get_or_init(|| {
        let mut t = [EMPTY; SLOTS];
        for (i, k) in SPAN_ATTRIBUTES.iter().enumerate() {
            let mut h = hash(k.as_bytes());
            while t[h] != EMPTY {
                h = (h + 1) % SLOTS;
            }
            t[h] = i as u8;
        }
        t
    });
    let mut h = hash(key.as_bytes());
    loop {
        let i = table[h];
        if i == EMPTY {
            return None;
        }
        let known = SPAN_ATTRIBUTES[i as usize];
        if known.len() == key.len() && known == key {
            return Some(i);
        }
        h = (h + 1) % SLOTS;
    }
}

/// Appends to a packed span's bytes; `None` once they are full (the caller rolls back).
struct Writer<'a> {
    out: &'a mut [u8; PACKED_BYTES],
    at: &'a mut u16,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let at = *self.at as usize;
        let end = at + bytes.len();
        self.out.get_mut(at..end)?.copy_from_slice(bytes);
        *self.at = end as u16;
        Some(())
    }
    fn bytes(&mut self, b: &[u8]) -> Option<()> {
        self.put(&(u16::try_from(b.len()).ok()?).to_le_bytes())?;
        self.put(b)
    }
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
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(len)
    }

    fn attribute(&mut self) -> Option<PackedAttribute<'a>> {
        if self.0.is_empty() {
            return None;
        }
        let key = match self.u8()? {
            LITERAL_KEY => Key::Literal(self.bytes()?),
            i => Key::Known(SPAN_ATTRIBUTES.get(i as usize)?),
        };
        let value = match self.u8()? {
            TAG_BOOL => PackedValue::Bool(self.u8()? != 0),
            TAG_I64 => PackedValue::I64(i64::from_le_bytes(self.word()?)),
            TAG_F64 => PackedValue::F64(f64::from_le_bytes(self.word()?)),
            TAG_STRING => PackedValue::Str(self.bytes()?),
            _ => return None,
        };
        Some(PackedAttribute { key, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::names::{
        A_ACK_LATENCY_MS, A_MESSAGING_SYSTEM, A_SERVER_PORT, A_URL_PATH,
    };
    use opentelemetry::trace::{TraceFlags, TraceState};

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("busgate")
            .with_version("1")
            .build()
    }

    fn context(trace: u128, span: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    fn packed(trace: u128, span: u64, port: i64) -> Box<PackedSpan> {
        let mut p = PackedSpan::new(
            &context(trace, 3),
            SpanKind::Client,
            "GET calculator.example:443/arithmetic",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        );
        p.push_i64(A_SERVER_PORT, port);
        p.context = context(trace, span);
        p.end_time = SystemTime::UNIX_EPOCH + Duration::from_secs(2);
        p
    }

    #[test]
    fn a_packed_span_unpacks_to_what_was_recorded() {
        let mut p = PackedSpan::new(
            &SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(3u64),
                TraceFlags::SAMPLED,
                true,
                TraceState::NONE,
            ),
            SpanKind::Client,
            "GET calculator.example:443/arithmetic",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        );
        p.push_str(A_MESSAGING_SYSTEM, "nats");
        p.push_str(SpanKey::custom("custom.key"), "not a known key");
        p.push(KeyValue::new(
            "messaging.destination.name",
            "microbus.443.x.|.GET.y",
        ));
        p.push_i64(A_SERVER_PORT, 443);
        p.push_f64(A_ACK_LATENCY_MS, 0.125);
        p.push(KeyValue::new("flag", true));
        p.push(KeyValue::new("empty", ""));
        p.push(KeyValue::new("unicode", "ünïcødé ✓"));
        p.push(KeyValue::new("list", Value::Array(vec![1i64, 2].into())));
        p.set_ok(true);
        p.context = context(7, 9);
        p.end_time = SystemTime::UNIX_EPOCH + Duration::from_secs(2);
        let expected = SpanData {
            span_context: context(7, 9),
            parent_span_id: SpanId::from(3u64),
            parent_span_is_remote: true,
            span_kind: SpanKind::Client,
            name: "GET calculator.example:443/arithmetic".into(),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            attributes: vec![
                KeyValue::new(A_MESSAGING_SYSTEM, "nats"),
                KeyValue::new("custom.key", "not a known key"),
                KeyValue::new("messaging.destination.name", "microbus.443.x.|.GET.y"),
                KeyValue::new(A_SERVER_PORT, 443i64),
                KeyValue::new(A_ACK_LATENCY_MS, 0.125),
                KeyValue::new("flag", true),
                KeyValue::new("empty", ""),
                KeyValue::new("unicode", "ünïcødé ✓"),
                // Arrays are kept aside, after the packed attributes.
                KeyValue::new("list", Value::Array(vec![1i64, 2].into())),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: scope(),
        };
        assert_eq!(p.unpack(&scope()), expected);
    }

    #[test]
    fn what_does_not_fit_is_kept_aside() {
        let long = "x".repeat(PACKED_BYTES);
        let mut p = PackedSpan::new(
            &SpanContext::NONE,
            SpanKind::Server,
            &long,
            SystemTime::UNIX_EPOCH,
        );
        p.push_str(A_URL_PATH, &"p".repeat(PACKED_BYTES - 20));
        p.push_i64(A_SERVER_PORT, 443);
        p.push_str(A_MESSAGING_SYSTEM, &"n".repeat(100));
        let data = p.unpack(&scope());
        assert_eq!(data.name, long);
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        let keys: Vec<&str> = data.attributes.iter().map(|kv| kv.key.as_str()).collect();
        // The path filled the block; the port still fit; the rest was kept aside.
        assert_eq!(
            keys,
            [A_URL_PATH.name, A_SERVER_PORT.name, A_MESSAGING_SYSTEM.name]
        );
        assert_eq!(data.attributes[0].value.as_str().len(), PACKED_BYTES - 20);
        assert_eq!(data.attributes[2].value.as_str(), "n".repeat(100));

        // An attribute kept aside is never taken for the name, whatever its key.
        let mut p = PackedSpan::new(
            &SpanContext::NONE,
            SpanKind::Server,
            ":443/x",
            SystemTime::UNIX_EPOCH,
        );
        p.push_str(SpanKey::custom("name"), &"v".repeat(PACKED_BYTES));
        let data = p.unpack(&scope());
        assert_eq!(data.name, ":443/x");
        assert_eq!(data.attributes[0].key.as_str(), "name");
    }

    #[test]
    fn the_ring_keeps_the_newest_spans_and_gives_a_trace_back_oldest_first() {
        let mut ring = Ring::new(4);
        for (i, trace) in [1u128, 2, 1, 3, 1, 2].into_iter().enumerate() {
            let evicted = ring.push(Waiting::Packed(packed(trace, i as u64 + 1, i as i64)));
            assert_eq!(evicted.is_some(), i >= 4);
        }
        // Capacity 4: spans 0 and 1 were replaced; trace 1 keeps spans 2 and 4.
        let ports = |spans: Vec<Waiting>| -> Vec<String> {
            spans
                .into_iter()
                .map(|s| s.into_data(&scope()).attributes[0].value.to_string())
                .collect()
        };
        assert_eq!(ports(ring.take_trace(TraceId::from(1u128))), ["2", "4"]);
        assert!(ring.take_trace(TraceId::from(1u128)).is_empty());
        assert_eq!(ports(ring.take_trace(TraceId::from(2u128))), ["5"]);
        assert_eq!(ports(ring.take_trace(TraceId::from(3u128))), ["3"]);
    }

    #[test]
    fn every_known_key_is_found_and_no_other() {
        for (i, k) in SPAN_ATTRIBUTES.iter().enumerate() {
            assert_eq!(known_key(k), Some(i as u8), "{k}");
            let copied = String::from(*k);
            assert_eq!(known_key(&copied), Some(i as u8), "{k}");
        }
        for other in ["", "x", "not.a.known.key", "server.por", "server.portx"] {
            assert_eq!(known_key(other), None, "{other}");
        }
    }
}
