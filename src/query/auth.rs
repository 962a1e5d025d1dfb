//! Who is asking: authentication of query API requests, in the apiserver's order.
//!
//! 1. Front proxy: requests the kube-apiserver's aggregator forwards carry its front-proxy client
//!    certificate and the user in `X-Remote-*` headers. The headers are trusted only when the
//!    certificate chains to the requestheader client CA and names an allowed CN, both read from
//!    the kube-system ConfigMap `extension-apiserver-authentication`.
//! 2. `Authorization: Bearer`: a TokenReview (cached briefly, keyed by the token's SHA-256), or in
//!    standalone mode a fixed list of tokens.
//! 3. Anything else: 401.
//!
//! Depends on kube for the reviews and the ConfigMap; the decisions themselves are pure functions.

use super::cache::TtlCache;
use crate::{Error, Result};
use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Namespace and name of the ConfigMap the apiserver publishes its requestheader settings in.
pub const AUTH_CONFIGMAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// How long a TokenReview answer is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

/// Most TokenReview answers kept.
const TOKEN_CACHE_CAPACITY: usize = 4096;

/// An authenticated user, as the apiserver describes one: the same shape as the user behind a
/// recorded change.
pub type UserInfo = crate::pipeline::Actor;

/// The requestheader settings: which client certificates may assert identities, and in which
/// headers.
pub struct RequestHeaderConfig {
    /// Verifies a client chain against the requestheader client CA.
    verifier: Arc<dyn ClientCertVerifier>,
    /// CNs allowed to assert identities; empty allows any certificate from the CA.
    pub allowed_names: Vec<String>,
    /// Headers holding the user name; the first non-empty one wins.
    pub username_headers: Vec<String>,
    /// Headers holding the user's uid.
    pub uid_headers: Vec<String>,
    /// Headers holding groups (each may repeat).
    pub group_headers: Vec<String>,
    /// Prefixes of headers holding extra attributes (`X-Remote-Extra-<key>`).
    pub extra_header_prefixes: Vec<String>,
}

impl std::fmt::Debug for RequestHeaderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeaderConfig")
            .field("allowed_names", &self.allowed_names)
            .field("username_headers", &self.username_headers)
            .field("group_headers", &self.group_headers)
            .field("extra_header_prefixes", &self.extra_header_prefixes)
            .finish_non_exhaustive()
    }
}

impl RequestHeaderConfig {
    /// Settings trusting `client_ca_pem` with the apiserver's default header names.
    pub fn new(client_ca_pem: &str, allowed_names: Vec<String>) -> Result<Self> {
        Ok(RequestHeaderConfig {
            verifier: client_verifier(client_ca_pem)?,
            allowed_names,
            username_headers: vec!["X-Remote-User".into()],
            uid_headers: vec!["X-Remote-Uid".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_header_prefixes: vec!["X-Remote-Extra-".into()],
        })
    }

    /// Settings from the data of `extension-apiserver-authentication`; `None` when the apiserver
    /// publishes no requestheader CA (no aggregation layer configured).
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Option<Self>> {
        let Some(ca) = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(None);
        };
        let list = |key: &str| -> Result<Option<Vec<String>>> {
            match data.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => serde_json::from_str::<Vec<String>>(s)
                    .map(Some)
                    .map_err(|e| Error::Tls(format!("{key}: {e}"))),
            }
        };
        let mut config =
            RequestHeaderConfig::new(ca, list("requestheader-allowed-names")?.unwrap_or_default())?;
        if let Some(v) = list("requestheader-username-headers")?.filter(|v| !v.is_empty()) {
            config.username_headers = v;
        }
        if let Some(v) = list("requestheader-uid-headers")?.filter(|v| !v.is_empty()) {
            config.uid_headers = v;
        }
        if let Some(v) = list("requestheader-group-headers")? {
            config.group_headers = v;
        }
        if let Some(v) = list("requestheader-extra-headers-prefix")? {
            config.extra_header_prefixes = v;
        }
        Ok(Some(config))
    }

    /// The verifier of client chains, for the TLS layer.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.clone()
    }
}

