//! Metrics of the SMTP ingress, in the ingress connector's registry (so they carry `service`,
//! `ver` and `id` and appear on `:888/metrics` and the admin `/metrics`). Names are in
//! [`crate::telemetry::names`].

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::telemetry::metrics::{ServiceMetrics, BODY_BUCKETS};
use crate::telemetry::names::*;

/// `reason` values: a fixed, small set.
pub mod reason {
    pub const NO_SINK: &str = "no_sink";
    pub const SINK_ERROR: &str = "sink_error";
    pub const TIMEOUT: &str = "timeout";
    pub const TOO_LARGE: &str = "too_large";
    pub const UNPARSEABLE: &str = "unparseable";
    pub const BARE_LF: &str = "bare_lf";
    pub const LINE_TOO_LONG: &str = "line_too_long";
    pub const SYNTAX: &str = "syntax";
    pub const BAD_SEQUENCE: &str = "bad_sequence";
    pub const REFUSED: &str = "refused";
    pub const TOO_MANY_CLIENTS: &str = "too_many_clients";
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    pub const DISCONNECTED_IN_DATA: &str = "disconnected_in_data";
    pub const TLS: &str = "tls";
    pub const SHUTTING_DOWN: &str = "shutting_down";
}

/// Session lengths in seconds: a quick delivery takes milliseconds, an idle client minutes.
const SESSION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

const SINK_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0];

pub struct SmtpMetrics {
    enabled: bool,
    pub received: IntCounter,
    pub accepted: IntCounter,
    pub deferred: IntCounterVec,
    pub rejected: IntCounterVec,
    pub errors: IntCounterVec,
    pub message_bytes: Histogram,
    pub session_duration: Histogram,
    pub sinks_reached: Histogram,
    pub open_connections: IntGauge,
}

impl SmtpMetrics {
    pub fn register(service: &ServiceMetrics) -> SmtpMetrics {
        let c = &service.const_labels;
        let opts = |name: &str, help: &str| Opts::new(name, help).const_labels(c.clone());
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_labels(c.clone())
                    .buckets(buckets.to_vec()),
            )
            .expect("valid histogram")
        };
        let m = SmtpMetrics {
            enabled: service.enabled(),
            received: IntCounter::with_opts(opts(
                SMTP_MESSAGES_RECEIVED,
                "Messages whose DATA ended, whatever the outcome.",
            ))
            .expect("valid counter"),
            accepted: IntCounter::with_opts(opts(
                SMTP_MESSAGES_ACCEPTED,
                "Messages answered 250: at least one sink took them.",
            ))
            .expect("valid counter"),
            deferred: IntCounterVec::new(
                opts(
                    SMTP_MESSAGES_DEFERRED,
                    "Messages answered 451 (the sender retries), by reason.",
                ),
                &[L_REASON],
            )
            .expect("valid counter"),
            rejected: IntCounterVec::new(
                opts(
                    SMTP_MESSAGES_REJECTED,
                    "Messages refused for good (552, 554), by reason.",
                ),
                &[L_REASON],
            )
            .expect("valid counter"),
            errors: IntCounterVec::new(
                opts(
                    SMTP_ERRORS,
                    "SMTP protocol errors and refused or dropped connections, by reason.",
                ),
                &[L_REASON],
            )
            .expect("valid counter"),
            message_bytes: hist(
                SMTP_MESSAGE_BYTES,
                "Size of the messages received over SMTP.",
                BODY_BUCKETS,
            ),
            session_duration: hist(
                SMTP_SESSION_DURATION,
                "Time from connect to disconnect of SMTP sessions.",
                SESSION_BUCKETS,
            ),
            sinks_reached: hist(
                SMTP_SINKS_REACHED,
                "Sinks that answered the on-incoming-email event of one message without error.",
                SINK_BUCKETS,
            ),
            open_connections: IntGauge::with_opts(opts(
                SMTP_OPEN_CONNECTIONS,
                "SMTP client connections open.",
            ))
            .expect("valid gauge"),
        };
        let r = &service.registry;
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            r.register(c).expect("metric names are unique per registry")
        };
        reg(Box::new(m.received.clone()));
        reg(Box::new(m.accepted.clone()));
        reg(Box::new(m.deferred.clone()));
        reg(Box::new(m.rejected.clone()));
        reg(Box::new(m.errors.clone()));
        reg(Box::new(m.message_bytes.clone()));
        reg(Box::new(m.session_duration.clone()));
        reg(Box::new(m.sinks_reached.clone()));
        reg(Box::new(m.open_connections.clone()));
        m
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn deferred(&self, reason: &str) {
        self.deferred.with_label_values(&[reason]).inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn error(&self, reason: &str) {
        self.errors.with_label_values(&[reason]).inc();
    }
}
