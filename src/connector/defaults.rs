//! The connector's fixed values, each with its reason: the protocol's timings and limits, and
//! the ports Microbus reserves.

use std::time::Duration;

/// A unicast that is not acknowledged within this time has no responder: 404 `ack timeout`.
/// Also the multicast ack window. Microbus's value, part of the protocol.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(250);

/// One network hop: a handler's deadline is the caller's budget less this, and a call with
/// less than this left fails at once with 408.
pub const NETWORK_HOP: Duration = Duration::from_millis(250);

/// Deepest call chain allowed before 508 `call depth overflow` (Microbus's `maxCallDepth`).
pub const MAX_CALL_DEPTH: u32 = 64;

/// How long a call whose context has no deadline waits here for its response. Microbus waits
/// forever once acked; a gateway must not hold a request for a crashed responder without
/// bound. This cap is local only: such a call sends no `Microbus-Time-Budget` (as Go does), so
/// the handler, Go or Rust, runs without a deadline of ours.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_secs(20);

/// How long a call waits for the connection to take a large body's first fragment before its
/// ack timeout starts anyway. Fifty concurrent 20 MB uploads on two busy cores queued one for
/// over 250 ms; a second is ample for that, and short beside a call's budget.
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(1);

/// Bytes of each NATS payload kept free for the HTTP head of a fragment (Microbus: 64 KiB).
pub const FRAGMENT_HEADROOM: usize = 64 * 1024;

/// How long shutdown waits for in-flight handlers before cancelling them (Microbus: 8 s).
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(8);

/// How long shutdown waits after cancelling before it gives up on stragglers (Microbus: 4 s).
pub const CANCEL_PATIENCE: Duration = Duration::from_secs(4);

/// How long a multicast's set of responders is remembered (Go: 24 h).
pub const KNOWN_RESPONDERS_TTL: Duration = Duration::from_secs(24 * 3600);

/// Subjects whose responders are remembered at most (Go bounds its cache at 16 KB).
pub const KNOWN_RESPONDERS_MAX: usize = 1024;

/// Port of events (reference §1.7).
pub const EVENT_PORT: u16 = 417;
/// Port of the control plane (reference §3).
pub const CONTROL_PORT: u16 = 888;

/// Slots of the table in which calls wait for their replies (see `inbox::PendingCalls`): a
/// power of two; 32 bytes each, 512 KiB of zeroed memory per instance, of which only the pages
/// of slots used are touched (idle RSS unchanged). A call takes the slot its random message id hashes to,
/// drawing again while that slot is taken; at 10,000 calls in flight (10,000 held gateway
/// connections) 61% of the slots are taken and one call in ~2,500 draws `PENDING_DRAWS` times
/// in vain and waits in the locked overflow map instead.
pub const PENDING_SLOTS: usize = 1 << 14;

/// Message ids a call draws for a free slot before it waits in the overflow map.
pub const PENDING_DRAWS: usize = 16;
