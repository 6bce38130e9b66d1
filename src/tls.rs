//! TLS: HTTPS for the API listener (PEM files loaded with rustls/ring, reloaded on SIGHUP so a
//! certificate can be renewed without dropping queued work), and extra roots for clients.

use crate::config::TlsConfig;
use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;

/// Loads the certificate chain and key named by `tls`. The error names both files.
pub async fn load(tls: &TlsConfig) -> anyhow::Result<RustlsConfig> {
    install_crypto_provider();
    RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file).await.with_context(|| {
        format!(
            "TLS: cannot load the certificate {} and key {} (PEM; the key file must hold exactly one private key)",
            tls.cert_file.display(),
            tls.key_file.display()
        )
    })
}

/// Reads the files again into the live configuration; connections made afterwards see the new
/// certificate. On error the old one stays in use.
pub async fn reload(live: &RustlsConfig, tls: &TlsConfig) -> anyhow::Result<()> {
    live.reload_from_pem_file(&tls.cert_file, &tls.key_file)
        .await
        .with_context(|| format!("TLS: cannot reload {} and {}", tls.cert_file.display(), tls.key_file.display()))
}

/// Reloads the certificate on every SIGHUP until the process ends (Unix only).
pub fn reload_on_sighup(live: RustlsConfig, tls: TlsConfig) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate reloads only on restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match reload(&live, &tls).await {
                Ok(()) => tracing::info!(cert = %tls.cert_file.display(), "SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: keeping the previous TLS certificate"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (live, tls);
}

/// The certificates of a PEM bundle, to trust as roots (a private CA, a self-signed daemon).
pub fn read_roots(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
    anyhow::ensure!(!roots.is_empty(), "{} holds no PEM certificate", path.display());
    Ok(roots)
}

/// rustls needs one process-wide crypto provider; reqwest already links ring, so it is ring.
fn install_crypto_provider() {
    // Err means one is installed already (a second application in the same process): fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
