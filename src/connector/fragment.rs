//! Fragmentation of large bodies (reference §1.9): split on send, reassemble on receipt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, CONTENT_LENGTH};
use http::{Request, Response};

use crate::wire::codec;
use crate::wire::frame::{self, Fragment};

/// A reassembly with no new fragment for this long, while no other message's fragments arrive
/// either, is dropped: one network hop (250 ms), as Go Microbus does.
pub const DEFRAG_IDLE_TIMEOUT: Duration = super::defaults::NETWORK_HOP;

/// While other messages' fragments keep arriving, a reassembly waits up to this long for its
/// next one: it may be queued behind theirs. Fifty concurrent 20 MB uploads on two busy cores
/// spaced one upload's fragments by more than 250 ms; dropping it then failed a live upload.
pub const DEFRAG_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

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

struct Reassembly<T, R> {
    first: Option<T>,
    parts: Vec<Option<Bytes>>,
    received: usize,
    last_seen: Instant,
    /// Whom to tell when the reassembly is dropped unfinished.
    waiting: R,
}

struct Reassemblies<T, R> {
    by_key: HashMap<String, Reassembly<T, R>>,
    /// When a fragment of any message last came in.
    last_fragment: Instant,
}

/// Reassembles messages keyed by `<fromId>|<msgId>`. `R` is who waits for each message: told
/// by [`Defragmenter::sweep`] when its fragments stopped arriving, instead of silence.
pub(crate) struct Defragmenter<T, R> {
    pending: Mutex<Reassemblies<T, R>>,
}

impl<T: Fragmented, R> Defragmenter<T, R> {
    pub fn new() -> Self {
        Defragmenter {
            pending: Mutex::new(Reassemblies {
                by_key: HashMap::new(),
                last_fragment: Instant::now(),
            }),
        }
    }

