//! What a call's inbox holds: deliveries to waiting calls, and the responders multicasts
//! remember; and, on the serving side, the address of a caller's inbox.

use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use fnv::FnvBuildHasher;

use bytes::Bytes;
use http::Response;
use tokio::time::Instant;

use super::defaults::{
    DEFAULT_CALL_BUDGET, KNOWN_RESPONDERS_MAX, KNOWN_RESPONDERS_TTL, PENDING_DRAWS, PENDING_SLOTS,
};
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

/// A call waiting for its replies.
pub(crate) struct Waiting {
    pub tx: tokio::sync::mpsc::UnboundedSender<Delivery>,
    /// Which headers its responses keep.
    pub kept: Headers,
}

/// The calls waiting for their replies, found by message id without a lock: the inbox looks
/// up every ack and response here, and a mutex taken for each (and twice more by every call)
/// was one lock for all of an instance's calls.
///
/// Each call holds the slot of a fixed table at the place its message id hashes to: it draws
/// random ids until one falls on a free slot (its id is still 8 random characters, as
/// Microbus's are), and frees the slot when it ends. A reply's id names one slot, and counts
/// only if the call there has exactly that id: a late reply for a call that has ended never
/// reaches the call that took its slot since. A reader never waits; a call leaving its slot
/// waits for the readers already looking at it, which only hand a reply over. A call that
/// draws [`PENDING_DRAWS`] ids in vain (a table more than half full) waits in a locked map
/// instead, which a reply looks into only while it holds any call.
pub(crate) struct PendingCalls {
    slots: Box<[Slot]>,
    /// How far a hash is shifted to index `slots`.
    shift: u32,
    overflow: Mutex<HashMap<String, Waiting, FnvBuildHasher>>,
    /// Entries of `overflow`.
    overflowing: AtomicUsize,
    /// Calls waiting, for diagnostics.
    waiting: AtomicUsize,
}

/// A slot's `id` while no call holds it.
const FREE: u64 = 0;
/// A slot's `id` while a call moves in or out: held, but no reply's id matches it.
const MOVING: u64 = 1;

struct Slot {
    /// The waiting call's message id, its 8 bytes as one word (see [`packed`]), or [`FREE`] or
    /// [`MOVING`].
    id: AtomicU64,
    /// Readers between their look at `id` and their leaving.
    readers: AtomicU32,
    /// The waiting call: written by the call holding the slot while [`MOVING`], read by
    /// others only while `id` is the one they look for.
    call: UnsafeCell<MaybeUninit<Waiting>>,
}

// SAFETY: `call` is reached by other threads only under the protocol above, and what it
// holds may be used and dropped on any thread (checked below).
unsafe impl Sync for Slot {}

const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Waiting>();
};

/// An 8-byte message id (every one busgate draws) as one word; `None` for any other, which
/// no slot holds. Text ids never pack to [`FREE`] or [`MOVING`].
fn packed(msg_id: &str) -> Option<u64> {
    let bytes = <[u8; 8]>::try_from(msg_id.as_bytes()).ok()?;
    Some(u64::from_ne_bytes(bytes)).filter(|&key| key > MOVING)
}

/// Where a call waits; it leaves that place when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Slot(usize),
    Overflow,
}

/// One reader looking at a slot, until dropped (even if what it runs panics).
struct Reading<'a>(&'a AtomicU32);

