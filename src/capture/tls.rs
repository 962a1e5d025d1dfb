//! Serving certificates for the capture endpoint: loaded from PEM files, reloaded when the files
//! change (a rotated Secret, cert-manager renewal) without a restart, or generated self-signed for
//! standalone use.

use crate::{Error, Result, certs};
use axum_server::tls_rustls::RustlsConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the serving certificate and key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate that clients should trust, when histor made it.
    pub ca: Option<PathBuf>,
}

/// Writes a fresh self-signed CA and a serving certificate for `names` into `dir`
/// (`ca.crt`, `tls.crt`, `tls.key`; the key readable only by its owner).
pub fn write_self_signed(dir: &Path, names: &[String]) -> Result<CertFiles> {
    let now = jiff::Timestamp::now();
    let timings = certs::CertTimings::default();
    let material = certs::issue(&certs::CertAction::Create, None, names, now, &timings)?
        .ok_or_else(|| Error::Tls("no certificate was issued".into()))?;
    certs::write_serving_files(dir, &material)?;
    let ca = dir.join(certs::CA_CRT);
    std::fs::write(&ca, &material.ca_crt).map_err(|e| Error::file(&ca, e))?;
    Ok(CertFiles {
        cert: dir.join(certs::TLS_CRT),
        key: dir.join(certs::TLS_KEY),
        ca: Some(ca),
    })
}

/// Loads the serving configuration from the files.
pub async fn load(files: &CertFiles) -> Result<RustlsConfig> {
    let (cert, key) = read_pair(files)?;
    RustlsConfig::from_pem(cert, key).await.map_err(|e| {
        Error::Tls(format!(
            "loading {} and {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })
}

/// Polls the files every `every` and reloads `config` when their content changes. A half-written
/// or broken pair is logged and the current certificate kept, so a bad rotation never takes the
/// webhook down. Polling (rather than inotify) also sees Kubernetes' symlink swaps of mounted Secrets.
pub async fn watch(config: RustlsConfig, files: CertFiles, every: Duration) {
    let mut last = read_pair(&files).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(now) = read_pair(&files) else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        match config.reload_from_pem(now.0.clone(), now.1.clone()).await {
            Ok(()) => {
                tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                last = Some(now);
            }
            Err(error) => {
                tracing::warn!(%error, cert = %files.cert.display(), "new certificate files do not load; keeping the current ones")
            }
        }
    }
}

fn read_pair(files: &CertFiles) -> Result<(Vec<u8>, Vec<u8>)> {
    let cert = std::fs::read(&files.cert).map_err(|e| Error::file(&files.cert, e))?;
    let key = std::fs::read(&files.key).map_err(|e| Error::file(&files.key, e))?;
    Ok((cert, key))
}
