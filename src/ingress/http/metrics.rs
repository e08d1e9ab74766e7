//! The HTTP ingress's own metrics, in the ingress connector's registry.

use std::sync::Arc;

use prometheus::{Histogram, HistogramVec, IntGauge, IntGaugeVec};

use crate::telemetry::metrics::{
    histogram, label_id, opts, register, BufferedCache, Flushed, HandleCache, Label,
    ServiceMetrics, BODY_BUCKETS, LATENCY_BUCKETS,
};
use crate::telemetry::names::*;

/// Metrics of the HTTP ingress, in the ingress connector's registry.
pub struct IngressMetrics {
    // `duration` and the bodies are observed through each thread's buffer, registered
    // `Flushed` (see `BufferedCache`): read them through the registry.
    duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub open_connections: IntGaugeVec,
    pub parked_connections: IntGaugeVec,
    request_body: HistogramVec,
    response_body: HistogramVec,
    listeners: HandleCache<u16, Arc<ListenerMetrics>>,
    /// Observed through each thread's buffer (see [`BufferedCache`]).
    durations: Arc<BufferedCache<[usize; 4], Histogram>>,
    bodies: Arc<BufferedCache<u16, (Histogram, Histogram)>>,
}

/// The gauges of one listener port.
pub struct ListenerMetrics {
    pub in_flight: IntGauge,
    pub open_connections: IntGauge,
    pub parked_connections: IntGauge,
}

/// What the ingress measured of one request.
pub struct Served<'a> {
    pub port: u16,
    /// From [`ServiceMetrics::capped`], as `method`.
    pub route: &'a Label,
    pub method: &'a Label,
    pub status: u16,
    pub elapsed: std::time::Duration,
    pub request_size: u64,
    pub response_size: u64,
}

impl IngressMetrics {
    pub fn register(service: &ServiceMetrics) -> IngressMetrics {
        let c = &service.const_labels;
        let m = IngressMetrics {
            duration: histogram(c, INGRESS_REQUEST_DURATION, "Time from request to response at the HTTP ingress, by listener, target and status.", &[L_PORT, L_ROUTE, L_METHOD, L_CODE], LATENCY_BUCKETS),
            in_flight: IntGaugeVec::new(opts(c, INGRESS_IN_FLIGHT, "HTTP requests being served, by listener."), &[L_PORT]).expect("valid gauge"),
            open_connections: IntGaugeVec::new(opts(c, INGRESS_OPEN_CONNECTIONS, "Client connections open, by listener (idle keep-alive ones included)."), &[L_PORT]).expect("valid gauge"),
            parked_connections: IntGaugeVec::new(opts(c, INGRESS_PARKED_CONNECTIONS, "Idle HTTP/1 keep-alive connections parked without their HTTP state, by listener (counted in the open ones too)."), &[L_PORT]).expect("valid gauge"),
            request_body: histogram(c, INGRESS_REQUEST_BODY, "Size of request bodies received by the HTTP ingress.", &[L_PORT], BODY_BUCKETS),
            response_body: histogram(c, INGRESS_RESPONSE_BODY, "Size of response bodies sent by the HTTP ingress.", &[L_PORT], BODY_BUCKETS),
            listeners: HandleCache::default(),
            durations: Arc::default(),
            bodies: Arc::default(),
        };
        register(
            &service.registry,
            Flushed::new(m.duration.clone(), m.durations.clone()),
        );
        register(&service.registry, m.in_flight.clone());
        register(&service.registry, m.open_connections.clone());
        register(&service.registry, m.parked_connections.clone());
        register(
            &service.registry,
            Flushed::new(m.request_body.clone(), m.bodies.clone()),
        );
        register(
            &service.registry,
            Flushed::new(m.response_body.clone(), m.bodies.clone()),
        );
        m
    }

    /// The gauges of listener `port`.
    pub fn listener(&self, port: u16) -> Arc<ListenerMetrics> {
        self.listeners.get(port, || {
            let port = itoa::Buffer::new().format(port).to_owned();
            Arc::new(ListenerMetrics {
                in_flight: self.in_flight.with_label_values(&[&port]),
                open_connections: self.open_connections.with_label_values(&[&port]),
                parked_connections: self.parked_connections.with_label_values(&[&port]),
            })
        })
    }

    /// A served request's duration and body sizes.
    pub fn observe(&self, served: Served<'_>) {
        let Served {
            port,
            route,
            method,
            status,
            ..
        } = served;
        let key = [
            port as usize,
            label_id(route),
            label_id(method),
            status as usize,
        ];
        let resolve = || {
            let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
            self.duration.with_label_values(&[
                port_buf.format(port),
                route,
                method,
                code_buf.format(status),
            ])
        };
        self.durations.observe(key, resolve, |duration| {
            duration.observe(served.elapsed.as_secs_f64())
        });
        let resolve = || {
            let port = itoa::Buffer::new().format(port).to_owned();
            (
                self.request_body.with_label_values(&[&port]),
                self.response_body.with_label_values(&[&port]),
            )
        };
        self.bodies.observe(port, resolve, |(request, response)| {
            request.observe(served.request_size as f64);
            response.observe(served.response_size as f64);
        });
    }
}
