//! The scope of a request's log lines: the service and instance handling it and its trace,
//! written before each line inside it (`bus{host=… id=… trace_id=…}:`, or the `span` object of
//! a JSON line) and counting the line in that service's `microbus_log_messages_total`.
//!
//! The scope is a task-local rather than a `tracing` span. A span cost ~6k instructions per
//! request on each side (a registry slot, its fields formatted into a `String` as it opened, an
//! extension per layer, the registry entered and left on every poll), paid whether a line was
//! written or not; the scope costs two thread-local swaps per poll and is written out only
//! with a line. Lines look exactly as they did with the span (`tests` below compare them).
//! A `RUST_LOG` directive that selects spans (`[bus{host=calc.example}]=debug`) needs a real
//! span to match, so with such a filter [`RequestLog`] opens one as before.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::Either;
use nu_ansi_term::{Color, Style};
use opentelemetry::trace::TraceId;
use serde::ser::{SerializeMap, Serializer as _};
use tokio::task::futures::TaskLocalFuture;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{FieldSet, Value};
use tracing::instrument::{Instrument, Instrumented};
use tracing::metadata::Kind;
use tracing::span::Attributes;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::metrics::ServiceMetrics;
use super::names::{INGRESS_LOG_SPAN, LOG_SPAN_FIELDS, SERVICE_LOG_SPAN};
use super::trace::propagation::trace_id_hex;

/// Whom a scope's lines belong to: made once per connector, shared by its requests.
pub struct LogOwner {
    pub host: String,
    pub id: String,
    pub metrics: Arc<ServiceMetrics>,
}

/// Which side of a request the lines come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// The HTTP ingress (`http{…}`).
    Ingress,
    /// A service handling a bus request (`bus{…}`).
    Service,
}

/// Set when `RUST_LOG` selects spans: every scope is then a real span.
static REAL_SPANS: AtomicBool = AtomicBool::new(false);

/// Whether a filter selects spans by name or field (`[span{field=value}]=level`).
pub fn filter_selects_spans(directives: &str) -> bool {
    directives.contains('[')
}

/// Open real spans instead of task-local scopes from now on (see the module's doc).
pub(super) fn use_real_spans(real: bool) {
    REAL_SPANS.store(real, Ordering::Relaxed);
}

/// A task's log scope (see the module's doc).
pub struct LogScope {
    kind: ScopeKind,
    owner: Arc<LogOwner>,
    trace_id: TraceId,
    /// The scope this one opened in, if any (written first, as a parent span was).
    outer: Option<Arc<LogScope>>,
}

tokio::task_local! {
    static CURRENT: Arc<LogScope>;
}

/// The log scope of one side of one request.
pub enum RequestLog {
    Scope(Arc<LogScope>),
    Span(tracing::Span),
}

impl RequestLog {
    pub fn open(kind: ScopeKind, owner: &Arc<LogOwner>, trace_id: TraceId) -> RequestLog {
        Self::open_as(kind, owner, trace_id, REAL_SPANS.load(Ordering::Relaxed))
    }

    fn open_as(
        kind: ScopeKind,
        owner: &Arc<LogOwner>,
        trace_id: TraceId,
        real_span: bool,
    ) -> RequestLog {
        if real_span {
            let hex = trace_id_hex(trace_id);
            let (host, id, trace_id) = (owner.host.as_str(), owner.id.as_str(), hex.as_str());
            // ERROR level so that the span exists whatever RUST_LOG keeps.
            return RequestLog::Span(match kind {
                ScopeKind::Ingress => tracing::error_span!(INGRESS_LOG_SPAN, host, id, trace_id),
                ScopeKind::Service => tracing::error_span!(SERVICE_LOG_SPAN, host, id, trace_id),
            });
        }
        RequestLog::Scope(Arc::new(LogScope {
            kind,
            owner: owner.clone(),
            trace_id,
            outer: CURRENT.try_with(Arc::clone).ok(),
        }))
    }

    /// `fut` with its lines in this scope.
    pub fn scope<F: Future>(
        &self,
        fut: F,
    ) -> Either<TaskLocalFuture<Arc<LogScope>, F>, Instrumented<F>> {
        match self {
            RequestLog::Scope(scope) => Either::Left(CURRENT.scope(scope.clone(), fut)),
            RequestLog::Span(span) => Either::Right(fut.instrument(span.clone())),
        }
    }

    /// `f` run with its lines in this scope.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            RequestLog::Scope(scope) => CURRENT.sync_scope(scope.clone(), f),
            RequestLog::Span(span) => span.in_scope(f),
        }
    }
}

/// The service of the innermost scope the caller runs in.
pub(super) fn current_owner() -> Option<Arc<ServiceMetrics>> {
    CURRENT.try_with(|s| s.owner.metrics.clone()).ok()
}

