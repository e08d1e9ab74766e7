//! Transports: plain publish/subscribe with queue groups, over NATS or inside the process.
//!
//! The connector sees only [`Bus`] and [`Subscription`]; both transports give the same
//! semantics (subject wildcards `*` and `>`, queue groups that deliver to one member, plain
//! subscriptions that all get a copy, echo of own publishes, drain on unsubscribe).

pub mod inproc;
pub mod message;
pub mod nats;

use bytes::Bytes;
use tokio::sync::watch;

/// A subject ready to publish to: shared bytes, so a subject used again (a caller's inbox, for
/// each request's ack and response) is handed to the client without a copy.
pub use async_nats::Subject;
pub use inproc::{InProcBus, Receipt};
pub use message::{
    BusMessage, Carried, ConnectionState, MessageHandler, TransportError, TransportErrorKind,
};
pub use nats::{NatsBus, NatsOptions, Refused};

/// Which bus to connect to: each connector opens its own connection (named `<id>.<host>`).
#[derive(Clone, Debug)]
pub enum Transport {
    Nats(Box<NatsOptions>),
    InProc(InProcBus),
}

impl Transport {
    /// Connect one client of this transport.
    pub async fn connect(&self, name: &str) -> Result<Bus, TransportError> {
        match self {
            Transport::Nats(opts) => Ok(Bus::Nats(NatsBus::connect(opts, name).await?)),
            Transport::InProc(bus) => Ok(Bus::InProc(bus.clone())),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Transport::Nats(opts) => format!("NATS at {}", opts.url),
            Transport::InProc(_) => "the in-process bus".to_owned(),
        }
    }
}

/// One connected client of a transport.
#[derive(Clone, Debug)]
pub enum Bus {
    Nats(NatsBus),
    InProc(InProcBus),
}

