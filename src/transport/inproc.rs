//! The in-process bus: NATS core semantics without a server, for the embedded default and for
//! fast tests. Subjects with `*` and `>` wildcards, queue groups with one random member per
//! message, plain subscriptions that all get a copy, and a payload limit like a server's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::Subject;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::message::{
    BusMessage, Carried, ConnectionState, MessageHandler, TransportError, TransportErrorKind,
};

/// The payload limit of a default NATS server (`max_payload`), so that fragmentation behaves
/// the same on both transports.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Messages buffered per subscription before new ones are dropped, like a NATS slow consumer
/// (async-nats's default subscription capacity).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct InProcBus {
    inner: Arc<Inner>,
}

struct Inner {
    max_payload: usize,
    registry: RwLock<Registry>,
    state: watch::Sender<ConnectionState>,
}

/// Distinct subjects whose routes are remembered; past it the memory is cleared (paths from
/// the ingress are unbounded, the subjects in steady use are few).
pub const ROUTE_CACHE_MAX: usize = 4096;

#[derive(Default)]
struct Registry {
    next_id: u64,
    subs: HashMap<u64, Entry>,
    /// Where each subject published lately goes, so that a publish neither scans every
    /// subscription nor groups queues anew. Cleared whenever a subscription comes or goes.
    routes: HashMap<String, Arc<[Route]>>,
}

/// One destination of a subject: a plain subscription, or a queue group (one random member).
enum Route {
    Plain(Sink),
    Group(Vec<Sink>),
}

/// Where a subscription's messages go: its channel, or its handler, called by the publisher.
#[derive(Clone)]
enum Sink {
    Channel(mpsc::Sender<BusMessage>, Receipt),
    Handler(MessageHandler, Receipt),
}

/// Whether a subscriber acknowledges what it takes (a Microbus endpoint acks every request it
/// reads), so that a message meant for it alone counts as acknowledged once handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Silent,
    Acknowledged,
}

/// Where a publish went.
enum Delivered {
    /// Nothing subscribes to the subject.
    Nowhere,
    /// Taken by at least one subscriber; `acknowledged` when one of them acknowledges it.
    Taken { acknowledged: bool },
    /// Every subscriber it was for was full or gone.
    Dropped,
}

impl Registry {
    fn routes_of(&self, subject: &str) -> Arc<[Route]> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut routes = Vec::new();
        let mut groups: HashMap<&str, Vec<Sink>> = HashMap::new();
        for entry in self.subs.values() {
            if !matches(&entry.pattern, &tokens) {
                continue;
            }
            match &entry.queue {
                Some(q) => groups
                    .entry(q.as_str())
                    .or_default()
                    .push(entry.sink.clone()),
                None => routes.push(Route::Plain(entry.sink.clone())),
            }
        }
        routes.extend(groups.into_values().map(Route::Group));
        routes.into()
    }
}

struct Entry {
    pattern: Vec<String>,
    queue: Option<String>,
    sink: Sink,
}

impl std::fmt::Debug for InProcBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcBus")
            .field("max_payload", &self.inner.max_payload)
            .finish()
    }
}

impl Default for InProcBus {
    fn default() -> Self {
        InProcBus::new()
    }
}

