//! The TLS listener's certificate (`[tls]`): a rustls server config built
//! from the certificate chain and key files, offering HTTP/2 and HTTP/1.1
//! by ALPN. Built at start, by `herald check`, and again by every reload
//! (so a renewed certificate is picked up on SIGHUP); a file that cannot
//! be read or parsed is an error naming its key.
//!
//! It sits below `app` and `http`: the app keeps the config in force, the
//! listener ([`http::tls`](crate::http::tls)) hands it to each handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// `[tls]`: a second listener, speaking TLS.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where the TLS listener binds (e.g. `0.0.0.0:8443`), beside
    /// `http.listen`. Changing it takes a restart.
    pub listen: std::net::SocketAddr,
    /// The server's certificate then its intermediates, PEM. Read at start
    /// and on every reload.
    pub cert_file: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_file: PathBuf,
}

/// ALPN protocol ids, most preferred first: HTTP/2 lets a browser hold
/// any number of SSE streams and polls to Herald on one connection (over
/// HTTP/1.1 it allows six per origin); WebSocket needs HTTP/1.1.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
#[error("invalid config: {key} ({path}): {reason}")]
pub struct TlsError {
    key: &'static str,
    path: String,
    reason: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
        TlsError {
            key,
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The server config for `[tls]`: its files read now.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_chain(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        TlsError::new(
            "tls.key_file",
            &tls.key_file,
            format!("no PKCS#8, PKCS#1 or SEC1 private key in PEM: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls.cert_file", &tls.cert_file, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::new(
                "tls.key_file",
                &tls.key_file,
                format!("does not go with tls.cert_file: {e}"),
            )
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn read_chain(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new("tls.cert_file", path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::new("tls.cert_file", path, e))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            "tls.cert_file",
            path,
            "no CERTIFICATE in PEM (the server's certificate first, then its intermediates)",
        ));
    }
    Ok(chain)
}
