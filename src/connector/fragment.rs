//! Fragmentation of large bodies (reference §1.9): split on send, reassemble on receipt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH};
use http::{Request, Response};

use crate::wire::frame::{self, Fragment};

/// A reassembly with no new fragment for this long is dropped: one network hop (250 ms), as
/// Go Microbus does, so that both sides give up on a half-sent body at the same time.
pub const DEFRAG_IDLE_TIMEOUT: Duration = super::defaults::NETWORK_HOP;

/// How often stale reassemblies are swept.
pub const DEFRAG_SWEEP_INTERVAL: Duration = Duration::from_millis(125);

/// Most fragments one message may announce; a hostile `1/4000000000` must not allocate.
pub const MAX_FRAGMENTS: usize = 4096;

/// Split `body` into chunks of at most `max` bytes (zero-copy slices).
pub fn split_body(body: &Bytes, max: usize) -> Vec<Bytes> {
    if body.len() <= max || max == 0 {
        return vec![body.clone()];
    }
    (0..body.len())
        .step_by(max)
        .map(|start| body.slice(start..(start + max).min(body.len())))
        .collect()
}

/// A message that can be reassembled from fragments.
pub(crate) trait Fragmented: Sized {
    fn headers_mut(&mut self) -> &mut HeaderMap;
    fn take_body(&mut self) -> Bytes;
    fn set_body(&mut self, body: Bytes);
}

impl Fragmented for Request<Bytes> {
    fn headers_mut(&mut self) -> &mut HeaderMap {
        Request::headers_mut(self)
    }
    fn take_body(&mut self) -> Bytes {
        std::mem::take(self.body_mut())
    }
    fn set_body(&mut self, body: Bytes) {
        *self.body_mut() = body;
    }
}

impl Fragmented for Response<Bytes> {
    fn headers_mut(&mut self) -> &mut HeaderMap {
        Response::headers_mut(self)
    }
    fn take_body(&mut self) -> Bytes {
        std::mem::take(self.body_mut())
    }
    fn set_body(&mut self, body: Bytes) {
        *self.body_mut() = body;
    }
}

