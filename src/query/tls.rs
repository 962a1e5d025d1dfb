//! The TLS side of front-proxy authentication: a rustls server configuration that requests (but
//! does not require) client certificates and verifies them against the current requestheader CA,
//! and an `axum_server` acceptor that hands the verified peer chain to handlers as a request
//! extension ([`PeerCertificates`]).
//!
//! The client verifier reads the CA from the shared [`FrontProxy`] at every handshake, so a CA
//! refreshed from the ConfigMap takes effect without rebuilding the server configuration.

use super::auth::FrontProxy;
use crate::capture::tls::CertFiles;
use crate::{Error, Result};
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower_layer::Layer;

/// The client certificate chain (leaf first) the TLS layer verified for this connection, if the
/// client sent one. Inserted into every request's extensions by [`PeerCertAcceptor`].
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// Verifies client certificates against whatever requestheader CA [`FrontProxy`] holds now.
/// Clients without a certificate pass (they use bearer tokens); a certificate that does not chain
/// fails the handshake, as with any TLS client authentication.
#[derive(Debug)]
pub struct FrontProxyVerifier {
    front_proxy: FrontProxy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl FrontProxyVerifier {
    /// A verifier following `front_proxy`.
    pub fn new(front_proxy: FrontProxy) -> Self {
        FrontProxyVerifier {
            front_proxy,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for FrontProxyVerifier {
    fn offer_client_auth(&self) -> bool {
        // Asking for a certificate only makes sense once there is a CA to check it against.
        self.front_proxy.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the CA can change under us, and Go clients send their certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.front_proxy.current() {
            Some(config) => config
                .verifier()
                .verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no requestheader client CA is known".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A server configuration for `cert_pem` (chain) and `key_pem`, requesting client certificates
/// checked against `front_proxy`'s CA when given, with ALPN h2 and http/1.1.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    front_proxy: Option<FrontProxy>,
) -> Result<ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match front_proxy {
        Some(fp) => builder.with_client_cert_verifier(Arc::new(FrontProxyVerifier::new(fp))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("serving certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS acceptor that records the client's certificate chain in each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerCertAcceptor {
    inner: RustlsAcceptor,
}

impl PeerCertAcceptor {
    /// An acceptor serving `config`.
    pub fn new(config: RustlsConfig) -> Self {
        PeerCertAcceptor {
            inner: RustlsAcceptor::new(config),
        }
    }
}

impl<I, S> Accept<I, S> for PeerCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = AddExtension<S, PeerCertificates>;
    type Future = BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let acceptor = self.inner.clone();
        Box::pin(async move {
            let (stream, service) = acceptor.accept(stream, service).await?;
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()));
            let service = axum::Extension(PeerCertificates(chain)).layer(service);
            Ok((stream, service))
        })
    }
}

/// The serving configuration from `files` with client certificates checked against
/// `front_proxy`, ready for [`bind`].
pub fn load(files: &CertFiles, front_proxy: Option<FrontProxy>) -> Result<RustlsConfig> {
    let (cert, key) = read_pair(files)?;
    let config = server_config(&cert, &key, front_proxy)?;
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// Polls the files every `every` and swaps in a configuration built by [`server_config`] when they
/// change (a rotated Secret, cert-manager renewal), without a restart. Client-certificate
/// verification is kept (`RustlsConfig::reload_from_pem` would silently drop it, and with it
/// every front-proxy request). A half-written or broken pair is logged and the current
/// certificate kept, so a bad rotation never takes the webhook down; polling rather than inotify
/// also sees Kubernetes' symlink swaps of mounted Secrets.
pub async fn watch(
    config: RustlsConfig,
    files: CertFiles,
    front_proxy: Option<FrontProxy>,
    every: Duration,
) {
    let mut last = read_pair(&files).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(now) = read_pair(&files) else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        match server_config(&now.0, &now.1, front_proxy.clone()) {
            Ok(new) => {
                config.reload_from_config(Arc::new(new));
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

/// An HTTPS server on `addr` whose handlers see [`PeerCertificates`]: the drop-in replacement
/// for `axum_server::bind_rustls` when the query API is served.
pub fn bind(
    addr: SocketAddr,
    config: RustlsConfig,
) -> axum_server::Server<SocketAddr, PeerCertAcceptor> {
    axum_server::bind(addr).acceptor(PeerCertAcceptor::new(config))
}
