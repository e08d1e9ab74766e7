//! The HTTP ingress's own metrics, in the ingress connector's registry.

use prometheus::{Histogram, HistogramVec, IntGauge, IntGaugeVec};

use crate::telemetry::metrics::{
    histogram, label_id, opts, register, HandleCache, Label, ServiceMetrics, BODY_BUCKETS,
    LATENCY_BUCKETS,
};
use crate::telemetry::names::*;

/// Metrics of the HTTP ingress, in the ingress connector's registry.
pub struct IngressMetrics {
    pub duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub open_connections: IntGaugeVec,
    pub parked_connections: IntGaugeVec,
    pub request_body: HistogramVec,
    pub response_body: HistogramVec,
    listeners: HandleCache<u16, ListenerMetrics>,
    durations: HandleCache<[usize; 4], Histogram>,
}

/// The series of one listener port.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub in_flight: IntGauge,
    pub open_connections: IntGauge,
    pub parked_connections: IntGauge,
    pub request_body: Histogram,
    pub response_body: Histogram,
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
            durations: HandleCache::default(),
        };
        register(&service.registry, m.duration.clone());
        register(&service.registry, m.in_flight.clone());
        register(&service.registry, m.open_connections.clone());
        register(&service.registry, m.parked_connections.clone());
        register(&service.registry, m.request_body.clone());
        register(&service.registry, m.response_body.clone());
        m
    }

    /// The series of listener `port`.
    pub fn listener(&self, port: u16) -> ListenerMetrics {
        self.listeners.get(port, || {
            let port = itoa::Buffer::new().format(port).to_owned();
            ListenerMetrics {
                in_flight: self.in_flight.with_label_values(&[&port]),
                open_connections: self.open_connections.with_label_values(&[&port]),
                parked_connections: self.parked_connections.with_label_values(&[&port]),
                request_body: self.request_body.with_label_values(&[&port]),
                response_body: self.response_body.with_label_values(&[&port]),
            }
        })
    }

    /// The duration series of one listener, target, method and status; `route` and `method`
    /// come from [`ServiceMetrics::capped`].
    pub fn duration(&self, port: u16, route: &Label, method: &Label, status: u16) -> Histogram {
        let key = [
            port as usize,
            label_id(route),
            label_id(method),
            status as usize,
        ];
        self.durations.get(key, || {
            let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
            self.duration.with_label_values(&[
                port_buf.format(port),
                route,
                method,
                code_buf.format(status),
            ])
        })
    }
}
