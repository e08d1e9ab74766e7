//! The certificate files of an ingress port: `<prefix>-<port>-cert.pem` and `-key.pem` in
//! the working directory (Microbus's convention); rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

/// The TLS server configuration of `port`, `None` when neither file exists, or a message
/// naming the file that could not be used.
pub fn server_config(
    dir: &Path,
    prefix: &str,
    port: u16,
) -> Result<Option<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = dir.join(format!("{prefix}-{port}-cert.pem"));
    let key = dir.join(format!("{prefix}-{port}-key.pem"));
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Some(tls))
}
