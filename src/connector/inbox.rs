//! What a call's inbox holds: deliveries to waiting calls, and the responders multicasts
//! remember; and, on the serving side, the address of a caller's inbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http::Response;
use sharded_slab::Slab;
use tokio::time::Instant;

use super::defaults::{DEFAULT_CALL_BUDGET, KNOWN_RESPONDERS_MAX, KNOWN_RESPONDERS_TTL};
use crate::wire::codec::Headers;
use crate::wire::OpCode;

/// Where the serving side sends a request's acks and response, and what they echo back.
#[derive(Clone)]
pub(crate) struct ReplyTo {
    pub inbox: crate::transport::Subject,
    pub msg_id: String,
    pub queue: std::sync::Arc<str>,
}

/// What the inbox hands to a waiting call; `queue` is the responder's `Microbus-Queue`.
pub(crate) enum Delivery {
    Ack {
        from_id: String,
        queue: Option<String>,
        proceed: bool,
    },
    Response {
        from_id: String,
        queue: Option<String>,
        /// Read from the reply's head: the map may not have the frame (see [`Headers`]).
        ///
        /// [`Headers`]: crate::wire::codec::Headers
        op_code: Option<OpCode>,
        res: Response<Bytes>,
    },
    /// A response that cannot come any more: its fragments stopped arriving.
    Failed {
        from_id: String,
        error: crate::error::Error,
    },
}

/// The calls waiting for replies. A call's message id is its key in a lock-free slab, so the
/// inbox finds a call from the id alone: no map, no lock shared by every call (a mutex-guarded
/// map was locked and hashed four times a call), and no channel per call (tokio's allocated a
/// block of 32 deliveries for the one or two a call gets).
pub(crate) struct Calls {
    slab: Slab<Pending>,
    /// The slab cannot count its entries.
    count: AtomicUsize,
}

/// One waiting call: the replies handed to it and not yet read, and its task.
struct Pending {
    mail: Mutex<VecDeque<Delivery>>,
    waker: AtomicWaker,
    /// Which headers its responses keep.
    kept: Headers,
}

/// The length of a message id: a slab key (64 bits) in base 62.
pub(crate) const MSG_ID_LEN: usize = 11;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A call's message id: its slab key in [`MSG_ID_LEN`] base-62 characters (Microbus's own ids
/// are 8 random ones; peers only echo them). A reused slot has a new generation in its key, so
/// a late reply to an earlier call in the same slot finds nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsgId([u8; MSG_ID_LEN]);

impl MsgId {
    fn of_key(key: usize) -> MsgId {
        let mut out = [b'0'; MSG_ID_LEN];
        let mut rest = key as u64;
        for b in out.iter_mut().rev() {
            *b = BASE62[(rest % 62) as usize];
            rest /= 62;
        }
        MsgId(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base 62 is ASCII")
    }
}

/// The slab key a message id names, if it is one of ours in shape.
fn key_of(msg_id: &str) -> Option<usize> {
    let bytes = msg_id.as_bytes();
    if bytes.len() != MSG_ID_LEN {
        return None;
    }
    // 62^11 fits 128 bits: no overflow check per digit, one at the end.
    let mut key: u128 = 0;
    for &b in bytes {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        key = key * 62 + digit as u128;
    }
    u64::try_from(key)
        .ok()
        .and_then(|key| usize::try_from(key).ok())
}

impl Default for Calls {
    fn default() -> Calls {
        Calls {
            slab: Slab::new(),
            count: AtomicUsize::new(0),
        }
    }
}

impl Calls {
    /// A new waiting call whose responses keep `kept`; `None` when this thread's share of the
    /// slab is full (millions of calls in flight).
    pub(super) fn register(&self, kept: Headers) -> Option<Waiter<'_>> {
        let key = self.slab.insert(Pending {
            mail: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            kept,
        })?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Some(Waiter {
            calls: self,
            key,
            msg_id: MsgId::of_key(key),
        })
    }