/// A scope's fields as span attributes, for the fmt layer's own field formatter: the
/// metadata of a span that is never opened, only formatted.
struct ScopeCallsite(ScopeKind);

impl Callsite for ScopeCallsite {
    fn set_interest(&self, _: Interest) {}
    fn metadata(&self) -> &Metadata<'_> {
        metadata(self.0)
    }
}

static INGRESS_CALLSITE: ScopeCallsite = ScopeCallsite(ScopeKind::Ingress);
static SERVICE_CALLSITE: ScopeCallsite = ScopeCallsite(ScopeKind::Service);

static INGRESS_METADATA: Metadata<'static> = scope_metadata(INGRESS_LOG_SPAN, &INGRESS_CALLSITE);
static SERVICE_METADATA: Metadata<'static> = scope_metadata(SERVICE_LOG_SPAN, &SERVICE_CALLSITE);

const fn scope_metadata(name: &'static str, callsite: &'static ScopeCallsite) -> Metadata<'static> {
    Metadata::new(
        name,
        module_path!(),
        Level::ERROR,
        Some(file!()),
        Some(line!()),
        Some(module_path!()),
        FieldSet::new(&LOG_SPAN_FIELDS, Identifier(callsite)),
        Kind::SPAN,
    )
}

fn metadata(kind: ScopeKind) -> &'static Metadata<'static> {
    match kind {
        ScopeKind::Ingress => &INGRESS_METADATA,
        ScopeKind::Service => &SERVICE_METADATA,
    }
}

impl LogScope {
    /// Root first: the order a span and its parents were written in.
    fn chain(self: &Arc<Self>) -> Vec<&LogScope> {
        let mut chain = vec![self.as_ref()];
        while let Some(outer) = &chain[chain.len() - 1].outer {
            chain.push(outer);
        }
        chain.reverse();
        chain
    }

    /// The scope's fields written by `fields`, as the fmt layer wrote a span's.
    fn write_fields<'w, N: FormatFields<'w>>(&self, fields: &N, writer: Writer<'w>) -> fmt::Result {
        let hex = trace_id_hex(self.trace_id);
        let meta = metadata(self.kind);
        let values: [Option<&dyn Value>; 3] = [
            Some(&self.owner.host.as_str()),
            Some(&self.owner.id.as_str()),
            Some(&hex.as_str()),
        ];
        let values = meta.fields().value_set_all(&values);
        fields.format_fields(writer, Attributes::new(meta, &values))
    }
}

/// The text format (`tracing-subscriber`'s full format) with the request's scope written as
/// the outermost span of a line inside one.
pub struct ScopedText<T> {
    inner: Format<Full, T>,
    /// `None`: no timestamps (tests compare lines).
    timer: Option<T>,
}

impl Default for ScopedText<SystemTime> {
    fn default() -> Self {
        ScopedText {
            inner: Format::default(),
            timer: Some(SystemTime),
        }
    }
}

impl ScopedText<()> {
    pub fn without_time() -> Self {
        ScopedText {
            inner: Format::default().without_time(),
            timer: None,
        }
    }
}

impl<T: FormatTime> ScopedText<T> {
    fn write_scoped<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
        scope: &Arc<LogScope>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let ansi = writer.has_ansi_escapes();
        let style = |s: Style| if ansi { s } else { Style::new() };
        let (bold, dimmed) = (style(Style::new().bold()), style(Style::new().dimmed()));
        if let Some(timer) = &self.timer {
            write!(writer, "{}", dimmed.prefix())?;
            if timer.format_time(&mut writer).is_err() {
                writer.write_str("<unknown time>")?;
            }
            write!(writer, "{} ", dimmed.suffix())?;
        }
        let (level, color) = match *meta.level() {
            Level::TRACE => ("TRACE", Color::Purple),
            Level::DEBUG => ("DEBUG", Color::Blue),
            Level::INFO => (" INFO", Color::Green),
            Level::WARN => (" WARN", Color::Yellow),
            Level::ERROR => ("ERROR", Color::Red),
        };
        write!(writer, "{} ", style(color.normal()).paint(level))?;
        for s in scope.chain() {
            write!(
                writer,
                "{}{}",
                bold.paint(metadata(s.kind).name()),
                bold.paint("{")
            )?;
            s.write_fields(ctx, writer.by_ref())?;
            write!(writer, "{}{}", bold.paint("}"), dimmed.paint(":"))?;
        }
        if let Some(spans) = ctx.event_scope() {
            for span in spans.from_root() {
                write!(writer, "{}", bold.paint(span.metadata().name()))?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{}{}{}", bold.paint("{"), fields, bold.paint("}"))?;
                    }
                }
                write!(writer, "{}", dimmed.paint(":"))?;
            }
        }
        writer.write_char(' ')?;
        write!(
            writer,
            "{}{} ",
            dimmed.paint(meta.target()),
            dimmed.paint(":")
        )?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

