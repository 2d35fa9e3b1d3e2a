//! Client-side TLS (rustls): loading the configured certificate chain and key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor, or says which file is wrong and how; with it, the
/// `tls-server-end-point` channel-binding data of the certificate (None when its signature
/// algorithm has no hash to bind with: SCRAM-SHA-256-PLUS is then not offered).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Option<Vec<u8>>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {} holds no certificate", cert.display()));
    }
    let end_point = certs
        .first()
        .and_then(|leaf| shardgate_auth::tls_server_end_point(leaf));
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from tls.key {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert and tls.key do not form a valid pair: {e}"))?;
    Ok((TlsAcceptor::from(Arc::new(config)), end_point))
}
