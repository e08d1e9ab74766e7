//! Logs through `tracing-subscriber`: readable text in LOCAL/TESTING, JSON in LAB/PROD,
//! filtered by `RUST_LOG` (default `info`). Lines inside a request carry the service, the
//! instance and the trace id (fields of the request's span), and every line is counted in
//! `microbus_log_messages_total` of the service it belongs to.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, JsonFields, Writer};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::log_scope::{self, ScopedJson, ScopedText};
use super::metrics::{live_service, ProcessLogs, ServiceMetrics};
use super::names::LOG_SPAN_FIELDS;
use crate::config::Deployment;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Install the global subscriber; a second call is a no-op (tests share a process).
pub fn init(deployment: Deployment) {
    let directives = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let text = matches!(deployment, Deployment::Local | Deployment::Testing);
    // Colours only for a terminal: piped into a log collector (docker, journald, a file) the
    // escape codes are noise, and painting every span field cost ~4% of a request.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if text {
        tracing_subscriber::registry()
            .with(filter())
            .with(
                fmt.fmt_fields(TextFields)
                    .event_format(ScopedText::default()),
            )
            .with(LogCounter)
            .with(super::handler_spans::layer())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter())
            .with(
                fmt.fmt_fields(JsonFields::new())
                    .event_format(ScopedJson::default()),
            )
            .with(LogCounter)
            .with(super::handler_spans::layer())
            .try_init()
    };
    if result.is_ok() {
        log_scope::use_real_spans(log_scope::filter_selects_spans(&directives));
        super::handler_spans::mark_installed();
    }
}

/// The text format's fields, as `tracing-subscriber`'s default writes them, with a direct path
/// for plain strings: every request opens two log spans, and formatting their fields through
/// `core::fmt` cost ~8k instructions per request.
pub(super) struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> TextVisitor<'a> {
        TextVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
            pending: [0; PENDING_CAPACITY],
            pending_len: 0,
        }
    }
}

/// Bytes of plain fields gathered before one write: a span's fields go into a `String` of the
/// fmt layer's that starts empty, and writing them piece by piece grew it five times a span.
const PENDING_CAPACITY: usize = 256;

pub(super) struct TextVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: std::fmt::Result,
    pending: [u8; PENDING_CAPACITY],
    pending_len: usize,
}

/// `Some(has a space)` when `Debug` would write `value` as `"value"` without any escape; one
/// pass over the bytes for both answers.
fn plain_string(value: &str) -> Option<bool> {
    let mut space = false;
    for b in value.bytes() {
        if b == b' ' {
            space = true;
        } else if !b.is_ascii_graphic() || b == b'"' || b == b'\\' {
            return None;
        }
    }
    Some(space)
}

impl TextVisitor<'_> {
    fn pad(&mut self) -> std::fmt::Result {
        if std::mem::take(&mut self.is_empty) {
            Ok(())
        } else {
            self.put(" ")
        }
    }

    /// `text` gathered for the next write (or written at once when it does not fit).
    fn put(&mut self, text: &str) -> std::fmt::Result {
        let end = self.pending_len + text.len();
        if end <= PENDING_CAPACITY {
            self.pending[self.pending_len..end].copy_from_slice(text.as_bytes());
            self.pending_len = end;
            return Ok(());
        }
        self.flush()?;
        self.writer.write_str(text)
    }

    fn flush(&mut self) -> std::fmt::Result {
        let gathered = &self.pending[..std::mem::take(&mut self.pending_len)];
        // Whole `str`s were put: valid UTF-8.
        let text = std::str::from_utf8(gathered).map_err(|_| std::fmt::Error)?;
        if text.is_empty() {
            return Ok(());
        }
        self.writer.write_str(text)
    }

    /// Anything but a plain string: the default visitor, one field at a time.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if let Err(e) = self.flush() {
            self.result = Err(e);
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name == "message" || name.starts_with("r#") || self.writer.has_ansi_escapes() {
            return self.by_default(|v| v.record_str(field, value));
        }
        let Some(has_space) = plain_string(value) else {
            return self.by_default(|v| v.record_str(field, value));
        };
        // A log span's own fields bare, as `%value` wrote them before they were strings; any
        // other plain string quoted, as `Debug` writes it. As few writes as can be: each goes
        // through `dyn Write`.
        let bare = !has_space && !value.is_empty() && LOG_SPAN_FIELDS.contains(&name);
        self.result = (|| {
            self.pad()?;
            self.put(name)?;
            if bare {
                self.put("=")?;
                self.put(value)
            } else {
                self.put("=\"")?;
                self.put(value)?;
                self.put("\"")
            }
        })();
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.by_default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if self.result.is_ok() {
            self.by_default(|v| v.record_debug(field, value));
        }
    }
}