/// What adding a fragment led to.
#[derive(Debug)]
pub(crate) enum DefragOutcome<T> {
    /// All fragments are in: the whole message.
    Complete(T),
    /// More fragments are expected.
    Pending,
    /// A later fragment with no reassembly in progress (the first was never seen or timed out).
    Orphan,
    /// The fragment contradicts the reassembly or the limits.
    Rejected(&'static str),
}

struct Reassembly<T> {
    first: Option<T>,
    parts: Vec<Option<Bytes>>,
    received: usize,
    last_seen: Instant,
}

/// Reassembles messages keyed by `<fromId>|<msgId>`.
pub(crate) struct Defragmenter<T> {
    pending: Mutex<HashMap<String, Reassembly<T>>>,
}

impl<T: Fragmented> Defragmenter<T> {
    pub fn new() -> Self {
        Defragmenter {
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn add(&self, key: String, frag: Fragment, mut msg: T) -> DefragOutcome<T> {
        if frag.total > MAX_FRAGMENTS {
            return DefragOutcome::Rejected("too many fragments");
        }
        let body = msg.take_body();
        let mut pending = self.pending.lock().expect("defrag lock poisoned");
        let entry = match pending.get_mut(&key) {
            Some(entry) => entry,
            None if frag.index == 1 => pending.entry(key.clone()).or_insert(Reassembly {
                first: None,
                parts: vec![None; frag.total],
                received: 0,
                last_seen: Instant::now(),
            }),
            None => return DefragOutcome::Orphan,
        };
        if entry.parts.len() != frag.total {
            pending.remove(&key);
            return DefragOutcome::Rejected("fragment count changed mid-message");
        }
        let slot = &mut entry.parts[frag.index - 1];
        if slot.is_some() {
            return DefragOutcome::Rejected("duplicate fragment");
        }
        *slot = Some(body);
        entry.received += 1;
        entry.last_seen = Instant::now();
        if frag.index == 1 {
            entry.first = Some(msg);
        }
        if entry.received < frag.total {
            return DefragOutcome::Pending;
        }
        let done = pending.remove(&key).expect("entry exists");
        drop(pending);
        let Some(mut whole) = done.first else {
            return DefragOutcome::Rejected("first fragment missing");
        };
        let total: usize = done.parts.iter().flatten().map(Bytes::len).sum();
        let mut body = BytesMut::with_capacity(total);
        for part in done.parts.into_iter().flatten() {
            body.extend_from_slice(&part);
        }
        let headers = whole.headers_mut();
        headers.remove(frame::names::FRAGMENT);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(total));
        whole.set_body(body.freeze());
        DefragOutcome::Complete(whole)
    }

    /// Drop reassemblies idle for longer than [`DEFRAG_IDLE_TIMEOUT`]; returns their keys.
    pub fn sweep(&self) -> Vec<String> {
        let mut pending = self.pending.lock().expect("defrag lock poisoned");
        let stale: Vec<String> = pending
            .iter()
            .filter(|(_, r)| r.last_seen.elapsed() > DEFRAG_IDLE_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            pending.remove(k);
        }
        stale
    }

    #[cfg(test)]
    pub fn in_progress(&self) -> usize {
        self.pending.lock().expect("defrag lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(i: usize, n: usize, body: &'static str) -> Response<Bytes> {
        let mut r = Response::new(Bytes::from_static(body.as_bytes()));
        r.headers_mut().insert(
            frame::FRAGMENT,
            HeaderValue::from_str(&format!("{i}/{n}")).unwrap(),
        );
        r
    }

    #[test]
    fn splits_and_reassembles() {
        let body = Bytes::from_static(b"abcdefghij");
        let parts = split_body(&body, 3);
        assert_eq!(parts, ["abc", "def", "ghi", "j"]);
        assert_eq!(split_body(&body, 10).len(), 1);

        let d = Defragmenter::new();
        let f = |i, n| Fragment { index: i, total: n };
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "ab")),
            DefragOutcome::Pending
        ));
        assert!(matches!(
            d.add("k".into(), f(3, 3), frag(3, 3, "ef")),
            DefragOutcome::Pending
        ));
        match d.add("k".into(), f(2, 3), frag(2, 3, "cd")) {
            DefragOutcome::Complete(r) => {
                assert_eq!(r.body(), "abcdef");
                assert_eq!(r.headers()[CONTENT_LENGTH], "6");
                assert!(r.headers().get(frame::FRAGMENT).is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.in_progress(), 0);
    }

    #[test]
    fn rejects_hostile_fragments() {
        let d = Defragmenter::new();
        let f = |i, n| Fragment { index: i, total: n };
        assert!(matches!(
            d.add("k".into(), f(2, 3), frag(2, 3, "x")),
            DefragOutcome::Orphan
        ));
        assert!(matches!(
            d.add("k".into(), f(1, MAX_FRAGMENTS + 1), frag(1, 2, "x")),
            DefragOutcome::Rejected(_)
        ));
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "x")),
            DefragOutcome::Pending
        ));
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "x")),
            DefragOutcome::Rejected(_)
        ));
        assert!(matches!(
            d.add("k".into(), f(2, 4), frag(2, 4, "x")),
            DefragOutcome::Rejected(_)
        ));
        assert_eq!(d.in_progress(), 0);
        assert!(d.sweep().is_empty());
    }

    #[test]
    fn an_idle_reassembly_is_dropped_after_one_network_hop() {
        assert_eq!(
            DEFRAG_IDLE_TIMEOUT,
            Duration::from_millis(250),
            "Go's networkHop"
        );
        let d = Defragmenter::new();
        let f = |i, n| Fragment { index: i, total: n };
        d.add("k".into(), f(1, 2), frag(1, 2, "x"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(d.sweep().is_empty(), "still within the hop");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(d.sweep(), ["k"]);
        assert!(matches!(
            d.add("k".into(), f(2, 2), frag(2, 2, "y")),
            DefragOutcome::Orphan
        ));
    }
}