impl InProcBus {
    pub fn new() -> InProcBus {
        InProcBus::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    pub fn with_max_payload(max_payload: usize) -> InProcBus {
        InProcBus {
            inner: Arc::new(Inner {
                max_payload,
                registry: RwLock::new(Registry::default()),
                state: watch::channel(ConnectionState::Connected).0,
            }),
        }
    }

    pub fn max_payload(&self) -> usize {
        self.inner.max_payload
    }

    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Deliver `payload` to every subscription `subject` matches (one member of each queue
    /// group). Each receiver gets the publisher's own subject, shared, not a copy.
    pub fn publish(
        &self,
        subject: impl Into<Subject>,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        let subject: Subject = subject.into();
        self.check(&subject, &payload)?;
        self.deliver(&subject, &payload, false);
        Ok(())
    }

    /// Publish a request, ack or response meant for one subscriber, and say how it went: a
    /// subject nothing subscribes to takes it as NATS would, without a word (the caller's
    /// ack timeout tells); one whose subscribers are all full refuses it.
    pub fn publish_to_one(
        &self,
        subject: impl Into<Subject>,
        payload: Bytes,
    ) -> Result<Carried, TransportError> {
        let subject: Subject = subject.into();
        self.check(&subject, &payload)?;
        Ok(self
            .deliver_if_subscribed(&subject, &payload)?
            .unwrap_or(Carried::InMemory))
    }

    fn check(&self, subject: &Subject, payload: &Bytes) -> Result<(), TransportError> {
        if payload.len() > self.inner.max_payload {
            return Err(TransportError::new(
                TransportErrorKind::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds {}",
                    payload.len(),
                    self.inner.max_payload
                ),
            ));
        }
        if !is_valid_publish_subject(subject) {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                format!("invalid subject '{subject}'"),
            ));
        }
        Ok(())
    }

    /// A registry for a NATS client's short circuit: no payload limit of its own (NATS's
    /// applies, by which the connector cuts fragments).
    pub fn short_circuit() -> InProcBus {
        InProcBus::with_max_payload(usize::MAX)
    }

    /// Deliver a message meant for one subscriber when anything here subscribes to
    /// `subject`, and say how; `None` leaves it for NATS. Refused when every subscriber it
    /// was for is full: as a NATS slow consumer would lose it, but said at once.
    pub fn deliver_if_subscribed(
        &self,
        subject: &Subject,
        payload: &Bytes,
    ) -> Result<Option<Carried>, TransportError> {
        match self.deliver(subject, payload, true) {
            Delivered::Nowhere => Ok(None),
            Delivered::Taken { acknowledged: true } => Ok(Some(Carried::Acknowledged)),
            Delivered::Taken {
                acknowledged: false,
            } => Ok(Some(Carried::InMemory)),
            Delivered::Dropped => Err(TransportError::new(
                TransportErrorKind::Rejected,
                format!("every in-process subscriber of '{subject}' is full"),
            )),
        }
    }

    /// Deliver to every route of `subject`; `to_one` for a message meant for one subscriber.
    fn deliver(&self, subject: &Subject, payload: &Bytes, to_one: bool) -> Delivered {
        let cached = self
            .inner
            .registry
            .read()
            .expect("registry lock poisoned")
            .routes
            .get(&**subject)
            .cloned();
        let routes = match cached {
            Some(routes) => routes,
            None => {
                let mut registry = self.inner.registry.write().expect("registry lock poisoned");
                let routes = registry.routes_of(subject);
                if registry.routes.len() >= ROUTE_CACHE_MAX {
                    registry.routes.clear();
                }
                registry.routes.insert(subject.to_string(), routes.clone());
                routes
            }
        };
        if routes.is_empty() {
            return Delivered::Nowhere;
        }
        let mut delivered = Delivered::Dropped;
        for route in routes.iter() {
            let taken = match route {
                Route::Plain(sink) => deliver(sink, subject, payload, to_one),
                // A full member passes the message on to the next: it is lost only when the
                // whole group is full.
                Route::Group(members) => {
                    let first = rand::rng().random_range(0..members.len());
                    (0..members.len()).find_map(|i| {
                        let member = &members[(first + i) % members.len()];
                        deliver(member, subject, payload, to_one)
                    })
                }
            };
            match taken {
                Some(acknowledged) => {
                    delivered = match delivered {
                        Delivered::Taken { acknowledged: a } => Delivered::Taken {
                            acknowledged: a || acknowledged,
                        },
                        _ => Delivered::Taken { acknowledged },
                    };
                }
                // Same policy as a NATS slow consumer: dropped, not queued without bound.
                None => tracing::warn!(
                    subject = &**subject,
                    "in-process subscription full or closed; message dropped"
                ),
            }
        }
        delivered
    }

    pub fn subscribe(&self, subject: &str, queue: Option<String>) -> InProcSubscription {
        self.subscribe_as(subject, queue, Receipt::Silent)
    }

    /// Subscribe as one that does or does not acknowledge what it takes (see [`Receipt`]).
    pub fn subscribe_as(
        &self,
        subject: &str,
        queue: Option<String>,
        receipt: Receipt,
    ) -> InProcSubscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        self.add_subscription(subject, queue, Sink::Channel(tx, receipt), Some(rx))
    }

    /// Subscribe with `handler` called by each publisher (see [`MessageHandler`]); the
    /// subscription's `next` returns `None`.
    pub fn subscribe_with_handler(
        &self,
        subject: &str,
        queue: Option<String>,
        handler: MessageHandler,
    ) -> InProcSubscription {
        self.subscribe_with_handler_as(subject, queue, handler, Receipt::Silent)
    }

    /// Subscribe with `handler` as one that does or does not acknowledge what it takes.
    pub fn subscribe_with_handler_as(
        &self,
        subject: &str,
        queue: Option<String>,
        handler: MessageHandler,
        receipt: Receipt,
    ) -> InProcSubscription {
        self.add_subscription(subject, queue, Sink::Handler(handler, receipt), None)
    }

    fn add_subscription(
        &self,
        subject: &str,
        queue: Option<String>,
        sink: Sink,
        rx: Option<mpsc::Receiver<BusMessage>>,
    ) -> InProcSubscription {
        let mut registry = self.inner.registry.write().expect("registry lock poisoned");
        registry.next_id += 1;
        registry.routes.clear();
        let id = registry.next_id;
        registry.subs.insert(
            id,
            Entry {
                pattern: subject.split('.').map(str::to_owned).collect(),
                queue,
                sink,
            },
        );
        InProcSubscription {
            id,
            bus: Arc::downgrade(&self.inner),
            rx,
        }
    }

    /// Number of live subscriptions, for tests of unsubscribe and drain.
    pub fn subscription_count(&self) -> usize {
        self.inner
            .registry
            .read()
            .expect("registry lock poisoned")
            .subs
            .len()
    }
}