impl Bus {
    /// Publish to every subscriber (one member of each queue group): a multicast.
    pub async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), TransportError> {
        match self {
            Bus::Nats(b) => b.publish(subject, payload).await,
            Bus::InProc(b) => b.publish(subject, payload),
        }
    }

    /// Publish a request, ack or response, meant for one subscriber: on NATS through the short
    /// circuit when it reaches one (see [`NatsOptions::short_circuit`]).
    pub async fn publish_to_one(
        &self,
        subject: Subject,
        payload: Bytes,
    ) -> Result<Carried, TransportError> {
        match self {
            Bus::Nats(b) => b.publish_to_one(subject, payload).await,
            Bus::InProc(b) => b.publish_to_one(subject, payload),
        }
    }

    /// Subscribe to `subject`; with a queue, each message goes to one member of the group.
    /// On NATS with the short circuit, a message meant for one subscriber that this
    /// subscription matches is delivered to it in memory and not through NATS, as in Go
    /// fabric: so a wildcard subscription takes such messages from subscribers elsewhere.
    pub async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, TransportError> {
        match self {
            Bus::Nats(b) => {
                // On the short circuit too, under the same subject and queue.
                let local = b
                    .short_circuit()
                    .map(|l| l.subscribe(&subject, queue.clone()));
                let nats = b.subscribe(subject, queue).await?;
                Ok(match local {
                    None => Subscription::Nats(nats),
                    Some(local) => Subscription::Paired {
                        nats: Some(nats),
                        local: Some(local),
                    },
                })
            }
            Bus::InProc(b) => Ok(Subscription::InProc(b.subscribe(&subject, queue))),
        }
    }

    /// Subscribe an endpoint, whose subscriber acknowledges every request it reads: NATS's
    /// messages come through [`EndpointSubscription::next`]; those of the short circuit (or of
    /// the in-process bus) are handed to `local` by their publisher, in its task, which spares
    /// each a channel and a wake-up of the endpoint's task, and keeps the call on its worker.
    /// One meant for this endpoint alone counts as acknowledged there and then
    /// ([`Carried::Acknowledged`], [`BusMessage::acknowledged`]), which spares the call an ack.
    pub async fn subscribe_endpoint(
        &self,
        subject: String,
        queue: Option<String>,
        local: MessageHandler,
    ) -> Result<EndpointSubscription, TransportError> {
        let (remote, local) = match self {
            Bus::Nats(b) => {
                let local = b.short_circuit().map(|l| {
                    l.subscribe_with_handler_as(
                        &subject,
                        queue.clone(),
                        local,
                        Receipt::Acknowledged,
                    )
                });
                (
                    Some(Subscription::Nats(b.subscribe(subject, queue).await?)),
                    local,
                )
            }
            Bus::InProc(b) => (
                None,
                Some(b.subscribe_with_handler_as(&subject, queue, local, Receipt::Acknowledged)),
            ),
        };
        Ok(EndpointSubscription {
            remote,
            local,
            drained: false,
        })
    }

    /// Subscribe `subject` with each message handed to `handler` (see [`MessageHandler`]).
    pub async fn subscribe_with_handler(
        &self,
        subject: String,
        queue: Option<String>,
        handler: MessageHandler,
    ) -> Result<HandlerSubscription, TransportError> {
        match self {
            Bus::Nats(b) => {
                let local = b
                    .short_circuit()
                    .map(|l| l.subscribe_with_handler(&subject, queue.clone(), handler.clone()));
                let nats = b.subscribe_with_handler(subject, queue, handler).await?;
                Ok(HandlerSubscription::Nats(nats, local))
            }
            Bus::InProc(b) => Ok(HandlerSubscription::InProc(
                b.subscribe_with_handler(&subject, queue, handler),
            )),
        }
    }

    /// Write everything queued to the server's socket (not a round trip: see [`Bus::round_trip`]).
    pub async fn flush(&self) -> Result<(), TransportError> {
        match self {
            Bus::Nats(b) => b.flush().await,
            Bus::InProc(_) => Ok(()),
        }
    }

    /// Wait until the server has processed everything sent so far (subscriptions included),
    /// with a message on `probe` that this client may publish and subscribe to.
    pub async fn round_trip(&self, probe: String) -> Result<(), TransportError> {
        match self {
            Bus::Nats(b) => b.round_trip(probe).await,
            Bus::InProc(_) => Ok(()),
        }
    }

    /// The subject the server refused lately for `op` (`subject` given: only that one), or
    /// `None`; always `None` on the in-process bus, which has no permissions.
    pub fn refused(&self, op: Refused, subject: Option<&str>) -> Option<String> {
        match self {
            Bus::Nats(b) => b.refused(op, subject),
            Bus::InProc(_) => None,
        }
    }

    /// The largest payload the server accepts.
    pub fn max_payload(&self) -> usize {
        match self {
            Bus::Nats(b) => b.max_payload(),
            Bus::InProc(b) => b.max_payload(),
        }
    }

    pub fn state(&self) -> ConnectionState {
        *self.watch_state().borrow()
    }

    /// Follow the connection state as it changes.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        match self {
            Bus::Nats(b) => b.watch_state(),
            Bus::InProc(b) => b.watch_state(),
        }
    }

    /// NATS's connection counters, or `None` on the in-process bus (which has no connection).
    pub fn nats_connection(&self) -> Option<(bool, u64)> {
        match self {
            Bus::Nats(b) => Some((self.state() == ConnectionState::Connected, b.reconnects())),
            Bus::InProc(_) => None,
        }
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        match self {
            Bus::Nats(b) => b.reconnects(),
            Bus::InProc(_) => 0,
        }
    }

    /// Flush and close this client.
    pub async fn close(&self) {
        match self {
            Bus::Nats(b) => b.close().await,
            Bus::InProc(_) => {}
        }
    }
}

/// A stream of messages for one subscription.
pub enum Subscription {
    Nats(async_nats::Subscriber),
    InProc(inproc::InProcSubscription),
    /// On NATS and on its short circuit; each side is `None` once it has ended.
    Paired {
        nats: Option<async_nats::Subscriber>,
        local: Option<inproc::InProcSubscription>,
    },
}