impl VisitOutput<std::fmt::Result> for TextVisitor<'_> {
    fn finish(mut self) -> std::fmt::Result {
        self.result?;
        self.flush()
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        // Whatever is written there comes after what was gathered.
        if let Err(e) = self.flush() {
            self.result = Err(e);
        }
        &mut self.writer
    }
}

/// The service a span belongs to, found from its `id` field.
struct Owner(Arc<ServiceMetrics>);

#[derive(Default)]
struct Fields {
    id: Option<String>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "id" => self.id = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "id" => self.id = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Finds the service of a span from its `id` field, without copying it when it is a string.
struct SpanOwner(Option<Arc<ServiceMetrics>>);

impl Visit for SpanOwner {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "id" {
            self.0 = live_service(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "id" {
            self.0 = live_service(format!("{value:?}").trim_matches('"'));
        }
    }
}

/// Counts every log event in `microbus_log_messages_total` of its service.
pub struct LogCounter;

impl<S> Layer<S> for LogCounter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut owner = SpanOwner(None);
        attrs.record(&mut owner);
        if let (Some(m), Some(span)) = (owner.0, ctx.span(id)) {
            span.extensions_mut().insert(Owner(m));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let severity = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            _ => "DEBUG",
        };
        let message = fields.message.as_deref().unwrap_or("");
        // The nearest span's service, then the request scope's (outside every span, as the
        // span it stands for was), then the line's own `id`.
        let from_span = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<Owner>().map(|o| o.0.clone()))
        });
        let owner = from_span
            .or_else(log_scope::current_owner)
            .or_else(|| fields.id.as_deref().and_then(live_service));
        match owner {
            Some(owner) => owner.count_log(severity, message),
            None => ProcessLogs::get().count(severity, message),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::{DefaultFields, FormatFields};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A writer that keeps what the fmt layer writes, for comparing lines.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// The lines `emit` writes with `fields` formatting them.
    fn lines<N>(fields: N, emit: impl Fn()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn text_fields_write_what_the_default_writes() {
        let error = std::io::Error::other("disk \"full\"");
        // Longer than the visitor gathers before a write, alone and after other fields.
        let long = "l".repeat(PENDING_CAPACITY + 44);
        let emit = || {
            let span =
                tracing::error_span!("bus", host = "calc.example", id = "a1b2", trace_id = "00ff");
            let _entered = span.enter();
            let wide = tracing::error_span!("wide", a = long.as_str(), b = long.as_str());
            let _wide = wide.enter();
            for value in [
                long.as_str(),
                "plain",
                "with space",
                "quote\"d",
                "back\\slash",
                "new\nline",
                "naïve",
                "",
                "\u{1b}[31m",
            ] {
                tracing::info!(path = value, n = 3, ok = true, f = 1.5, "message {value}");
                tracing::info!(host = value, "a string field named like a span field");
                tracing::info!(r#type = value, error = %value, "raw and display");
            }
            tracing::info!(
                error = &error as &(dyn std::error::Error + 'static),
                "an error"
            );
        };
        let ours = lines(TextFields, emit);
        let theirs = lines(DefaultFields::new(), emit);
        // The span's fields were Display (`%`) before, so bare: now strings, written bare too.
        let theirs = theirs.replace(
            r#"bus{host="calc.example" id="a1b2" trace_id="00ff"}"#,
            "bus{host=calc.example id=a1b2 trace_id=00ff}",
        );
        let theirs = theirs.replace(r#"host="plain""#, "host=plain");
        let theirs = theirs.replace(&format!("host=\"{long}\""), &format!("host={long}"));
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("bus{host=calc.example id=a1b2 trace_id=00ff}"),
            "{ours}"
        );
        assert!(ours.contains(r#"path="new\nline""#), "{ours}");
    }
}
