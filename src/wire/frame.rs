//! Frame headers (reference §1.4): the Microbus metadata carried in the HTTP header block.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const MSG_ID: &str = "microbus-msg-id";
pub const FROM_HOST: &str = "microbus-from-host";
pub const FROM_ID: &str = "microbus-from-id";
pub const FROM_VERSION: &str = "microbus-from-version";
pub const OP_CODE: &str = "microbus-op-code";
pub const TIME_BUDGET: &str = "microbus-time-budget";
pub const CALL_DEPTH: &str = "microbus-call-depth";
pub const QUEUE: &str = "microbus-queue";
pub const FRAGMENT: &str = "microbus-fragment";
pub const LOCALITY: &str = "microbus-locality";
pub const CLOCK_SHIFT: &str = "microbus-clock-shift";
pub const BAGGAGE_PREFIX: &str = "microbus-baggage-";
/// Every internal header starts with this (case-insensitive).
pub const MICROBUS_PREFIX: &str = "microbus-";

/// The kind of a bus message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Req,
    Ack,
    Res,
    Err,
}

impl OpCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OpCode::Req => "Req",
            OpCode::Ack => "Ack",
            OpCode::Res => "Res",
            OpCode::Err => "Err",
        }
    }

    pub fn parse(s: &str) -> Option<OpCode> {
        match s {
            "Req" => Some(OpCode::Req),
            "Ack" => Some(OpCode::Ack),
            "Res" => Some(OpCode::Res),
            "Err" => Some(OpCode::Err),
            _ => None,
        }
    }
}

/// `Microbus-Fragment: i/N`, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub index: usize,
    pub total: usize,
}

impl Fragment {
    pub fn parse(s: &str) -> Option<Fragment> {
        let (i, n) = s.trim().split_once('/')?;
        let index: usize = i.trim().parse().ok()?;
        let total: usize = n.trim().parse().ok()?;
        (index >= 1 && index <= total).then_some(Fragment { index, total })
    }

    pub fn render(self) -> String {
        format!("{}/{}", self.index, self.total)
    }
}

/// A header value as text, as `HeaderValue::to_str` reads it: visible ASCII and tabs only.
/// Those bytes are UTF-8 already; checking again cost ~80 instructions a value, eight values a
/// call at the inbox.
pub fn header_text(value: &[u8]) -> Option<&str> {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    // SAFETY: every byte is ASCII (checked just above), and ASCII is valid UTF-8; this is how
    // `HeaderValue::to_str` converts too.
    Some(unsafe { std::str::from_utf8_unchecked(value) })
}

/// The frame headers as parsed names, made at compile time: a lookup or insert by `&str`
/// parses (and looks up) the name first, every time.
pub mod names {
    use http::header::HeaderName;
    pub const MSG_ID: HeaderName = HeaderName::from_static(super::MSG_ID);
    pub const FROM_HOST: HeaderName = HeaderName::from_static(super::FROM_HOST);
    pub const FROM_ID: HeaderName = HeaderName::from_static(super::FROM_ID);
    pub const FROM_VERSION: HeaderName = HeaderName::from_static(super::FROM_VERSION);
    pub const OP_CODE: HeaderName = HeaderName::from_static(super::OP_CODE);
    pub const TIME_BUDGET: HeaderName = HeaderName::from_static(super::TIME_BUDGET);
    pub const CALL_DEPTH: HeaderName = HeaderName::from_static(super::CALL_DEPTH);
    pub const QUEUE: HeaderName = HeaderName::from_static(super::QUEUE);
    pub const FRAGMENT: HeaderName = HeaderName::from_static(super::FRAGMENT);
    pub const LOCALITY: HeaderName = HeaderName::from_static(super::LOCALITY);
}

/// Typed read access to the frame headers of a message.
#[derive(Clone, Copy)]
pub struct Frame<'a>(pub &'a HeaderMap);