impl<'a> Reading<'a> {
    fn start(readers: &'a AtomicU32) -> Reading<'a> {
        readers.fetch_add(1, Ordering::SeqCst);
        Reading(readers)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for PendingCalls {
    fn default() -> Self {
        PendingCalls::with_slots(PENDING_SLOTS)
    }
}

impl PendingCalls {
    /// A table of `slots` (a power of two) slots.
    pub(crate) fn with_slots(slots: usize) -> PendingCalls {
        assert!(slots.is_power_of_two(), "pending slots: a power of two");
        PendingCalls {
            slots: zeroed_slots(slots),
            shift: 64 - slots.trailing_zeros(),
            overflow: Mutex::default(),
            overflowing: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The slot of a packed id: Fibonacci hashing, its high bits.
    fn slot_of(&self, key: u64) -> usize {
        key.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .checked_shr(self.shift)
            .unwrap_or(0) as usize
    }

    /// Register a call under a new message id, drawn by `new_id`, that no waiting call has.
    pub(crate) fn register(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<Delivery>,
        kept: Headers,
        mut new_id: impl FnMut() -> String,
    ) -> (String, Place) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        for _ in 0..PENDING_DRAWS {
            let msg_id = new_id();
            let Some(key) = packed(&msg_id) else {
                continue;
            };
            let at = self.slot_of(key);
            let slot = &self.slots[at];
            // Acquire: the call that left the slot dropped its entry before it freed it.
            // SeqCst, with the look into the overflow after it: a call entering the overflow
            // counts itself before it looks at this slot, so one of the two sees the other.
            if slot.id.load(Ordering::Relaxed) != FREE
                || slot
                    .id
                    .compare_exchange(FREE, MOVING, Ordering::SeqCst, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if self.in_overflow(&msg_id) {
                slot.id.store(FREE, Ordering::Release);
                continue;
            }
            // SAFETY: MOVING: this call alone holds the slot, and readers reach `call` only
            // under a matching id.
            unsafe { (*slot.call.get()).write(Waiting { tx, kept }) };
            // Published: a reader that sees the id sees the entry written.
            slot.id.store(key, Ordering::Release);
            return (msg_id, Place::Slot(at));
        }
        loop {
            let mut overflow = self.overflow.lock().expect("pending overflow lock");
            // Counted before the look at the slot: a call moving into a slot from now on
            // looks into the map, under this lock, so after this id is in it.
            self.overflowing.fetch_add(1, Ordering::SeqCst);
            let msg_id = new_id();
            let held = packed(&msg_id).map(|key| {
                let held = self.slots[self.slot_of(key)].id.load(Ordering::SeqCst);
                (held == key, held == MOVING)
            });
            match held {
                Some((true, _)) => {}
                // A call moving in there may have this id, and may be waiting for this lock
                // to see whether the map has it: let it go on, then draw again.
                Some((_, true)) => {
                    self.overflowing.fetch_sub(1, Ordering::SeqCst);
                    drop(overflow);
                    std::thread::yield_now();
                    continue;
                }
                _ if overflow.contains_key(&msg_id) => {}
                _ => {
                    overflow.insert(msg_id.clone(), Waiting { tx, kept });
                    return (msg_id, Place::Overflow);
                }
            }
            self.overflowing.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The call `msg_id` ends: it waits no more.
    pub(crate) fn remove(&self, msg_id: &str, place: Place) {
        match place {
            Place::Slot(at) => {
                let slot = &self.slots[at];
                debug_assert_eq!(Some(slot.id.load(Ordering::Relaxed)), packed(msg_id));
                slot.id.store(MOVING, Ordering::SeqCst);
                // A reader that saw the id counted itself first (both SeqCst): wait for it
                // to hand its reply over.
                let mut spins = 0u32;
                while slot.readers.load(Ordering::SeqCst) != 0 {
                    if spins < 100 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    spins += 1;
                }
                // SAFETY: MOVING and no reader: nobody else can reach the entry.
                unsafe { (*slot.call.get()).assume_init_drop() };
                slot.id.store(FREE, Ordering::Release);
            }
            Place::Overflow => {
                let mut overflow = self.overflow.lock().expect("pending overflow lock");
                if overflow.remove(msg_id).is_some() {
                    self.overflowing.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// `f` of the call waiting for `msg_id`, if one is. A call leaving waits for `f` to
    /// return: it must neither block nor end a call.
    pub(crate) fn with<R>(&self, msg_id: &str, f: impl FnOnce(&Waiting) -> R) -> Option<R> {
        if let Some(key) = packed(msg_id) {
            let slot = &self.slots[self.slot_of(key)];
            let _reading = Reading::start(&slot.readers);
            if slot.id.load(Ordering::SeqCst) == key {
                // SAFETY: the id matches: the entry was written before the id was stored,
                // and it stays until this reader has left.
                let call = unsafe { (*slot.call.get()).assume_init_ref() };
                return Some(f(call));
            }
        }
        if self.overflowing.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let overflow = self.overflow.lock().expect("pending overflow lock");
        overflow.get(msg_id).map(f)
    }

    fn in_overflow(&self, msg_id: &str) -> bool {
        self.overflowing.load(Ordering::SeqCst) > 0
            && self
                .overflow
                .lock()
                .expect("pending overflow lock")
                .contains_key(msg_id)
    }

    /// Calls waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl Drop for PendingCalls {
    fn drop(&mut self) {
        for slot in self.slots.iter_mut() {
            if *slot.id.get_mut() > MOVING {
                // SAFETY: a held slot's entry is written, and nothing else is left to read it.
                unsafe { slot.call.get_mut().assume_init_drop() };
            }
        }
    }
}

/// The table, all slots free, from zeroed memory: the pages of slots never used are never
/// touched (every instance has a table; most make few calls at once).
fn zeroed_slots(n: usize) -> Box<[Slot]> {
    let layout = std::alloc::Layout::array::<Slot>(n).expect("pending slots layout");
    // SAFETY: an all-zero `Slot` is a free one (atomics at 0, an uninitialised entry); the
    // memory comes from the global allocator with `Box`'s layout for `n` slots.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Slot>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
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
    use crate::connector::ids::new_msg_id;

    fn channel() -> (
        tokio::sync::mpsc::UnboundedSender<Delivery>,
        tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    ) {
        tokio::sync::mpsc::unbounded_channel()
    }

    /// Ids drawn from a list, in order.
    fn ids(list: &[&str]) -> impl FnMut() -> String {
        let mut list = list
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter();
        move || list.next().expect("enough ids")
    }

    fn ack(from_id: &str) -> Delivery {
        Delivery::Ack {
            from_id: from_id.to_owned(),
            queue: None,
            proceed: false,
        }
    }

    #[test]
    fn a_call_is_found_by_its_id_until_it_ends() {
        let calls = PendingCalls::default();
        let (tx, mut rx) = channel();
        let (msg_id, place) = calls.register(tx, Headers::External, new_msg_id);
        assert_eq!(msg_id.len(), 8);
        assert!(matches!(place, Place::Slot(_)));
        assert_eq!(calls.len(), 1);
        assert_eq!(calls.with(&msg_id, |p| p.kept), Some(Headers::External));
        calls.with(&msg_id, |p| p.tx.send(ack("s1")).unwrap());
        assert!(matches!(rx.try_recv(), Ok(Delivery::Ack { from_id, .. }) if from_id == "s1"));
        assert_eq!(calls.with("nobody", |_| ()), None);
        assert_eq!(calls.with("", |_| ()), None);
        calls.remove(&msg_id, place);
        assert_eq!(calls.with(&msg_id, |_| ()), None);
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn a_late_reply_never_reaches_the_call_that_took_the_slot_since() {
        // One slot: every call takes the same one.
        let calls = PendingCalls::with_slots(1);
        let (tx, _rx) = channel();
        let (first, place) = calls.register(tx, Headers::All, ids(&["first-id"]));
        calls.remove(&first, place);
        let (tx, _rx) = channel();
        let (second, place) = calls.register(tx, Headers::External, ids(&["secondid"]));
        assert_eq!((second.as_str(), place), ("secondid", Place::Slot(0)));
        assert_eq!(calls.with("first-id", |p| p.kept), None);
        assert_eq!(calls.with("secondid", |p| p.kept), Some(Headers::External));
    }

    #[test]
    fn calls_beyond_the_table_wait_in_the_overflow_and_ids_stay_unique() {
        let calls = PendingCalls::with_slots(1);
        let (tx, _rx) = channel();
        let (a, a_place) = calls.register(tx, Headers::All, ids(&["aaaaaaaa"]));
        assert_eq!(a_place, Place::Slot(0));
        // Every draw falls on the held slot: the call waits in the overflow, where the id a
        // waiting call has is drawn again in vain.
        let mut draws = vec!["xxxxxxxx"; PENDING_DRAWS];
        draws.extend(["aaaaaaaa", "bbbbbbbb"]);
        let (tx, mut b_rx) = channel();
        let (b, b_place) = calls.register(tx, Headers::External, ids(&draws));
        assert_eq!((b.as_str(), b_place), ("bbbbbbbb", Place::Overflow));
        // Nor is an id that waits in the overflow drawn for a slot.
        calls.remove(&a, a_place);
        let (tx, _rx) = channel();
        let (c, c_place) = calls.register(tx, Headers::All, ids(&["bbbbbbbb", "cccccccc"]));
        assert_eq!((c.as_str(), c_place), ("cccccccc", Place::Slot(0)));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls.with("bbbbbbbb", |p| p.kept), Some(Headers::External));
        calls.with("bbbbbbbb", |p| p.tx.send(ack("s2")).unwrap());
        assert!(b_rx.try_recv().is_ok());
        calls.remove("bbbbbbbb", b_place);
        assert_eq!(calls.with("bbbbbbbb", |_| ()), None);
        assert_eq!(calls.overflowing.load(Ordering::Acquire), 0);
        assert_eq!(calls.with("cccccccc", |p| p.kept), Some(Headers::All));
        // Ids of another length, from the wire, are held nowhere.
        for id in ["cccccccc ", "ccccccc", "", "\0\0\0\0\0\0\0\0"] {
            assert_eq!(calls.with(id, |_| ()), None, "{id:?}");
        }
    }

    #[test]
    fn no_two_waiting_calls_share_an_id_across_the_slots_and_the_overflow() {
        use std::collections::HashSet;
        use std::sync::Arc;
        // One slot and four possible ids: three threads keep drawing the same ids, one call
        // in the slot and the others in the overflow, entering and leaving at once.
        let calls = Arc::new(PendingCalls::with_slots(1));
        let live = Arc::new(Mutex::new(HashSet::new()));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (calls, live) = (calls.clone(), live.clone());
                std::thread::spawn(move || {
                    let ids = ["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"];
                    let mut draw = || {
                        use rand::Rng;
                        ids[rand::rng().random_range(0..ids.len())].to_owned()
                    };
                    for _ in 0..20_000 {
                        let (tx, _rx) = channel();
                        let (msg_id, place) = calls.register(tx, Headers::All, &mut draw);
                        assert!(
                            live.lock().unwrap().insert(msg_id.clone()),
                            "{msg_id} twice"
                        );
                        std::thread::yield_now();
                        live.lock().unwrap().remove(&msg_id);
                        calls.remove(&msg_id, place);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(calls.len(), 0);
        assert_eq!(calls.overflowing.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn replies_racing_calls_that_end_reach_only_their_own_call() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        // A small table: slots are taken, freed, taken again and overflowed at once, while an
        // inbox thread hands replies to ids of calls that may be ending at that moment.
        let calls = Arc::new(PendingCalls::with_slots(8));
        let recent = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let inbox = {
            let (calls, recent, stop) = (calls.clone(), recent.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut delivered = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ids = recent.lock().unwrap().clone();
                    for id in ids.iter().rev() {
                        // The reply names the call it is for.
                        if calls.with(id, |p| p.tx.send(ack(id)).is_ok()) == Some(true) {
                            delivered += 1;
                        }
                    }
                }
                delivered
            })
        };
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let (calls, recent) = (calls.clone(), recent.clone());
                std::thread::spawn(move || {
                    let mut heard = 0u64;
                    for i in 0..3_000 {
                        let mut held = Vec::new();
                        for _ in 0..(1 + i % 6) {
                            let (tx, rx) = channel();
                            let (msg_id, place) = calls.register(tx, Headers::All, new_msg_id);
                            {
                                let mut recent = recent.lock().unwrap();
                                recent.push(msg_id.clone());
                                let excess = recent.len().saturating_sub(32);
                                recent.drain(..excess);
                            }
                            held.push((msg_id, place, rx));
                        }
                        std::thread::yield_now();
                        for (msg_id, place, mut rx) in held {
                            calls.remove(&msg_id, place);
                            while let Ok(delivery) = rx.try_recv() {
                                match delivery {
                                    Delivery::Ack { from_id, .. } => assert_eq!(from_id, msg_id),
                                    _ => unreachable!(),
                                }
                                heard += 1;
                            }
                        }
                    }
                    heard
                })
            })
            .collect();
        let heard: u64 = callers.into_iter().map(|t| t.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        let delivered = inbox.join().unwrap();
        assert_eq!(heard, delivered, "every reply handed over reached its call");
        assert!(delivered > 0, "the race was run");
        assert_eq!(calls.len(), 0);
        assert_eq!(calls.overflowing.load(Ordering::Acquire), 0);
    }
}