    /// Which headers the responses to `msg_id` keep, if a call waits for it.
    pub(super) fn kept(&self, msg_id: &str) -> Option<Headers> {
        Some(self.slab.get(key_of(msg_id)?)?.kept)
    }

    /// Hand a reply to the call waiting for `msg_id`; the reply back when nobody waits.
    pub(super) fn deliver(&self, msg_id: &str, delivery: Delivery) -> Option<Delivery> {
        let Some(pending) = key_of(msg_id).and_then(|key| self.slab.get(key)) else {
            return Some(delivery);
        };
        pending
            .mail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(delivery);
        pending.waker.wake();
        None
    }

    /// Calls waiting now.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A call's place among the waiting ones, given up when the call ends, however it ends.
pub(crate) struct Waiter<'a> {
    calls: &'a Calls,
    key: usize,
    pub msg_id: MsgId,
}

impl Waiter<'_> {
    /// The next reply to this call.
    pub async fn recv(&self) -> Delivery {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Delivery> {
        let Some(pending) = self.calls.slab.get(self.key) else {
            // Only `Drop` removes it.
            return Poll::Pending;
        };
        // Registered before the mail is read: a reply handed over in between wakes this task.
        pending.waker.register(cx.waker());
        let next = pending
            .mail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        match next {
            Some(delivery) => Poll::Ready(delivery),
            None => Poll::Pending,
        }
    }

    /// Stop waiting, and take the replies handed over until then.
    pub fn leave(self) -> Vec<Delivery> {
        let left = self
            .calls
            .slab
            .get(self.key)
            .map(|p| {
                std::mem::take(&mut *p.mail.lock().unwrap_or_else(PoisonError::into_inner)).into()
            })
            .unwrap_or_default();
        drop(self);
        left
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Deferred while the inbox holds the entry: nothing waits on it.
        self.calls.slab.remove(self.key);
        self.calls.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Go's known-responders optimisation: per multicast subject, the set of `Microbus-Queue`s
/// that answered last time. When the same set has acknowledged and every acknowledging
/// instance has answered, a multicast returns without waiting out the ack window. Cleared
/// when a multicast times out, hears nobody, or gets a response after it returned.
#[derive(Default)]
pub(crate) struct KnownResponders {
    by_subject: Mutex<HashMap<String, (HashSet<String>, Instant)>>,
    /// Multicasts that returned recently, by message id: a late response clears their subject.
    finished: Mutex<HashMap<String, (String, Instant)>>,
}

impl KnownResponders {
    pub(super) fn expected(&self, subject: &str) -> Option<HashSet<String>> {
        let map = self.by_subject.lock().expect("known responders lock");
        map.get(subject)
            .filter(|(_, at)| at.elapsed() < KNOWN_RESPONDERS_TTL)
            .map(|(set, _)| set.clone())
    }

    pub(super) fn remember(&self, subject: &str, queues: HashSet<String>) {
        let mut map = self.by_subject.lock().expect("known responders lock");
        if map.len() >= KNOWN_RESPONDERS_MAX && !map.contains_key(subject) {
            // Forget the oldest: a full cache must not grow.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(subject.to_owned(), (queues, Instant::now()));
    }

    pub(super) fn forget(&self, subject: &str) {
        self.by_subject
            .lock()
            .expect("known responders lock")
            .remove(subject);
    }

    pub(super) fn finished(&self, msg_id: &str, subject: &str) {
        let mut f = self.finished.lock().expect("known responders lock");
        // Late responses arrive within a budget; older entries are of no use.
        f.retain(|_, (_, at)| at.elapsed() < DEFAULT_CALL_BUDGET);
        if f.len() < 4 * KNOWN_RESPONDERS_MAX {
            f.insert(msg_id.to_owned(), (subject.to_owned(), Instant::now()));
        }
    }

    /// A response for `msg_id` came after its multicast returned.
    pub(crate) fn late_response(&self, msg_id: &str) {
        let subject = self
            .finished
            .lock()
            .expect("known responders lock")
            .remove(msg_id);
        if let Some((subject, _)) = subject {
            self.forget(&subject);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(from: &str) -> Delivery {
        Delivery::Ack {
            from_id: from.to_owned(),
            queue: None,
            proceed: false,
        }
    }

    fn from_of(d: &Delivery) -> &str {
        match d {
            Delivery::Ack { from_id, .. }
            | Delivery::Response { from_id, .. }
            | Delivery::Failed { from_id, .. } => from_id,
        }
    }

    #[test]
    fn message_ids_name_their_keys_and_nothing_else() {
        for key in [0, 1, 61, 62, 12_345, u32::MAX as usize, usize::MAX] {
            let id = MsgId::of_key(key);
            assert_eq!(id.as_str().len(), MSG_ID_LEN);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(key_of(id.as_str()), Some(key));
        }
        // Microbus's 8-character ids, other lengths, other bytes, and past 64 bits.
        for foreign in [
            "PaislJkR",
            "",
            "0000000000",
            "000000000000",
            "0000000000-",
            "zzzzzzzzzzz",
        ] {
            assert_eq!(key_of(foreign), None, "{foreign}");
        }
    }

    #[tokio::test]
    async fn replies_reach_their_call_in_order_and_no_other() {
        let calls = Calls::default();
        let a = calls.register(Headers::All).unwrap();
        let b = calls.register(Headers::External).unwrap();
        assert_ne!(a.msg_id, b.msg_id);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls.kept(b.msg_id.as_str()), Some(Headers::External));
        assert!(calls.deliver(a.msg_id.as_str(), ack("a1")).is_none());
        assert!(calls.deliver(b.msg_id.as_str(), ack("b1")).is_none());
        assert!(calls.deliver(a.msg_id.as_str(), ack("a2")).is_none());
        assert_eq!(from_of(&a.recv().await), "a1");
        assert_eq!(from_of(&a.recv().await), "a2");
        assert_eq!(from_of(&b.recv().await), "b1");
        // Nobody waits for a foreign id: the reply comes back.
        assert!(calls.deliver("PaislJkR", ack("x")).is_some());
    }

    #[tokio::test]
    async fn a_reply_wakes_a_waiting_call() {
        let calls = std::sync::Arc::new(Calls::default());
        let waiter = calls.register(Headers::All).unwrap();
        let id = waiter.msg_id;
        let sender = calls.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(sender.deliver(id.as_str(), ack("late")).is_none());
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter.recv())
            .await
            .expect("woken");
        assert_eq!(from_of(&got), "late");
    }

    #[test]
    fn a_call_that_ended_gets_nothing_even_when_its_slot_is_reused() {
        let calls = Calls::default();
        let first = calls.register(Headers::All).unwrap();
        let old = first.msg_id;
        assert!(calls.deliver(old.as_str(), ack("kept")).is_none());
        let left = first.leave();
        assert_eq!(left.len(), 1);
        assert_eq!(calls.len(), 0);
        assert!(calls.deliver(old.as_str(), ack("late")).is_some());
        assert_eq!(calls.kept(old.as_str()), None);
        // The next call may take the same slot, with a new generation.
        let second = calls.register(Headers::All).unwrap();
        assert_ne!(second.msg_id, old);
        assert!(calls.deliver(old.as_str(), ack("late")).is_some());
        assert!(calls.deliver(second.msg_id.as_str(), ack("new")).is_none());
    }

    #[test]
    fn any_message_id_is_looked_up_safely() {
        let calls = Calls::default();
        let _live = calls.register(Headers::All).unwrap();
        // Every shape of key: thread ids and slots that were never made.
        let mut id = [b'0'; MSG_ID_LEN];
        for i in 0..20_000u64 {
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 40);
            id.copy_from_slice(MsgId::of_key(key as usize).as_str().as_bytes());
            let text = std::str::from_utf8(&id).unwrap();
            let _ = calls.kept(text);
            let _ = calls.deliver(text, ack("probe"));
        }
    }
}