impl<'a> Frame<'a> {
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
    fn known(&self, name: &HeaderName) -> Option<&'a str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn msg_id(&self) -> Option<&'a str> {
        self.known(&names::MSG_ID).filter(|s| !s.is_empty())
    }
    pub fn from_host(&self) -> Option<&'a str> {
        self.known(&names::FROM_HOST).filter(|s| !s.is_empty())
    }
    pub fn from_id(&self) -> Option<&'a str> {
        self.known(&names::FROM_ID).filter(|s| !s.is_empty())
    }
    pub fn from_version(&self) -> u32 {
        self.known(&names::FROM_VERSION)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    pub fn op_code(&self) -> Option<OpCode> {
        self.known(&names::OP_CODE).and_then(OpCode::parse)
    }
    pub fn queue(&self) -> Option<&'a str> {
        self.known(&names::QUEUE)
    }
    pub fn locality(&self) -> Option<&'a str> {
        self.known(&names::LOCALITY).filter(|s| !s.is_empty())
    }
    /// Milliseconds left, when the header is present and positive.
    pub fn time_budget_ms(&self) -> Option<u64> {
        self.known(&names::TIME_BUDGET)
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| ms as u64)
    }
    pub fn call_depth(&self) -> u32 {
        self.known(&names::CALL_DEPTH)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
    pub fn fragment(&self) -> Option<Fragment> {
        self.known(&names::FRAGMENT).and_then(Fragment::parse)
    }
}

/// Set a frame header; the value must be header-safe (callers pass ids, numbers and hostnames).
pub fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// `name` starts with `prefix`, in any case (without lowercasing `name` into a new string:
/// these run for every header of every request).
fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether a header is internal to the bus and must never cross the ingress.
pub fn is_internal_header(name: &str) -> bool {
    starts_with_ignore_case(name, MICROBUS_PREFIX)
        || name.eq_ignore_ascii_case("traceparent")
        || name.eq_ignore_ascii_case("tracestate")
}

/// Whether a header of an inbound request is propagated to outgoing calls (reference §1.4).
pub fn is_propagated_header(name: &str) -> bool {
    starts_with_ignore_case(name, "x-forwarded-")
        || starts_with_ignore_case(name, BAGGAGE_PREFIX)
        || name.eq_ignore_ascii_case("accept-language")
        || name.eq_ignore_ascii_case(CLOCK_SHIFT)
}

/// Remove every header whose name `matches`. A `remove` hashes its name even when the header
/// is absent, and these run several times per message: so the names are matched by a scan,
/// only those present are removed, and when most of the map goes the rest moves to a new one.
pub fn remove_headers(headers: &mut HeaderMap, matches: impl Fn(&HeaderName) -> bool) {
    let names = headers.keys_len();
    // One scan, remembering the first few matches on the stack.
    let mut found: [Option<HeaderName>; 4] = Default::default();
    let mut matched = 0;
    for name in headers.keys().filter(|name| matches(name)) {
        if let Some(slot) = found.get_mut(matched) {
            *slot = Some(name.clone());
        }
        matched += 1;
    }
    if matched == 0 {
        return;
    }
    if matched <= found.len() && matched * 2 <= names {
        for name in found.into_iter().flatten() {
            headers.remove(name);
        }
        return;
    }
    let old = std::mem::replace(headers, HeaderMap::with_capacity(names - matched));
    // `None` is another value of the name before it (`HeaderMap`'s iteration order).
    let mut keep = false;
    headers.extend(old.into_iter().filter(|(name, _)| {
        if let Some(name) = name {
            keep = !matches(name);
        }
        keep
    }));
}

/// The frame's header names (and the trace context's, and the forwarding headers of every
/// ingress request), with the canonical spelling busgate and Go write: decoding looks a
/// received name up here (in any case) instead of lowercasing it into a new allocation.
static KNOWN: [(HeaderName, &str); 18] = [
    (names::MSG_ID, "Microbus-Msg-Id"),
    (names::FROM_HOST, "Microbus-From-Host"),
    (names::FROM_ID, "Microbus-From-Id"),
    (names::FROM_VERSION, "Microbus-From-Version"),
    (names::OP_CODE, "Microbus-Op-Code"),
    (names::TIME_BUDGET, "Microbus-Time-Budget"),
    (names::CALL_DEPTH, "Microbus-Call-Depth"),
    (names::QUEUE, "Microbus-Queue"),
    (names::FRAGMENT, "Microbus-Fragment"),
    (names::LOCALITY, "Microbus-Locality"),
    (HeaderName::from_static(CLOCK_SHIFT), "Microbus-Clock-Shift"),
    (HeaderName::from_static("traceparent"), "Traceparent"),
    (HeaderName::from_static("tracestate"), "Tracestate"),
    (
        HeaderName::from_static("x-forwarded-host"),
        "X-Forwarded-Host",
    ),
    (
        HeaderName::from_static("x-forwarded-for"),
        "X-Forwarded-For",
    ),
    (
        HeaderName::from_static("x-forwarded-proto"),
        "X-Forwarded-Proto",
    ),
    (
        HeaderName::from_static("x-forwarded-prefix"),
        "X-Forwarded-Prefix",
    ),
    (
        HeaderName::from_static("x-forwarded-path"),
        "X-Forwarded-Path",
    ),
];

