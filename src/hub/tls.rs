//! The hub's optional TLS (`hub.tls_cert`, `hub.tls_key`): the rustls server
//! config its listener wraps every connection in. Unset, the hub serves h2c
//! as before.
//!
//! Owns: reading and checking the PEM files at start, so a bad file is a
//! start-up error naming the key and the path, never a failure per
//! connection. Must not: ask for client certificates (agents authenticate
//! with the bearer token), or install a process-wide crypto provider (the
//! provider is passed in: ring, the one kube's rustls already uses).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the hub's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` = {path:?}: {reason}")]
pub struct TlsSetupError {
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// ALPN: HTTP/2 for agents; HTTP/1.1 too, as served in cleartext (curl).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server config for `cert` (a PEM chain, leaf first) and `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let fail = |k: &'static str, p: &Path, reason: String| TlsSetupError {
        key: k,
        path: p.to_path_buf(),
        reason,
    };
    let read = |k: &'static str, p: &Path| std::fs::read(p).map_err(|e| fail(k, p, format!("reading it: {e}")));

    let pem = read("hub.tls_cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("hub.tls_cert", cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail("hub.tls_cert", cert, "holds no PEM certificate".into()));
    }
    let pem = read("hub.tls_key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| fail("hub.tls_key", key, format!("no PEM private key: {e}")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("hub.tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            let reason = format!("does not go with hub.tls_cert {}: {e}", cert.display());
            fail("hub.tls_key", key, reason)
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
