//! The packed span: almost every recorded span is evicted unseen in PROD, and the others are
//! encoded straight from bytes, so a span is recorded packed from the start. Its name and
//! attributes are written as bytes into one block as the request path hands them over (known
//! attribute keys as one-byte indexes, no string allocated per attribute, the instrumentation
//! scope shared), the tail's ring holds that block as is, and a span is unpacked into the
//! SDK's [`SpanData`] only when it has to be. It keeps the size of its attributes as OTLP
//! fields as they are recorded, for the encoder.

use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use std::sync::OnceLock;

use super::protobuf::{field_len, tag_len, varint_len};
use crate::telemetry::names::{SpanKey, SPAN_ATTRIBUTES};

/// Bytes a packed span holds for its name and attributes: the ingress span, the largest, needs
/// ~250. Attributes past the end are kept aside, owned.
pub const PACKED_BYTES: usize = 448;

/// A span recorded as bytes: fixed fields, then the name and per attribute a key (an index
/// into [`SPAN_ATTRIBUTES`], or `LITERAL_KEY` and the key), a type tag and the value.
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

/// The body of an `AnyValue` message holding a packed value.
#[inline]
pub(super) fn packed_value_len(v: PackedValue<'_>) -> usize {
    match v {
        PackedValue::Bool(_) => tag_len(2) + 1,
        PackedValue::I64(i) => tag_len(3) + varint_len(i as u64),
        PackedValue::F64(_) => tag_len(4) + 8,
        PackedValue::Str(s) => field_len(1, s.len()),
    }
}

/// The body of a `KeyValue` message holding a packed attribute.
#[inline]
pub(super) fn packed_key_value_len(key_len: usize, value: PackedValue<'_>) -> usize {
    let key = if key_len == 0 {
        0
    } else {
        field_len(1, key_len)
    };
    key + field_len(2, packed_value_len(value))
}

/// The size of one packed attribute as a span's `attributes` field (9). Runs for every
/// recorded attribute, exported or not (the packed span keeps the sum).
#[inline]
pub(super) fn attribute_field_len(key_len: usize, value: PackedValue<'_>) -> usize {
    field_len(9, packed_key_value_len(key_len, value))
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
pub(super) mod tests {
    use super::*;
    use crate::telemetry::names::{
        A_ACK_LATENCY_MS, A_MESSAGING_SYSTEM, A_SERVER_PORT, A_URL_PATH,
    };
    use opentelemetry::trace::TraceId;
    use opentelemetry::trace::{TraceFlags, TraceState};
    use std::time::Duration;

    pub(crate) fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("busgate")
            .with_version("1")
            .build()
    }

    pub(crate) fn context(trace: u128, span: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    pub(crate) fn packed(trace: u128, span: u64, port: i64) -> Box<PackedSpan> {
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