/// The one known name `name` (any case) could be, still to be confirmed: every known name
/// starts with m, t or x, so most other headers are turned away by their first byte; the
/// rest find their one candidate by the name's length, last byte and tenth byte (after
/// `microbus-`) through a table made at compile time. A scan of the known names' keys cost
/// ~170 instructions per header, 14 headers per served request.
fn known_candidate(name: &str) -> Option<&'static (HeaderName, &'static str)> {
    let first = name.as_bytes().first()?.to_ascii_lowercase();
    if !matches!(first, b'm' | b't' | b'x') {
        return None;
    }
    KNOWN.get(usize::from(KNOWN_BY_SLOT[slot(name.as_bytes())]))
}

/// The shared name of a frame header received as `name` (any case); `None` for other names.
/// The candidate is confirmed against the spellings busgate and Go write (canonical case) and
/// HTTP/2 would (lower case) byte for byte, any other case last (a case-insensitive comparison
/// goes byte by byte).
pub fn known_header_name(name: &str) -> Option<&'static HeaderName> {
    let (known, canonical) = known_candidate(name)?;
    (name == *canonical || name == known.as_str() || known.as_str().eq_ignore_ascii_case(name))
        .then_some(known)
}

/// The spelling busgate and Go write for a known name given in lower case (as `HeaderName`
/// keeps names and the frame's constants are); `None` for other names. The encoder writes it
/// as it is instead of upper-casing the name byte by byte (~25 names a call).
pub fn canonical_of_lowercase(name: &str) -> Option<&'static str> {
    let (known, canonical) = known_candidate(name)?;
    (known.as_str() == name).then_some(*canonical)
}

/// A name's place in [`KNOWN_BY_SLOT`]: its length, last byte and tenth byte, in lower case,
/// mixed so that no two known names share one (checked when the table is made).
const fn slot(name: &[u8]) -> usize {
    let Some(&last) = name.last() else {
        return 0;
    };
    let tenth = if name.len() > 9 { name[9] } else { 0 };
    let mixed = name.len().wrapping_mul(2)
        + 3 * last.to_ascii_lowercase() as usize
        + tenth.to_ascii_lowercase() as usize;
    mixed % KNOWN_SLOTS
}

const KNOWN_SLOTS: usize = 64;
/// Not a known name.
const NO_NAME: u8 = u8::MAX;

/// Each slot's index in [`KNOWN`], made at compile time: two known names in one slot stop the
/// build.
static KNOWN_BY_SLOT: [u8; KNOWN_SLOTS] = {
    let mut table = [NO_NAME; KNOWN_SLOTS];
    let mut i = 0;
    while i < KNOWN.len() {
        let at = slot(KNOWN[i].1.as_bytes());
        assert!(table[at] == NO_NAME, "two known header names share a slot");
        table[at] = i as u8;
        i += 1;
    }
    table
};