/// Builds a verifier that accepts chains to the CAs in `pem` and lets clients without a
/// certificate through (they authenticate with a token instead).
pub fn client_verifier(pem: &str) -> Result<Arc<dyn ClientCertVerifier>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Tls(format!("requestheader client CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("requestheader client CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(
            "requestheader client CA holds no certificate".into(),
        ));
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::Tls(format!("requestheader client CA: {e}")))
}

/// The current requestheader settings, shared by the TLS layer, the handlers and the refresh loop.
/// Empty until the settings are first read.
#[derive(Clone, Debug, Default)]
pub struct FrontProxy(Arc<RwLock<Option<Arc<RequestHeaderConfig>>>>);

impl FrontProxy {
    /// Holder of `config`.
    pub fn new(config: Option<RequestHeaderConfig>) -> Self {
        FrontProxy(Arc::new(RwLock::new(config.map(Arc::new))))
    }

    /// The current settings.
    pub fn current(&self) -> Option<Arc<RequestHeaderConfig>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the settings.
    pub fn set(&self, config: Option<RequestHeaderConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config.map(Arc::new);
    }
}

/// The user a front proxy asserts, if `peer_chain` (leaf first, as the TLS layer saw it) chains
/// to the requestheader CA, its CN is allowed, and a user name header is present. Headers
/// without such a certificate are never trusted. The TLS layer verified the chain already; it is
/// verified again here against the current CA, so a CA rotated since the handshake counts.
pub fn authenticate_front_proxy(
    peer_chain: Option<&[CertificateDer<'_>]>,
    headers: &HeaderMap,
    config: &RequestHeaderConfig,
) -> Option<UserInfo> {
    let (leaf, intermediates) = peer_chain?.split_first()?;
    if let Err(error) = config
        .verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
    {
        tracing::debug!(%error, "client certificate does not chain to the requestheader CA");
        return None;
    }
    if !config.allowed_names.is_empty() {
        let cn = common_name(leaf)?;
        if !config.allowed_names.contains(&cn) {
            tracing::debug!(cn = %cn, "client certificate CN is not an allowed requestheader name");
            return None;
        }
    }
    let first = |names: &[String]| {
        names.iter().find_map(|h| {
            headers
                .get_all(h.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| !v.is_empty())
                .map(str::to_string)
        })
    };
    let username = first(&config.username_headers)?;
    let uid = first(&config.uid_headers);
    let groups = config
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str(); // lower-case already
        for prefix in &config.extra_header_prefixes {
            let prefix = prefix.to_ascii_lowercase();
            if let Some(key) = name.strip_prefix(prefix.as_str()).filter(|k| !k.is_empty())
                && let Ok(value) = value.to_str()
            {
                extra
                    .entry(percent_decode(key).to_lowercase())
                    .or_default()
                    .push(value.to_string());
            }
        }
    }
    Some(UserInfo {
        username,
        uid,
        groups,
        extra,
    })
}

/// The subject CN of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Extra keys are percent-encoded by the apiserver (Go's `url.PathEscape`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bearer token of a request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

type TokenHash = [u8; 32];

fn token_hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Fixed tokens for standalone mode; only their hashes are kept.
#[derive(Debug, Default)]
pub struct StaticTokens(HashMap<TokenHash, UserInfo>);

impl StaticTokens {
    /// Tokens from lines: `TOKEN` or `TOKEN,USER`; blank lines and `#` comments skipped. A token
    /// without a user name is `histor:token:<line number>`.
    pub fn parse(text: &str) -> StaticTokens {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ',').map(str::trim);
            let token = fields.next().unwrap_or_default();
            if token.is_empty() {
                continue;
            }
            let username = fields
                .next()
                .filter(|u| !u.is_empty())
                .map_or_else(|| format!("histor:token:{}", n + 1), str::to_string);
            tokens.insert(
                token_hash(token),
                UserInfo {
                    username,
                    ..UserInfo::default()
                },
            );
        }
        StaticTokens(tokens)
    }

    /// Tokens from a file.
    pub fn read(path: &Path) -> Result<StaticTokens> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let tokens = StaticTokens::parse(&text);
        if tokens.0.is_empty() {
            return Err(Error::Usage(format!("{}: no tokens", path.display())));
        }
        Ok(tokens)
    }

    /// The user of `token`, if listed.
    pub fn user(&self, token: &str) -> Option<UserInfo> {
        self.0.get(&token_hash(token)).cloned()
    }
}