impl<S, N, T: FormatTime> FormatEvent<S, N> for ScopedText<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match CURRENT.try_with(Arc::clone) {
            Ok(scope) => self.write_scoped(ctx, writer, event, &scope),
            Err(_) => self.inner.format_event(ctx, writer, event),
        }
    }
}

/// The JSON format with the current span shown (`"span":{…,"name":…}`), the request's scope
/// shown as that span when no span of the handler's is current.
pub struct ScopedJson<T> {
    inner: Format<Json, T>,
}

impl Default for ScopedJson<SystemTime> {
    fn default() -> Self {
        ScopedJson {
            inner: Format::default()
                .json()
                .with_current_span(true)
                .with_span_list(false),
        }
    }
}

impl ScopedJson<()> {
    pub fn without_time() -> Self {
        ScopedJson {
            inner: ScopedJson::default().inner.without_time(),
        }
    }
}

impl<S, N, T: FormatTime> FormatEvent<S, N> for ScopedJson<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let scope = match CURRENT.try_with(Arc::clone) {
            Ok(scope) if ctx.lookup_current().is_none() => scope,
            _ => return self.inner.format_event(ctx, writer, event),
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one object and a newline; the span goes last, where the format puts it.
        let end = line.trim_end().strip_suffix('}').ok_or(fmt::Error)?;
        let mut fields = String::new();
        scope.write_fields(ctx, Writer::new(&mut fields))?;
        let span = json_span(&fields, metadata(scope.kind).name()).map_err(|_| fmt::Error)?;
        writer.write_str(end)?;
        writer.write_str(",\"span\":")?;
        writer.write_str(&span)?;
        writer.write_str("}\n")
    }
}