/// Go's canonical header case: upper-case the first letter and every letter after `-`.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_found_in_their_slots_and_spelled_as_go_writes_them() {
        for (known, canonical) in KNOWN.iter() {
            assert_eq!(*canonical, canonical_header_name(known.as_str()));
            assert_eq!(slot(known.as_str().as_bytes()), slot(canonical.as_bytes()));
        }
        assert!(KNOWN_BY_SLOT.iter().filter(|&&i| i != NO_NAME).count() == KNOWN.len());
    }

    #[test]
    fn known_names_start_with_the_letters_the_lookup_lets_through() {
        for (known, _) in KNOWN.iter() {
            assert!(
                matches!(known.as_str().as_bytes()[0], b'm' | b't' | b'x'),
                "{known}: known_header_name would never find it"
            );
        }
        for not in [
            "",
            "Content-Type",
            "Microbus-Baggage-Role",
            "microbus-msg-ie",
            "Microbus-Msg-I",
            "x",
            "m",
            "X-Forwarded-Port",
            "traceparenu",
        ] {
            assert!(known_header_name(not).is_none(), "{not}");
        }
        for (known, _) in KNOWN.iter() {
            for spelling in [
                known.as_str().to_owned(),
                canonical_header_name(known.as_str()),
                known.as_str().to_ascii_uppercase(),
            ] {
                assert_eq!(known_header_name(&spelling), Some(known), "{spelling}");
            }
        }
    }

    #[test]
    fn internal_and_propagated_headers_in_any_case() {
        for internal in [
            "Microbus-Msg-Id",
            "MICROBUS-X",
            "microbus-",
            "TraceParent",
            "tracestate",
        ] {
            assert!(is_internal_header(internal), "{internal}");
        }
        for not in [
            "Microbus",
            "X-Microbus-Msg-Id",
            "traceparents",
            "",
            "Content-Type",
        ] {
            assert!(!is_internal_header(not), "{not}");
        }
        for propagated in [
            "X-Forwarded-For",
            "Microbus-Baggage-Role",
            "Accept-Language",
            "MICROBUS-CLOCK-SHIFT",
        ] {
            assert!(is_propagated_header(propagated), "{propagated}");
        }
        for not in [
            "X-Forwarded",
            "Microbus-Baggage",
            "Accept",
            "Microbus-Msg-Id",
        ] {
            assert!(!is_propagated_header(not), "{not}");
        }
    }

    #[test]
    fn known_names_in_any_case() {
        assert_eq!(
            known_header_name("Microbus-Msg-Id").map(|n| n.as_str()),
            Some(MSG_ID)
        );
        assert_eq!(
            known_header_name("TRACEPARENT").map(|n| n.as_str()),
            Some("traceparent")
        );
        assert!(known_header_name("Content-Type").is_none());
        assert!(known_header_name("Microbus-Msg-Idx").is_none());
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_header_name("microbus-msg-id"), "Microbus-Msg-Id");
        assert_eq!(canonical_header_name("content-type"), "Content-Type");
        assert_eq!(canonical_header_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header_name("traceparent"), "Traceparent");
    }

    #[test]
    fn removes_exactly_the_matching_headers_and_keeps_the_order_of_values() {
        let map = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        // A map's order across names is not kept by any removal; each name's values are.
        let pairs = |h: &HeaderMap| -> std::collections::BTreeMap<String, Vec<String>> {
            h.keys()
                .map(|k| {
                    let values = h.get_all(k).iter();
                    let values = values.map(|v| v.to_str().unwrap().to_owned());
                    (k.to_string(), values.collect())
                })
                .collect()
        };
        let removing = |all: &[(&str, &str)], gone: &[&str]| {
            let mut h = map(all);
            remove_headers(&mut h, |n| gone.contains(&n.as_str()));
            let kept: Vec<(&str, &str)> = all
                .iter()
                .copied()
                .filter(|(k, _)| !gone.contains(k))
                .collect();
            assert_eq!(pairs(&h), pairs(&map(&kept)), "removing {gone:?}");
        };
        let all = [
            ("a", "1"),
            ("microbus-x", "2"),
            ("b", "3"),
            ("a", "4"),
            ("microbus-y", "5"),
            ("microbus-x", "6"),
            ("c", "7"),
        ];
        // Every subset of the names removed, which takes both paths (few removed, most removed).
        let names = ["a", "b", "c", "microbus-x", "microbus-y"];
        for mask in 0..1u32 << names.len() {
            let gone: Vec<&str> = (0..names.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| names[i])
                .collect();
            removing(&all, &gone);
        }
        // More matches than the stack remembers, though fewer than half the names.
        let many: Vec<(String, String)> =
            (0..12).map(|i| (format!("h{i}"), i.to_string())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        removing(&many, &["h1", "h3", "h5", "h7", "h9"]);
    }

    #[test]
    fn fragments() {
        assert_eq!(
            Fragment::parse("2/5"),
            Some(Fragment { index: 2, total: 5 })
        );
        for bad in ["0/5", "6/5", "x/5", "1", "", "1/0", "-1/2"] {
            assert_eq!(Fragment::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn internal_and_propagated() {
        assert!(is_internal_header("MICROBUS-Msg-Id"));
        assert!(is_internal_header("TraceParent"));
        assert!(!is_internal_header("X-Forwarded-For"));
        assert!(is_propagated_header("X-Forwarded-Path"));
        assert!(is_propagated_header("Microbus-Baggage-User"));
        assert!(is_propagated_header("Accept-Language"));
        assert!(!is_propagated_header("Authorization"));
    }
}
