//! Posting encoded OTLP/HTTP requests to the collector, from the exporting thread.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::telemetry::error::{TelemetryError, TelemetryErrorKind::*};

/// The media type of OTLP/HTTP protobuf bodies.
const PROTOBUF: &str = "application/x-protobuf";

/// Posts encoded requests to an OTLP/HTTP endpoint (`.../v1/traces`).
#[derive(Debug)]
pub struct OtlpHttpSender {
    client: reqwest::blocking::Client,
    endpoint: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl OtlpHttpSender {
    /// `ca_file`: PEM certificates trusted for an `https://` collector besides the system's.
    pub fn new(
        endpoint: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<OtlpHttpSender, TelemetryError> {
        let tls = client_tls(ca_file)?;
        // The blocking client runs a runtime of its own, which cannot be started from within
        // the async runtime this is called on; build it on a thread of its own.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(tls)
                .build()
        })
        .join()
        .map_err(|_| {
            TelemetryError::new(Setup, "the thread building the OTLP HTTP client panicked")
        })?
        .map_err(|e| TelemetryError::caused_by(Setup, "cannot build the OTLP HTTP client", e))?;
        Ok(OtlpHttpSender {
            client,
            endpoint: endpoint.to_owned(),
            headers,
        })
    }

    /// Post one `ExportTraceServiceRequest`. Blocks: call it off the async runtime.
    pub fn send(&self, body: Vec<u8>) -> Result<(), TelemetryError> {
        let mut req = self
            .client
            .post(&self.endpoint)
            .header(CONTENT_TYPE, PROTOBUF)
            .body(body);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let res = req.send().map_err(|e| {
            TelemetryError::caused_by(Export, format!("OTLP export to {}", self.endpoint), e)
        })?;
        if res.status().is_success() {
            return Ok(());
        }
        let status = res.status();
        let detail: String = res.text().unwrap_or_default().chars().take(200).collect();
        Err(TelemetryError::new(
            Export,
            format!(
                "OTLP export to {} answered {status}: {detail}",
                self.endpoint
            ),
        ))
    }
}

/// TLS for the collector: the system's roots (read once per process) and `ca_file`'s, over
/// rustls with the ring provider.
fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TelemetryError> {
    static SYSTEM_ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    let mut roots = rustls::RootCertStore::empty();
    let system = SYSTEM_ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs);
    roots.add_parsable_certificates(system.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TelemetryError::caused_by(Setup, path.display().to_string(), e))?;
        if certs.is_empty() {
            return Err(TelemetryError::new(
                Setup,
                format!("{}: no PEM certificate in it", path.display()),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TelemetryError::caused_by(Setup, path.display().to_string(), e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TelemetryError::caused_by(Setup, "TLS for the collector", e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
