//! Logs through `tracing-subscriber`: readable text in LOCAL/TESTING, JSON in LAB/PROD,
//! filtered by `RUST_LOG` (default `info`). Lines inside a request carry the service, the
//! instance and the trace id (fields of the request's span), and every line is counted in
//! `microbus_log_messages_total` of the service it belongs to.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::metrics::{live_service, ProcessLogs, ServiceMetrics};
use crate::config::Deployment;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Install the global subscriber; a second call is a no-op (tests share a process).
pub fn init(deployment: Deployment) {
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
            .with(fmt)
            .with(LogCounter)
            .with(super::handler_spans::layer())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter())
            .with(fmt.json().with_current_span(true).with_span_list(false))
            .with(LogCounter)
            .with(super::handler_spans::layer())
            .try_init()
    };
    if result.is_ok() {
        super::handler_spans::mark_installed();
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
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(instance), Some(span)) = (fields.id, ctx.span(id)) {
            if let Some(m) = live_service(&instance) {
                span.extensions_mut().insert(Owner(m));
            }
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
        let from_span = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<Owner>().map(|o| o.0.clone()))
        });
        match from_span.or_else(|| fields.id.as_deref().and_then(live_service)) {
            Some(owner) => owner.count_log(severity, message),
            None => ProcessLogs::get().count(severity, message),
        }
    }
}
