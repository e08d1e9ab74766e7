//! What both transports hand the connector: messages, the connection's state and errors.

use bytes::Bytes;

use crate::error::KindError;

/// A message as the transport delivers it. The subject is the client's own shared bytes: made
/// into a `String` it was formatted and copied for every message (~230 instructions each,
/// three messages a call in one process).
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: async_nats::Subject,
    pub payload: Bytes,
    /// Handed in memory to one subscriber that acknowledges what it takes: its publisher
    /// knows it arrived ([`Carried::Acknowledged`]), and a request needs no ack.
    pub acknowledged: bool,
}

/// A function a subscription's messages are handed to as they arrive, on the transport's own
/// task (NATS: the connection's; in-process: the publisher's), instead of through a channel to
/// a task of their own. It must not block or wait: on NATS it holds up every other message of
/// the connection.
pub type MessageHandler = std::sync::Arc<dyn Fn(BusMessage) + Send + Sync>;

/// Whether the transport can currently move messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connected,
    Disconnected,
    Closed,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Closed => "closed",
        }
    }
}

/// What went wrong in a transport operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// Could not connect (bad URL, refused, authentication, TLS).
    Connect,
    /// The connection is down or closed; nothing was sent.
    Disconnected,
    /// The payload is larger than the server accepts.
    PayloadTooLarge,
    /// The server or client refused the subscription or publish.
    Rejected,
}

/// A transport error: its kind (what callers match on), what was being done, and the error
/// of the client underneath when there is one.
pub type TransportError = KindError<TransportErrorKind>;

/// How a message meant for one subscriber went: a caller that waits for NATS to take what
/// it sent (a flush) has nothing to wait for when it was delivered in memory, nor for an ack
/// when the subscriber that took it acknowledges on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    ByNats,
    /// Delivered in memory, or, on the in-process bus, to nothing.
    InMemory,
    /// Taken in memory by a subscription that acknowledges what it takes (an endpoint's:
    /// [`crate::transport::Bus::subscribe_endpoint`]), which then sends no ack.
    Acknowledged,
}
