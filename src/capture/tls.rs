//! Where the serving certificate lives, and a self-signed one for standalone use. Loading and
//! hot-reloading them (with the query API's optional client certificates) is `query::tls`.

use crate::{Error, Result, certs};
use std::path::{Path, PathBuf};

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
