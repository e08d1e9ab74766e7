//! Where a service's finished spans go for export: a batching thread that encodes and posts
//! them over OTLP/HTTP ([`SpanBatcher`]), or, for gRPC, the SDK's batch processor and
//! `opentelemetry-otlp`'s exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanProcessor};

use super::otlp::{encode_request, OtlpHttpSender};
use super::tail::Waiting;

/// Spans waiting for the exporting thread; past this, new spans are dropped (and counted)
/// rather than let an unreachable collector grow memory without bound. Four batches: room for
/// one slow export at full load.
pub const EXPORT_QUEUE_SPANS: usize = 4 * EXPORT_BATCH_SPANS;
/// Spans per request to the collector: large enough to amortise a request, small enough to
/// stay far below collectors' default 4 MiB body limit (~0.5 KB per span).
pub const EXPORT_BATCH_SPANS: usize = 512;

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
    pub fn shutdown(&self) -> Result<(), String> {
        match self {
            Export::Http(b) => b.shutdown(),
            Export::Sdk(p) => p.shutdown().map_err(|e| e.to_string()),
        }
    }
}

enum Message {
    Span(Waiting),
    /// Export what is queued, stop, and say so.
    Shutdown(SyncSender<()>),
}

/// Batches spans on a thread of its own and posts them to the collector: every
/// `interval`, or as soon as [`EXPORT_BATCH_SPANS`] are waiting.
#[derive(Debug)]
pub struct SpanBatcher {
    queue: SyncSender<Message>,
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
    dropped: Arc<AtomicU64>,
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
    ) -> Result<SpanBatcher, String> {
        let (queue, rx) = mpsc::sync_channel(EXPORT_QUEUE_SPANS);
        let dropped = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            sender,
            resource,
            resource_schema_url,
            scope,
            interval,
            dropped: dropped.clone(),
            failing: false,
        };
        let handle = std::thread::Builder::new()
            .name("busgate-otlp".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("cannot start the span export thread: {e}"))?;
        Ok(SpanBatcher {
            queue,
            worker: Mutex::new(Some(handle)),
            dropped,
        })
    }

    pub fn push(&self, span: Waiting) {
        match self.queue.try_send(Message::Span(span)) {
            Ok(()) => {}
            // The collector is not keeping up (or export stopped): drop, count, report.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans dropped because the queue was full, so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) -> Result<(), String> {
        let Some(handle) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let (done, wait) = mpsc::sync_channel(1);
        // Blocks while the queue is full: shutdown waits its turn behind queued spans.
        self.queue
            .send(Message::Shutdown(done))
            .map_err(|_| "the span export thread is gone".to_owned())?;
        let _ = wait.recv();
        handle
            .join()
            .map_err(|_| "the span export thread panicked".to_owned())
    }
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut batch: Vec<Waiting> = Vec::with_capacity(EXPORT_BATCH_SPANS);
        let mut next = Instant::now() + self.interval;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Message::Span(span)) => {
                    batch.push(span);
                    if batch.len() >= EXPORT_BATCH_SPANS {
                        self.export(&mut batch);
                    }
                }
                Ok(Message::Shutdown(done)) => {
                    // Whatever else was queued before the request is already in `batch` or
                    // behind it in the channel; spans sent later are not waited for.
                    while let Ok(Message::Span(span)) = rx.try_recv() {
                        batch.push(span);
                        if batch.len() >= EXPORT_BATCH_SPANS {
                            self.export(&mut batch);
                        }
                    }
                    self.export(&mut batch);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch);
                    next = Instant::now() + self.interval;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&mut batch);
                    return;
                }
            }
        }
    }

    fn export(&mut self, batch: &mut Vec<Waiting>) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Span export queue full: spans dropped (the collector is not keeping up)"
            );
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
