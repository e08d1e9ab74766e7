//! An in-test OTLP receiver: the generated `opentelemetry-proto` gRPC server, and the HTTP
//! protobuf endpoint `/v1/traces`, both collecting spans with their resource's service name.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub resource: HashMap<String, String>,
    pub name: String,
    /// 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub events: Vec<String>,
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Default)]
pub struct Spans(
    Arc<Mutex<Vec<ReceivedSpan>>>,
    Arc<Mutex<Vec<http::HeaderMap>>>,
);

impl Spans {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(&kv.value)))
                        .collect()
                })
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value(&kv.value)))
                            .collect(),
                        status: s.status.map(|st| st.code).unwrap_or(0),
                        events: s.events.iter().map(|e| e.name.clone()).collect(),
                    });
                }
            }
        }
    }

    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.0.lock().unwrap().clone()
    }

    /// The request headers of every OTLP/HTTP export received.
    pub fn request_headers(&self) -> Vec<http::HeaderMap> {
        self.1.lock().unwrap().clone()
    }

    pub fn of_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.all()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A gRPC OTLP receiver on a free port: (endpoint URL, spans).
pub async fn grpc_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Grpc(spans.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), spans)
}

/// The OTLP/HTTP protobuf receiving route, collecting into `spans`.
fn receiver_app(spans: &Spans) -> axum::Router {
    let collected = spans.clone();
    axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let collected = collected.clone();
            async move {
                collected.1.lock().unwrap().push(headers);
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        collected.add(req);
                        (
                            [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(_) => (http::StatusCode::BAD_REQUEST, "bad protobuf").into_response(),
                }
            }
        }),
    )
}

/// An OTLP/HTTP protobuf receiver on a free port: (traces endpoint URL, spans).
pub async fn http_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = receiver_app(&spans);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/v1/traces"), spans)
}

/// The same receiver over TLS with `cert_dir`'s `server-cert.pem` and `server-key.pem` (see
/// `make_certs`): (https traces endpoint URL, spans).
pub async fn https_receiver(cert_dir: &std::path::Path) -> (String, Spans) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert_dir.join("server-cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(cert_dir.join("server-key.pem")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = receiver_app(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate fails the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
            });
        }
    });
    (
        format!("https://127.0.0.1:{}/v1/traces", addr.port()),
        spans,
    )
}
