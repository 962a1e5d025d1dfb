//! Where the serving certificate lives, and a self-signed one for standalone use; the webhook
//! client CA that tells the apiserver's reviews from anyone else's. Loading and hot-reloading the
//! serving certificate (with the client certificates of both the apiserver and the front proxy)
//! is `query::tls`.

use crate::{Error, Result, certs};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The client certificate chain (leaf first) the TLS layer verified for this connection, if the
/// client sent one. Inserted into every request's extensions by the acceptor of `query::tls`.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// Who may write history: the CA of the client certificate the apiserver presents to webhooks
/// (from the kubeconfig of its AdmissionConfiguration), and optionally the names it must carry.
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Common names or DNS names allowed; empty allows any certificate from the CA.
    pub allowed_names: Vec<String>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("allowed_names", &self.allowed_names)
            .finish_non_exhaustive()
    }
}

/// Why a review's client is not the apiserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRefusal {
    /// No client certificate.
    NoCertificate,
    /// A certificate that does not chain to the client CA.
    Untrusted,
    /// A certificate from the CA with none of the allowed names.
    NameNotAllowed,
}

impl ClientCa {
    /// The CA certificates in `pem`, allowing `allowed_names`.
    pub fn from_pem(pem: &[u8], allowed_names: Vec<String>) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("webhook client CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("webhook client CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("webhook client CA holds no certificate".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(format!("webhook client CA: {e}")))?;
        Ok(ClientCa {
            verifier,
            allowed_names,
        })
    }

    /// The CA in the PEM file at `path`.
    pub fn read(path: &Path, allowed_names: Vec<String>) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::from_pem(&pem, allowed_names)
    }

    /// The verifier of client chains, for the TLS layer.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.clone()
    }

    /// Whether `chain` (leaf first) chains to the CA and carries an allowed name.
    pub fn check(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<(), ClientRefusal> {
        let (leaf, intermediates) = chain
            .and_then(|c| c.split_first())
            .ok_or(ClientRefusal::NoCertificate)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|_| ClientRefusal::Untrusted)?;
        if self.allowed_names.is_empty() {
            return Ok(());
        }
        let names = certificate_names(leaf);
        if names.iter().any(|n| self.allowed_names.contains(n)) {
            Ok(())
        } else {
            Err(ClientRefusal::NameNotAllowed)
        }
    }
}

/// The subject common names and DNS subject alternative names of a DER certificate.
fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    names
}

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
