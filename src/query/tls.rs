//! The TLS side of client authentication: a rustls server configuration that requests (but does
//! not require) client certificates and verifies them against the webhook client CA (the
//! apiserver calling `/admit`) and the current requestheader CA (its front proxy calling the query
//! API),
//! and an `axum_server` acceptor that hands the verified peer chain to handlers as a request
//! extension ([`PeerCertificates`]), under the connection limits of [`crate::capture::conn`].
//!
//! The client verifier reads the requestheader CA from the shared [`FrontProxy`] at every
//! handshake, so a CA refreshed from the ConfigMap takes effect without rebuilding the server
//! configuration. Which CA a route needs is checked by the route.

use super::auth::FrontProxy;
use crate::capture::conn::{Activity, Guarded, Limiter, Refusal, Tracked};
use crate::capture::tls::{CertFiles, ClientCa};
use crate::{Error, Result};
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use hyper_util::rt::TokioTimer;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tower_layer::Layer;

pub use crate::capture::tls::PeerCertificates;

/// Whose client certificates the TLS layer accepts: the apiserver's front proxy (for the query
/// API) and the apiserver as a webhook client (for `/admit`). Each route checks again the one it
/// needs, from [`PeerCertificates`].
#[derive(Clone, Debug, Default)]
pub struct ClientCerts {
    /// The requestheader CA, as currently known.
    pub front_proxy: Option<FrontProxy>,
    /// The webhook client CA.
    pub webhook: Option<Arc<ClientCa>>,
}

/// Verifies client certificates against the webhook client CA and whatever requestheader CA
/// [`FrontProxy`] holds now. Clients without a certificate pass (they use bearer tokens, or are
/// refused by the route); a certificate that chains to neither fails the handshake, as with any
/// TLS client authentication.
#[derive(Debug)]
pub struct ClientVerifier {
    clients: ClientCerts,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// A verifier following `clients`.
    pub fn new(clients: ClientCerts) -> Self {
        ClientVerifier {
            clients,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        // Asking for a certificate only makes sense once there is a CA to check it against.
        self.clients.webhook.is_some()
            || self
                .clients
                .front_proxy
                .as_ref()
                .is_some_and(|fp| fp.current().is_some())
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
        let mut outcome = Err(rustls::Error::General("no client CA is configured".into()));
        if let Some(webhook) = &self.clients.webhook {
            outcome = webhook
                .verifier()
                .verify_client_cert(end_entity, intermediates, now);
            if outcome.is_ok() {
                return outcome;
            }
        }
        if let Some(config) = self
            .clients
            .front_proxy
            .as_ref()
            .and_then(|fp| fp.current())
        {
            outcome = config
                .verifier()
                .verify_client_cert(end_entity, intermediates, now);
        }
        outcome
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
/// checked against the CAs of `clients` when there are any, with ALPN h2 and http/1.1.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    clients: &ClientCerts,
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
    let builder = if clients.front_proxy.is_some() || clients.webhook.is_some() {
        builder.with_client_cert_verifier(Arc::new(ClientVerifier::new(clients.clone())))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("serving certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS acceptor that applies the connection limits ([`conn`]) and records the client's
/// certificate chain in each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerCertAcceptor {
    inner: RustlsAcceptor,
    limiter: Arc<Limiter>,
}

impl PeerCertAcceptor {
    /// An acceptor serving `config` under `limiter`'s limits.
    pub fn new(config: RustlsConfig, limiter: Arc<Limiter>) -> Self {
        PeerCertAcceptor {
            inner: RustlsAcceptor::new(config)
                .handshake_timeout(limiter.limits().handshake_timeout),
            limiter,
        }
    }
}

impl<S> Accept<TcpStream, S> for PeerCertAcceptor
where
    S: Send + 'static,
{
    type Stream = Guarded<TlsStream<TcpStream>>;
    type Service = Tracked<AddExtension<S, PeerCertificates>>;
    type Future = BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        // Decided before the handshake: a refused connection costs a descriptor for no longer
        // than it takes to close it.
        let slot = self.limiter.admit(stream.peer_addr().ok().map(|a| a.ip()));
        // Answers go out when written: with Nagle's algorithm a small answer after a large
        // request waits for the client's delayed ACK (40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let acceptor = self.inner.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let slot = slot.map_err(|refusal| {
                tracing::debug!(
                    reason = refusal.label(),
                    "connection refused by the connection limits"
                );
                std::io::Error::other(refusal.label())
            })?;
            let (stream, service) = acceptor.accept(stream, service).await?;
            let chain: Option<Arc<Vec<CertificateDer<'static>>>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()));
            if slot.is_reserved()
                && !limiter.may_keep_reserved(chain.as_deref().map(|c| c.as_slice()))
            {
                limiter.refuse(Refusal::Unauthenticated);
                tracing::debug!(
                    "connection in a reserved slot without the apiserver's client certificate; closed"
                );
                return Err(std::io::Error::other(Refusal::Unauthenticated.label()));
            }
            let activity = Activity::new();
            let service = Tracked::new(
                axum::Extension(PeerCertificates(chain)).layer(service),
                activity.clone(),
            );
            Ok((Guarded::new(stream, slot, activity), service))
        })
    }
}

/// The serving configuration from `files` with client certificates checked against `clients`,
/// ready for [`bind`].
pub fn load(files: &CertFiles, clients: &ClientCerts) -> Result<RustlsConfig> {
    let (cert, key) = read_pair(files)?;
    let config = server_config(&cert, &key, clients)?;
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// Polls the files every `every` and swaps in a configuration built by [`server_config`] when they
/// change (a rotated Secret, cert-manager renewal), without a restart. Client-certificate
/// verification is kept (`RustlsConfig::reload_from_pem` would silently drop it, and with it
/// every front-proxy request). A half-written or broken pair is logged and the current
/// certificate kept, so a bad rotation never takes the webhook down; polling rather than inotify
/// also sees Kubernetes' symlink swaps of mounted Secrets.
pub async fn watch(config: RustlsConfig, files: CertFiles, clients: ClientCerts, every: Duration) {
    let mut last = read_pair(&files).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(now) = read_pair(&files) else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        match server_config(&now.0, &now.1, &clients) {
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

/// An HTTPS server on `addr` whose handlers see [`PeerCertificates`], with the connection
/// limits and timeouts of `limiter`: the replacement for `axum_server::bind_rustls`.
pub fn bind(
    addr: SocketAddr,
    config: RustlsConfig,
    limiter: Arc<Limiter>,
) -> axum_server::Server<SocketAddr, PeerCertAcceptor> {
    let header_timeout = limiter.limits().header_timeout;
    let mut server = axum_server::bind(addr).acceptor(PeerCertAcceptor::new(config, limiter));
    // Without a timer hyper applies no header timeout at all. With HTTP/1.1 this bounds both a
    // dribbled header and the wait for the next request on a kept-alive connection.
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    server.http_builder().http2().timer(TokioTimer::new());
    server
}