/// Hand a message to one subscription: `Some(acknowledged)` when it took it.
fn deliver(sink: &Sink, subject: &Subject, payload: &Bytes, to_one: bool) -> Option<bool> {
    let (Sink::Channel(_, receipt) | Sink::Handler(_, receipt)) = sink;
    let acknowledged = to_one && *receipt == Receipt::Acknowledged;
    let msg = BusMessage {
        subject: subject.clone(),
        payload: payload.clone(),
        acknowledged,
    };
    match sink {
        Sink::Channel(tx, _) => tx.try_send(msg).ok().map(|()| acknowledged),
        Sink::Handler(handler, _) => {
            handler(msg);
            Some(acknowledged)
        }
    }
}

/// Split and searched by bytes (three publishes a call): `str::split` and `contains` with
/// chars went through char searchers, ~900 instructions a publish.
fn is_valid_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.as_bytes().split(|&b| b == b'.').all(|t| {
            !t.is_empty()
                && t != b"*"
                && t != b">"
                && !t.iter().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        })
}

fn matches(pattern: &[String], tokens: &[&str]) -> bool {
    for (i, p) in pattern.iter().enumerate() {
        match p.as_str() {
            ">" => return tokens.len() > i,
            "*" => {
                if i >= tokens.len() {
                    return false;
                }
            }
            literal => {
                if tokens.get(i) != Some(&literal) {
                    return false;
                }
            }
        }
    }
    pattern.len() == tokens.len()
}

/// A subscription on the in-process bus; dropping it unsubscribes.
pub struct InProcSubscription {
    id: u64,
    bus: std::sync::Weak<Inner>,
    /// `None` for a handler's subscription.
    rx: Option<mpsc::Receiver<BusMessage>>,
}

