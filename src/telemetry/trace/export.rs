//! Where a service's finished spans go for export: a batching thread that encodes and posts
//! them over OTLP/HTTP ([`SpanBatcher`]), or, for gRPC, the SDK's batch processor and
//! `opentelemetry-otlp`'s exporter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanProcessor};

use super::otlp::encode_request;
use super::sender::OtlpHttpSender;
use super::span::Waiting;
use crate::telemetry::error::{TelemetryError, TelemetryErrorKind::*};

/// Spans waiting for the exporting thread; past this, new spans are dropped (and counted)
/// rather than let an unreachable collector grow memory without bound. Four batches: room for
/// one slow export at full load.
pub const EXPORT_QUEUE_SPANS: usize = 4 * EXPORT_BATCH_SPANS;
/// Spans per request to the collector: large enough to amortise a request, small enough to
/// stay far below collectors' default 4 MiB body limit (~0.5 KB per span).
pub const EXPORT_BATCH_SPANS: usize = 512;
/// How long shutdown waits for the queue to reach the collector. A healthy collector takes
/// milliseconds; a stalled one would otherwise hold every service's shutdown for several export
/// timeouts (the SDK's batch processor bounds its shutdown the same way).
pub const EXPORT_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Control messages that can wait: two `Export`s can be pending (one from a full batch before
/// the thread resets the count, one after), and a `Shutdown` must never block behind them.
const CONTROL_CAPACITY: usize = 4;

/// The export of one service's spans.
#[derive(Debug)]
pub enum Export {
    /// OTLP/HTTP: encoded by busgate (packed spans are never unpacked).
    Http(SpanBatcher),
    /// OTLP/gRPC: through the SDK's batch processor.
    Sdk(BatchSpanProcessor),
}

impl Export {
    pub fn on_end(&self, span: Waiting, scope: &InstrumentationScope) {
        match self {
            Export::Http(b) => b.push(span),
            Export::Sdk(p) => p.on_end(span.into_data(scope)),
        }
    }

    /// Export everything queued and stop. Blocks: call it off the async runtime.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        match self {
            Export::Http(b) => b.shutdown(),
            Export::Sdk(p) => p
                .shutdown()
                .map_err(|e| TelemetryError::caused_by(Shutdown, "span export shutdown", e)),
        }
    }
}

/// What wakes the exporting thread (spans themselves do not: a wake-up per span would cost
/// a context switch per span).
enum Control {
    /// A batch's worth of spans is waiting.
    Export,
    /// Export what is queued, stop, and say so.
    Shutdown(SyncSender<()>),
}

/// Batches spans on a thread of its own and posts them to the collector: every
/// `interval`, or as soon as [`EXPORT_BATCH_SPANS`] are waiting.
#[derive(Debug)]
pub struct SpanBatcher {
    spans: SyncSender<Waiting>,
    control: SyncSender<Control>,
    /// Spans queued since the thread last drained the queue.
    queued: Arc<AtomicUsize>,
    worker: Mutex<Option<JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
}

/// What the exporting thread needs.
struct Worker {
    sender: OtlpHttpSender,
    resource: Vec<u8>,
    resource_schema_url: String,
    scope: InstrumentationScope,
    interval: Duration,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    /// Drops already logged.
    reported: u64,
    /// Whether the last export failed (failures are logged when they start and end).
    failing: bool,
}