/// Checks bearer tokens with TokenReviews, caching answers (negative ones too) briefly.
pub struct TokenReviewer {
    client: kube::Client,
    cache: TtlCache<TokenHash, Option<UserInfo>>,
}

impl TokenReviewer {
    /// A reviewer using `client`'s identity (it needs `create tokenreviews`).
    pub fn new(client: kube::Client) -> Self {
        TokenReviewer {
            client,
            cache: TtlCache::new(TOKEN_CACHE_TTL, TOKEN_CACHE_CAPACITY),
        }
    }

    /// The user `token` belongs to, `None` when the apiserver does not accept it.
    pub async fn review(&self, token: &str) -> Result<Option<UserInfo>> {
        let key = token_hash(token);
        if let Some(answer) = self.cache.get(&key) {
            return Ok(answer);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(UserInfo {
                    username: u.username.filter(|n| !n.is_empty())?,
                    uid: u.uid.filter(|n| !n.is_empty()),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })
            });
        self.cache.insert(key, user.clone());
        Ok(user)
    }
}

/// How bearer tokens are checked.
pub enum Tokens {
    /// A fixed list (standalone mode).
    Static(StaticTokens),
    /// TokenReview against the apiserver.
    Review(TokenReviewer),
}

/// Authenticates requests: front proxy first, then bearer token.
pub struct Authenticator {
    /// Requestheader settings; `None` when front-proxy requests are not expected (standalone).
    pub front_proxy: Option<FrontProxy>,
    /// Bearer token checking.
    pub tokens: Tokens,
}

impl Authenticator {
    /// The user behind a request, or [`Error::Unauthorized`].
    pub async fn authenticate(
        &self,
        peer_chain: Option<&[CertificateDer<'_>]>,
        headers: &HeaderMap,
    ) -> Result<UserInfo> {
        if let (Some(front_proxy), Some(chain)) = (&self.front_proxy, peer_chain)
            && let Some(config) = front_proxy.current()
            && let Some(user) = authenticate_front_proxy(Some(chain), headers, &config)
        {
            return Ok(user);
        }
        let Some(token) = bearer_token(headers) else {
            return Err(Error::Unauthorized(
                "Unauthorized: no bearer token and no trusted front-proxy identity".into(),
            ));
        };
        let user = match &self.tokens {
            Tokens::Static(tokens) => tokens.user(token),
            Tokens::Review(reviewer) => reviewer.review(token).await?,
        };
        user.ok_or_else(|| Error::Unauthorized("Unauthorized: the token was not accepted".into()))
    }
}

/// Reads the requestheader settings from `extension-apiserver-authentication`.
pub async fn load_request_header(client: &kube::Client) -> Result<Option<RequestHeaderConfig>> {
    let (namespace, name) = AUTH_CONFIGMAP;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    match cm.and_then(|cm| cm.data) {
        Some(data) => RequestHeaderConfig::from_configmap(&data),
        None => Ok(None),
    }
}

/// Re-reads the requestheader settings every `every` into `front_proxy`. A failed read keeps
/// the current settings: an apiserver hiccup must not lock aggregated requests out.
pub async fn refresh_request_header(
    client: kube::Client,
    front_proxy: FrontProxy,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match load_request_header(&client).await {
            Ok(config) => {
                if config.is_none() {
                    tracing::debug!(
                        "no requestheader client CA published; front-proxy requests are not trusted"
                    );
                }
                front_proxy.set(config);
            }
            Err(error) => {
                tracing::warn!(%error, "reading extension-apiserver-authentication failed; keeping the current requestheader settings")
            }
        }
    }
}
