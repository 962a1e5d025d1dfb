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

/// Connects to the capture server at `addr` as the apiserver would: a TLS handshake that names
/// `server_name` and trusts only `ca_bundle` (PEM). Succeeds only when the certificate served
/// right now is one that a client holding that bundle accepts, which is what a published
/// caBundle has to promise before a policy may say Ready.
pub async fn probe(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_bundle: &[u8],
    timeout: std::time::Duration,
) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle) {
        let cert = cert.map_err(|e| Error::Tls(format!("caBundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("caBundle: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| Error::Tls(format!("server name {server_name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(local_address(addr)).await?;
        connector.connect(name, tcp).await.map(drop)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Error::Tls(format!("handshake with {addr}: {error}"))),
        Err(_) => Err(Error::Tls(format!("handshake with {addr} timed out"))),
    }
}

/// Where to reach a server listening on `addr` from this host: the loopback address when it
/// listens on every address.
pub fn local_address(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `files` on a loopback port until the test ends.
    async fn serve(files: &CertFiles) -> std::net::SocketAddr {
        let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
            .await
            .expect("certificate loads");
        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), config)
            .handle(handle.clone())
            .serve(axum::Router::new().into_make_service());
        tokio::spawn(server);
        handle.listening().await.expect("listening")
    }

    #[tokio::test]
    async fn probe_accepts_only_the_ca_that_signed_the_served_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let names = vec!["127.0.0.1".to_string(), "histor.ns.svc".to_string()];
        let served = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let files = write_self_signed(served.path(), &names).unwrap();
        let stale = write_self_signed(other.path(), &names).unwrap();
        let addr = serve(&files).await;
        let ca = std::fs::read(files.ca.as_ref().unwrap()).unwrap();
        let other_ca = std::fs::read(stale.ca.as_ref().unwrap()).unwrap();
        let wait = std::time::Duration::from_secs(5);

        probe(addr, "127.0.0.1", &ca, wait).await.expect("same CA");
        probe(addr, "histor.ns.svc", &ca, wait)
            .await
            .expect("any name the certificate carries");
        // A bundle that does not verify what is served (a certificate left from an earlier
        // run, or a rotation not yet loaded) is what the apiserver would refuse.
        let refused = probe(addr, "127.0.0.1", &other_ca, wait).await.unwrap_err();
        assert!(refused.to_string().contains("handshake"), "{refused}");
        // A bundle with both CAs (a rotation in progress) verifies it.
        let both = [other_ca.as_slice(), ca.as_slice()].concat();
        probe(addr, "127.0.0.1", &both, wait).await.expect("bundle");
        assert!(probe(addr, "elsewhere.example", &ca, wait).await.is_err());
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_address("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            local_address("[::]:8443".parse().unwrap()),
            "[::1]:8443".parse().unwrap()
        );
        assert_eq!(
            local_address("10.1.2.3:8443".parse().unwrap()),
            "10.1.2.3:8443".parse().unwrap()
        );
    }
}