impl InProcSubscription {
    pub async fn next(&mut self) -> Option<BusMessage> {
        self.rx.as_mut()?.recv().await
    }

    /// Remove the subscription; buffered messages are still returned, then `None`.
    pub fn drain(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            let mut registry = bus.registry.write().expect("registry lock poisoned");
            if registry.subs.remove(&self.id).is_some() {
                registry.routes.clear();
            }
        }
    }
}

impl Drop for InProcSubscription {
    fn drop(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Vec<String> {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn wildcard_matching() {
        let t = |s: &'static str| s.split('.').collect::<Vec<_>>();
        assert!(matches(&pat("a.*.c"), &t("a.b.c")));
        assert!(!matches(&pat("a.*.c"), &t("a.b.d")));
        assert!(!matches(&pat("a.*"), &t("a.b.c")));
        assert!(matches(&pat("a.>"), &t("a.b.c")));
        assert!(!matches(&pat("a.>"), &t("a")));
        assert!(matches(&pat("a.b"), &t("a.b")));
        assert!(!matches(&pat("a.b.c"), &t("a.b")));
    }

    #[test]
    fn publish_subjects_are_whole_tokens_without_wildcards_or_spaces() {
        for good in [
            "a",
            "a.b",
            "microbus.443.example.hello.|.GET.hello",
            "a.b*.c",
            "a.>b",
            "é.x",
        ] {
            assert!(is_valid_publish_subject(good), "{good}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "*", "a.*", "a.*.b", ">", "a.>", "a b", "a.b\tc", "a.b\r",
            "\na",
        ] {
            assert!(!is_valid_publish_subject(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn queue_groups_and_fanout() {
        let bus = InProcBus::new();
        let mut q1 = bus.subscribe("x.*", Some("g".into()));
        let mut q2 = bus.subscribe("x.*", Some("g".into()));
        let mut plain = bus.subscribe("x.>", None);
        for _ in 0..100 {
            bus.publish("x.y", Bytes::from_static(b"m")).unwrap();
        }
        let mut got = (0, 0, 0);
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), q1.next()).await
        {
            got.0 += 1;
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), q2.next()).await
        {
            got.1 += 1;
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), plain.next()).await
        {
            got.2 += 1;
        }
        assert_eq!(got.0 + got.1, 100);
        assert!(got.0 > 0 && got.1 > 0, "both queue members serve: {got:?}");
        assert_eq!(got.2, 100);
    }

    #[tokio::test]
    async fn remembered_routes_follow_subscriptions_as_they_come_and_go() {
        let bus = InProcBus::new();
        let mut first = bus.subscribe("r.*", None);
        bus.publish("r.x", Bytes::from_static(b"1")).unwrap();
        // A route is remembered for r.x now; a new subscriber must still be reached.
        let mut second = bus.subscribe("r.x", Some("q".into()));
        bus.publish("r.x", Bytes::from_static(b"2")).unwrap();
        assert_eq!(first.next().await.unwrap().payload, "1");
        assert_eq!(first.next().await.unwrap().payload, "2");
        assert_eq!(second.next().await.unwrap().payload, "2");
        // And one that left is not: its channel closes once drained.
        first.drain();
        bus.publish("r.x", Bytes::from_static(b"3")).unwrap();
        assert!(first.next().await.is_none());
        assert_eq!(second.next().await.unwrap().payload, "3");
        // Past the cap the memory starts over, and delivery goes on.
        for i in 0..ROUTE_CACHE_MAX + 10 {
            bus.publish(format!("other.{i}"), Bytes::new()).unwrap();
        }
        assert!(bus.inner.registry.read().unwrap().routes.len() <= ROUTE_CACHE_MAX);
        bus.publish("r.x", Bytes::from_static(b"4")).unwrap();
        assert_eq!(second.next().await.unwrap().payload, "4");
    }

    #[tokio::test]
    async fn drain_keeps_buffered_messages_and_rejects_bad_publishes() {
        let bus = InProcBus::with_max_payload(8);
        let mut s = bus.subscribe("a", None);
        bus.publish("a", Bytes::from_static(b"1")).unwrap();
        s.drain();
        bus.publish("a", Bytes::from_static(b"2")).unwrap();
        assert_eq!(s.next().await.unwrap().payload, "1");
        assert!(s.next().await.is_none());
        assert_eq!(bus.subscription_count(), 0);
        assert!(bus.publish("a", Bytes::from_static(b"123456789")).is_err());
        assert!(bus.publish("a.*", Bytes::new()).is_err());
        assert!(bus.publish("a..b", Bytes::new()).is_err());
    }

    #[tokio::test]
    async fn a_message_for_one_endpoint_is_acknowledged_by_its_delivery() {
        let bus = InProcBus::new();
        let mut endpoint = bus.subscribe_as("e.x", Some("e".into()), Receipt::Acknowledged);
        let mut raw = bus.subscribe("r.x", Some("r".into()));
        let m = || Bytes::from_static(b"m");
        assert_eq!(
            bus.publish_to_one("e.x", m()).unwrap(),
            Carried::Acknowledged
        );
        assert!(endpoint.next().await.unwrap().acknowledged);
        // A multicast is not: each responder acks for the caller to count.
        bus.publish("e.x", m()).unwrap();
        assert!(!endpoint.next().await.unwrap().acknowledged);
        // Nor is what a subscriber that is not an endpoint takes.
        assert_eq!(bus.publish_to_one("r.x", m()).unwrap(), Carried::InMemory);
        assert!(!raw.next().await.unwrap().acknowledged);
        // Nothing subscribed: taken without a word, as by NATS (the caller's ack timeout
        // tells); left to NATS by a short circuit.
        assert_eq!(bus.publish_to_one("n.x", m()).unwrap(), Carried::InMemory);
        let nowhere = Subject::from("n.x");
        assert!(bus.deliver_if_subscribed(&nowhere, &m()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_message_for_one_whose_subscriber_is_full_is_refused_at_once() {
        let bus = InProcBus::new();
        let _full = bus.subscribe_as("f.x", Some("f".into()), Receipt::Acknowledged);
        for _ in 0..SUBSCRIPTION_CAPACITY {
            bus.publish_to_one("f.x", Bytes::new()).unwrap();
        }
        let err = bus.publish_to_one("f.x", Bytes::new()).unwrap_err();
        assert_eq!(err.kind(), TransportErrorKind::Rejected);
        assert!(err.to_string().contains("full"), "{err}");
        // A multicast is dropped as by a NATS slow consumer, without an error.
        bus.publish("f.x", Bytes::new()).unwrap();
        // A member of the group with room takes what the full one cannot.
        let mut sibling = bus.subscribe_as("f.x", Some("f".into()), Receipt::Acknowledged);
        for _ in 0..100 {
            assert_eq!(
                bus.publish_to_one("f.x", Bytes::from_static(b"s")).unwrap(),
                Carried::Acknowledged
            );
        }
        for _ in 0..100 {
            assert_eq!(sibling.next().await.unwrap().payload, "s");
        }
    }

    #[tokio::test]
    async fn an_endpoint_beside_a_plain_subscriber_still_counts_as_acknowledged() {
        let bus = InProcBus::new();
        let mut spy = bus.subscribe("p.>", None);
        let mut endpoint = bus.subscribe_as("p.x", Some("e".into()), Receipt::Acknowledged);
        let carried = bus.publish_to_one("p.x", Bytes::from_static(b"m")).unwrap();
        assert_eq!(carried, Carried::Acknowledged);
        assert!(endpoint.next().await.unwrap().acknowledged);
        assert!(!spy.next().await.unwrap().acknowledged);
    }
}