/// A span object as the JSON format writes it: its formatted fields, then its name.
fn json_span(fields: &str, name: &str) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let mut map = (&mut ser).serialize_map(None)?;
    if let serde_json::Value::Object(fields) = serde_json::from_str(fields)? {
        for (k, v) in fields {
            map.serialize_entry(&k, &v)?;
        }
    }
    map.serialize_entry("name", name)?;
    map.end()?;
    Ok(String::from_utf8(out).expect("JSON is UTF-8"))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::logs::tests::Captured;
    use crate::telemetry::logs::{LogCounter, TextFields};

    fn owner(host: &str, id: &str) -> Arc<LogOwner> {
        Arc::new(LogOwner {
            host: host.into(),
            id: id.into(),
            metrics: ServiceMetrics::new(host, 1, id),
        })
    }

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    fn trace_id() -> TraceId {
        TraceId::from_hex(TRACE).unwrap()
    }

    #[derive(Clone, Copy, Debug)]
    enum Format {
        Text { ansi: bool },
        Json,
    }

    /// What `emit` writes, through the layers as `logs::init` installs them for `format`:
    /// `scoped` with the scope formatters, or else with tracing-subscriber's own.
    fn lines(format: Format, scoped: bool, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let fmt = tracing_subscriber::fmt::layer().with_writer(out.clone());
        let registry = tracing_subscriber::registry().with(LogCounter);
        match (format, scoped) {
            (Format::Text { ansi }, true) => tracing::subscriber::with_default(
                registry.with(
                    fmt.with_ansi(ansi)
                        .fmt_fields(TextFields)
                        .event_format(ScopedText::without_time()),
                ),
                emit,
            ),
            (Format::Text { ansi }, false) => tracing::subscriber::with_default(
                registry.with(fmt.with_ansi(ansi).without_time().fmt_fields(TextFields)),
                emit,
            ),
            (Format::Json, true) => tracing::subscriber::with_default(
                registry.with(
                    fmt.with_ansi(false)
                        .fmt_fields(JsonFields::new())
                        .event_format(ScopedJson::without_time()),
                ),
                emit,
            ),
            (Format::Json, false) => tracing::subscriber::with_default(
                registry.with(
                    fmt.with_ansi(false)
                        .json()
                        .with_current_span(true)
                        .with_span_list(false)
                        .without_time(),
                ),
                emit,
            ),
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// Lines of every kind a request writes: plain, with fields, inside a handler's own spans,
    /// from the `log` crate, and after its scope ended.
    fn request_lines() {
        tracing::info!("inside");
        tracing::warn!(path = "/a b", n = 3, "with fields");
        let query = tracing::info_span!("query", table = "users");
        query.in_scope(|| {
            tracing::error!(error = "disk \"full\"", "in a handler's span");
            tracing::info_span!("empty").in_scope(|| tracing::debug!("two spans deep"));
        });
        tracing::trace!(target: "other::target", "another target");
        tracing_log::format_trace(
            &tracing_log::log::Record::builder()
                .args(format_args!("from log"))
                .target("a::log::target")
                .level(tracing_log::log::Level::Info)
                .build(),
        )
        .unwrap();
    }

    #[test]
    fn scoped_lines_are_the_lines_a_span_wrote() {
        let calc = owner("calc.example", "a1b2c3d4e5");
        let front = owner("front.example", "f0f1f2f3f4");
        for format in [
            Format::Text { ansi: false },
            Format::Text { ansi: true },
            Format::Json,
        ] {
            let ours = lines(format, true, || {
                tracing::info!("before any request");
                let log = RequestLog::open(ScopeKind::Service, &calc, trace_id());
                log.in_scope(request_lines);
                // A scope opened inside another is written after it, as a child span was.
                log.in_scope(|| {
                    RequestLog::open(ScopeKind::Ingress, &front, trace_id())
                        .in_scope(|| tracing::info!("nested"))
                });
                tracing::info!("after the request");
            });
            let theirs = lines(format, false, || {
                tracing::info!("before any request");
                let span = tracing::error_span!(
                    "bus",
                    host = "calc.example",
                    id = "a1b2c3d4e5",
                    trace_id = TRACE
                );
                span.in_scope(request_lines);
                span.in_scope(|| {
                    tracing::error_span!(
                        "http",
                        host = "front.example",
                        id = "f0f1f2f3f4",
                        trace_id = TRACE
                    )
                    .in_scope(|| tracing::info!("nested"))
                });
                tracing::info!("after the request");
            });
            assert_eq!(ours, theirs, "{format:?}");
            assert_eq!(ours.lines().count(), 9, "{format:?}: {ours}");
            match format {
                Format::Text { ansi: false } => {
                    assert!(ours.contains(&format!(
                        " INFO bus{{host=calc.example id=a1b2c3d4e5 trace_id={TRACE}}}: "
                    )));
                    assert!(ours.contains(
                        "bus{host=calc.example id=a1b2c3d4e5 trace_id=0af7651916cd43dd8448eb211c80319c}:http{host=front.example"
                    ));
                }
                Format::Json => {
                    let first: serde_json::Value =
                        serde_json::from_str(ours.lines().nth(1).unwrap()).unwrap();
                    assert_eq!(first["span"]["name"], "bus", "{ours}");
                    assert_eq!(first["span"]["trace_id"], TRACE, "{ours}");
                }
                Format::Text { ansi: true } => assert!(ours.contains("\u{1b}["), "{ours}"),
            }
        }
    }

    #[test]
    fn a_scope_follows_its_future_and_counts_its_lines_for_its_service() {
        let calc = owner("count.example", "c0c1c2c3c4");
        let counted = |severity: &str, message: &str| {
            calc.metrics
                .log_messages
                .with_label_values(&[severity, message])
                .get()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let text = lines(Format::Text { ansi: false }, true, || {
            let log = RequestLog::open(ScopeKind::Ingress, &calc, trace_id());
            rt.block_on(log.scope(async {
                tracing::info!("before a pause");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tracing::warn!("after a pause");
            }));
            tracing::info!("outside");
        });
        let scoped = format!(" http{{host=count.example id=c0c1c2c3c4 trace_id={TRACE}}}: ");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains(&scoped), "{text}");
        assert!(lines[1].contains(&scoped), "{text}");
        assert!(!lines[2].contains("http{"), "{text}");
        assert_eq!(counted("INFO", "before a pause"), 1);
        assert_eq!(counted("WARN", "after a pause"), 1);
        assert_eq!(counted("INFO", "outside"), 0);
    }

    #[test]
    fn span_selecting_filters_select_the_real_span() {
        let calc = owner("calc.example", "a1b2c3d4e5");
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "warn,[bus{host=calc.example}]=debug",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(out.clone())
                    .with_ansi(false)
                    .fmt_fields(TextFields)
                    .event_format(ScopedText::without_time()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let log = RequestLog::open_as(ScopeKind::Service, &calc, trace_id(), true);
            assert!(matches!(log, RequestLog::Span(_)));
            log.in_scope(|| tracing::debug!("selected"));
            tracing::debug!("not selected");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "DEBUG bus{{host=calc.example id=a1b2c3d4e5 trace_id={TRACE}}}: {}: selected\n",
                module_path!()
            )
        );
    }

    #[test]
    fn only_span_selecting_filters_need_real_spans() {
        for (directives, spans) in [
            ("", false),
            ("info", false),
            ("busgate=debug,async_nats=warn", false),
            ("[bus]=debug", true),
            ("warn,[http{host=front.example}]=trace", true),
        ] {
            assert_eq!(filter_selects_spans(directives), spans, "{directives}");
        }
    }
}