async fn next_from_nats(s: &mut async_nats::Subscriber) -> Option<BusMessage> {
    use futures::StreamExt;
    s.next().await.map(|m| BusMessage {
        subject: m.subject,
        payload: m.payload,
        acknowledged: false,
    })
}

impl Subscription {
    /// The next message; `None` once the subscription is drained or closed.
    pub async fn next(&mut self) -> Option<BusMessage> {
        match self {
            Subscription::Nats(s) => next_from_nats(s).await,
            Subscription::InProc(s) => s.next().await,
            Subscription::Paired { nats, local } => loop {
                let (from_nats, from_local) = match (nats.as_mut(), local.as_mut()) {
                    (None, None) => return None,
                    (Some(n), None) => return next_from_nats(n).await,
                    (None, Some(l)) => return l.next().await,
                    (Some(n), Some(l)) => tokio::select! {
                        m = l.next() => (None, Some(m)),
                        m = next_from_nats(n) => (Some(m), None),
                    },
                };
                match (from_nats, from_local) {
                    (Some(None), _) => *nats = None,
                    (_, Some(None)) => *local = None,
                    (Some(Some(m)), _) | (_, Some(Some(m))) => return Some(m),
                    (None, None) => unreachable!("one side answered"),
                }
            },
        }
    }

    /// Stop new deliveries; messages already on their way are still returned by `next`.
    pub async fn drain(&mut self) {
        match self {
            Subscription::Nats(s) => {
                if let Err(e) = s.drain().await {
                    tracing::debug!(error = %e, "drain of a closed subscription");
                }
            }
            Subscription::InProc(s) => s.drain(),
            Subscription::Paired { nats, local } => {
                if let Some(s) = local {
                    s.drain();
                }
                if let Some(s) = nats {
                    if let Err(e) = s.drain().await {
                        tracing::debug!(error = %e, "drain of a closed subscription");
                    }
                }
            }
        }
    }
}

/// An endpoint's subscription (see [`Bus::subscribe_endpoint`]); dropping it unsubscribes.
pub struct EndpointSubscription {
    /// NATS's side: `None` on the in-process bus.
    remote: Option<Subscription>,
    /// The short circuit's side, whose messages go to the endpoint's handler.
    local: Option<inproc::InProcSubscription>,
    drained: bool,
}

impl EndpointSubscription {
    /// The next message from NATS; `None` once drained or closed. With no NATS side it
    /// waits until drained: the in-process messages go to the handler.
    pub async fn next(&mut self) -> Option<BusMessage> {
        match &mut self.remote {
            Some(remote) => remote.next().await,
            None if self.drained => None,
            None => std::future::pending().await,
        }
    }

    /// Stop new deliveries; NATS's messages already on their way are still returned by `next`.
    pub async fn drain(&mut self) {
        self.drained = true;
        if let Some(local) = &mut self.local {
            local.drain();
        }
        if let Some(remote) = &mut self.remote {
            remote.drain().await;
        }
    }
}

/// A subscription whose messages go to a [`MessageHandler`]; dropping it unsubscribes.
pub enum HandlerSubscription {
    /// On NATS, and on its short circuit when on.
    Nats(
        async_nats::HandlerSubscription,
        Option<inproc::InProcSubscription>,
    ),
    InProc(inproc::InProcSubscription),
}

impl HandlerSubscription {
    /// Stop new deliveries; messages already on their way still reach the handler.
    pub async fn drain(self) {
        match self {
            HandlerSubscription::Nats(s, local) => {
                if let Some(mut local) = local {
                    local.drain();
                }
                if let Err(e) = s.drain().await {
                    tracing::debug!(error = %e, "drain of a closed subscription");
                }
            }
            HandlerSubscription::InProc(mut s) => s.drain(),
        }
    }
}