    /// Add a fragment; `waiting` is asked for only by the first fragment of a message.
    pub fn add(
        &self,
        key: String,
        frag: Fragment,
        mut msg: T,
        waiting: impl FnOnce() -> R,
    ) -> DefragOutcome<T> {
        if frag.total > MAX_FRAGMENTS {
            return DefragOutcome::Rejected("too many fragments");
        }
        let body = msg.take_body();
        let mut guard = self.pending.lock().expect("defrag lock poisoned");
        let state = &mut *guard;
        let pending = &mut state.by_key;
        let entry = match pending.get_mut(&key) {
            Some(entry) => entry,
            None if frag.index == 1 => pending.entry(key.clone()).or_insert(Reassembly {
                first: None,
                parts: vec![None; frag.total],
                received: 0,
                last_seen: Instant::now(),
                waiting: waiting(),
            }),
            None => return DefragOutcome::Orphan,
        };
        state.last_fragment = Instant::now();
        if entry.parts.len() != frag.total {
            pending.remove(&key);
            return DefragOutcome::Rejected("fragment count changed mid-message");
        }
        let slot = &mut entry.parts[frag.index - 1];
        if slot.is_some() {
            // Rejected once: the caller is told now, and not again by the sweep.
            pending.remove(&key);
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
        drop(guard);
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
        headers.insert(CONTENT_LENGTH, codec::length_value(total as u64));
        whole.set_body(body.freeze());
        DefragOutcome::Complete(whole)
    }

    /// Drop the reassemblies whose fragments stopped arriving: none for [`DEFRAG_IDLE_TIMEOUT`]
    /// while no other fragment came in either, or none for [`DEFRAG_BUSY_TIMEOUT`]. Returns
    /// their keys and who waits for them.
    pub fn sweep(&self) -> Vec<(String, R)> {
        let mut guard = self.pending.lock().expect("defrag lock poisoned");
        let quiet = guard.last_fragment.elapsed() > DEFRAG_IDLE_TIMEOUT;
        guard
            .by_key
            .extract_if(|_, r| {
                let idle = r.last_seen.elapsed();
                (quiet && idle > DEFRAG_IDLE_TIMEOUT) || idle > DEFRAG_BUSY_TIMEOUT
            })
            .map(|(key, r)| (key, r.waiting))
            .collect()
    }

    #[cfg(test)]
    pub fn in_progress(&self) -> usize {
        self.pending
            .lock()
            .expect("defrag lock poisoned")
            .by_key
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
            d.add("k".into(), f(1, 3), frag(1, 3, "ab"), || ()),
            DefragOutcome::Pending
        ));
        assert!(matches!(
            d.add("k".into(), f(3, 3), frag(3, 3, "ef"), || ()),
            DefragOutcome::Pending
        ));
        match d.add("k".into(), f(2, 3), frag(2, 3, "cd"), || ()) {
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
            d.add("k".into(), f(2, 3), frag(2, 3, "x"), || ()),
            DefragOutcome::Orphan
        ));
        assert!(matches!(
            d.add("k".into(), f(1, MAX_FRAGMENTS + 1), frag(1, 2, "x"), || ()),
            DefragOutcome::Rejected(_)
        ));
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "x"), || ()),
            DefragOutcome::Pending
        ));
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "x"), || ()),
            DefragOutcome::Rejected("duplicate fragment")
        ));
        // Rejected once and dropped: its caller is not told a second time by the sweep.
        assert_eq!(d.in_progress(), 0);
        assert!(matches!(
            d.add("k".into(), f(2, 3), frag(2, 3, "x"), || ()),
            DefragOutcome::Orphan
        ));
        assert!(matches!(
            d.add("k".into(), f(1, 3), frag(1, 3, "x"), || ()),
            DefragOutcome::Pending
        ));
        assert!(matches!(
            d.add("k".into(), f(2, 4), frag(2, 4, "x"), || ()),
            DefragOutcome::Rejected("fragment count changed mid-message")
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
        d.add("k".into(), f(1, 2), frag(1, 2, "x"), || ());
        std::thread::sleep(Duration::from_millis(100));
        assert!(d.sweep().is_empty(), "still within the hop");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(d.sweep(), [("k".to_owned(), ())]);
        assert!(matches!(
            d.add("k".into(), f(2, 2), frag(2, 2, "y"), || ()),
            DefragOutcome::Orphan
        ));
    }

    #[test]
    fn a_reassembly_waits_longer_while_other_fragments_arrive() {
        let d = Defragmenter::new();
        let f = |i, n| Fragment { index: i, total: n };
        d.add("slow".into(), f(1, 2), frag(1, 2, "x"), || "slow's caller");
        // Another message's fragments keep coming: its next fragment may be queued behind them.
        let started = Instant::now();
        let mut other = 0;
        while started.elapsed() < DEFRAG_IDLE_TIMEOUT * 2 {
            other += 1;
            let key = format!("busy{other}");
            d.add(key, f(1, 2), frag(1, 2, "y"), || "busy's caller");
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                d.sweep().iter().all(|(k, _)| k != "slow"),
                "dropped while others' fragments arrive"
            );
        }
        // Nothing more comes in: after one quiet hop every reassembly goes, and says whose.
        std::thread::sleep(DEFRAG_IDLE_TIMEOUT + Duration::from_millis(50));
        let swept = d.sweep();
        assert_eq!(swept.len(), other + 1);
        assert!(swept.contains(&("slow".to_owned(), "slow's caller")));
        assert_eq!(d.in_progress(), 0);
    }

    #[test]
    fn a_reassembly_is_dropped_after_the_busy_timeout_even_while_others_arrive() {
        let d = Defragmenter::new();
        let f = |i, n| Fragment { index: i, total: n };
        d.add("dead".into(), f(1, 2), frag(1, 2, "x"), || 1);
        let started = Instant::now();
        let mut swept = Vec::new();
        while swept.is_empty() {
            assert!(
                started.elapsed() < DEFRAG_BUSY_TIMEOUT * 2,
                "never dropped while others arrive"
            );
            d.add("live".into(), f(1, 2), frag(1, 2, "y"), || 2);
            d.add("live".into(), f(2, 2), frag(2, 2, "y"), || 2);
            std::thread::sleep(Duration::from_millis(50));
            swept = d.sweep();
        }
        assert!(started.elapsed() >= DEFRAG_BUSY_TIMEOUT);
        assert_eq!(swept, [("dead".to_owned(), 1)]);
    }
}