impl SpanBatcher {
    pub fn new(
        sender: OtlpHttpSender,
        resource: Vec<u8>,
        resource_schema_url: String,
        scope: InstrumentationScope,
        interval: Duration,
    ) -> Result<SpanBatcher, TelemetryError> {
        let (spans, span_rx) = mpsc::sync_channel(EXPORT_QUEUE_SPANS);
        let (control, control_rx) = mpsc::sync_channel(CONTROL_CAPACITY);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            sender,
            resource,
            resource_schema_url,
            scope,
            interval,
            queued: queued.clone(),
            dropped: dropped.clone(),
            reported: 0,
            failing: false,
        };
        let handle = std::thread::Builder::new()
            .name("busgate-otlp".into())
            .spawn(move || worker.run(span_rx, control_rx))
            .map_err(|e| {
                TelemetryError::caused_by(Setup, "cannot start the span export thread", e)
            })?;
        Ok(SpanBatcher {
            spans,
            control,
            queued,
            worker: Mutex::new(Some(handle)),
            dropped,
        })
    }

    pub fn push(&self, span: Waiting) {
        if self.spans.try_send(span).is_err() {
            // Full (the collector is not keeping up) or stopped: drop, count, report.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Wake the thread once per batch: the push that completes it sends the signal.
        if self.queued.fetch_add(1, Ordering::AcqRel) + 1 == EXPORT_BATCH_SPANS {
            let _ = self.control.try_send(Control::Export);
        }
    }

    /// Spans dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        let Some(handle) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let (done, wait) = mpsc::sync_channel(1);
        self.control
            .send(Control::Shutdown(done))
            .map_err(|_| TelemetryError::new(Shutdown, "the span export thread is gone"))?;
        match wait.recv_timeout(EXPORT_SHUTDOWN_WAIT) {
            Ok(()) => handle
                .join()
                .map_err(|_| TelemetryError::new(Shutdown, "the span export thread panicked")),
            // Left to finish (or time out) on its own; the process may exit before it does.
            Err(RecvTimeoutError::Timeout) => Err(TelemetryError::new(
                Shutdown,
                format!(
                    "spans still queued after {EXPORT_SHUTDOWN_WAIT:?}: the collector is not answering"
                ),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(TelemetryError::new(
                Shutdown,
                "the span export thread stopped before flushing",
            )),
        }
    }
}

impl Worker {
    fn run(mut self, spans: Receiver<Waiting>, control: Receiver<Control>) {
        let mut batch: Vec<Waiting> = Vec::with_capacity(EXPORT_BATCH_SPANS);
        let mut next = Instant::now() + self.interval;
        loop {
            let woken = control.recv_timeout(next.saturating_duration_since(Instant::now()));
            if matches!(woken, Err(RecvTimeoutError::Timeout)) {
                next = Instant::now() + self.interval;
            }
            self.drain(&spans, &mut batch, EXPORT_QUEUE_SPANS + EXPORT_BATCH_SPANS);
            match woken {
                Ok(Control::Export) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Control::Shutdown(done)) => {
                    // Serving has stopped: what is queued now is all there is.
                    self.drain(&spans, &mut batch, usize::MAX);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Export what is queued, a batch at a time, at most `limit` spans (a wake-up takes a full
    /// queue's worth, so that a steady stream cannot keep the thread from its control messages).
    fn drain(&mut self, spans: &Receiver<Waiting>, batch: &mut Vec<Waiting>, limit: usize) {
        // Taken before draining: spans queued meanwhile count towards the next signal.
        self.queued.store(0, Ordering::Release);
        for span in spans.try_iter().take(limit) {
            batch.push(span);
            if batch.len() >= EXPORT_BATCH_SPANS {
                self.export(batch);
            }
        }
        self.export(batch);
    }

    fn export(&mut self, batch: &mut Vec<Waiting>) {
        let total = self.dropped.load(Ordering::Relaxed);
        if total > self.reported {
            tracing::warn!(
                dropped = total - self.reported,
                "Span export queue full: spans dropped (the collector is not keeping up)"
            );
            self.reported = total;
        }
        if batch.is_empty() {
            return;
        }
        let body = encode_request(
            &self.resource,
            &self.resource_schema_url,
            &self.scope,
            batch,
        );
        let spans = batch.len();
        batch.clear();
        match self.sender.send(body) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("Span export recovered");
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, spans, "Span export failed; the batch is dropped");
            }
            Err(error) => tracing::debug!(%error, spans, "Span export failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::packed::PackedSpan;
    use opentelemetry::trace::{SpanContext, SpanKind};
    use std::time::SystemTime;

    fn span() -> Waiting {
        Waiting::Packed(PackedSpan::new(
            &SpanContext::NONE,
            SpanKind::Server,
            ":443/x",
            SystemTime::now(),
        ))
    }

    /// A sender to a collector that accepts connections and never answers.
    fn silent_collector(timeout: Duration) -> OtlpHttpSender {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().collect();
            drop(held);
        });
        OtlpHttpSender::new(
            &format!("http://{addr}/v1/traces"),
            Vec::new(),
            None,
            timeout,
        )
        .unwrap()
    }

    /// A collector that never answers within shutdown's wait: shutdown gives up after
    /// [`EXPORT_SHUTDOWN_WAIT`] and says why, rather than holding the service's stop for as long
    /// as the exports take.
    #[test]
    fn shutdown_gives_up_on_a_collector_that_does_not_answer() {
        let sender = silent_collector(EXPORT_SHUTDOWN_WAIT * 6);
        let batcher = SpanBatcher::new(
            sender,
            Vec::new(),
            String::new(),
            InstrumentationScope::builder("busgate").build(),
            Duration::from_secs(3600),
        )
        .unwrap();
        batcher.push(span());
        let err = batcher.shutdown().unwrap_err();
        assert_eq!(
            err.kind(),
            crate::telemetry::error::TelemetryErrorKind::Shutdown
        );
        assert!(err.to_string().contains("not answering"), "{err}");
    }

    /// A collector that accepts connections and never answers: the queue fills, newer spans
    /// are dropped and counted, and shutdown still returns once the exports time out.
    #[test]
    fn a_stalled_collector_costs_spans_not_memory_or_shutdown() {
        let sender = silent_collector(Duration::from_millis(300));
        let batcher = SpanBatcher::new(
            sender,
            Vec::new(),
            String::new(),
            InstrumentationScope::builder("busgate").build(),
            Duration::from_millis(50),
        )
        .unwrap();
        let pushed = EXPORT_QUEUE_SPANS + 2 * EXPORT_BATCH_SPANS + 100;
        for _ in 0..pushed {
            batcher.push(span());
        }
        // At most the queue and the batch being exported are held.
        let dropped = batcher.dropped() as usize;
        assert!(
            dropped >= pushed - EXPORT_QUEUE_SPANS - EXPORT_BATCH_SPANS,
            "{dropped}"
        );
        assert!(dropped < pushed, "{dropped}");
        // Returns once the queued exports have timed out.
        batcher.shutdown().unwrap();
        // A second shutdown is a no-op; spans after it are dropped, not queued forever.
        batcher.shutdown().unwrap();
        batcher.push(span());
        assert_eq!(batcher.dropped() as usize, dropped + 1);
    }
}
