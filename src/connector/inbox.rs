//! What a call's inbox holds: deliveries to waiting calls, and the responders multicasts
//! remember; and, on the serving side, the address of a caller's inbox.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use http::Response;
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

/// A call waiting for its replies, by message id.
pub(crate) struct Pending {
    pub tx: tokio::sync::mpsc::UnboundedSender<Delivery>,
    /// Which headers its responses keep.
    pub kept: Headers,
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
