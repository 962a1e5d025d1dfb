//! Where sinks get their credentials: a [`SecretSource`] reads a Secret's keys. [`KubeSecrets`]
//! reads through the Kubernetes API with a short cache, [`FileSecrets`] reads a directory (for
//! `histor serve`). Both pick up rotated values without a restart. Values are never logged, and
//! never read from environment variables.

use crate::crd::{SecretKeyRef, SecretRef};
use crate::{Error, Result};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The keys and values of one Secret. `Debug` shows key names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// A key's value as UTF-8 text, trimmed (files made by `echo` end with a newline).
    pub fn text(&self, key: &str) -> Option<String> {
        self.0
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|s| s.trim().to_string())
    }

    /// A key's raw bytes.
    pub fn bytes(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key).map(Vec::as_slice)
    }
}

/// Reads Secrets. Object-safe so the notifier can hold an `Arc<dyn SecretSource>`.
pub trait SecretSource: Send + Sync + 'static {
    /// All keys of the Secret.
    fn get<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<SecretValues>>;
}

fn secret_error(r: &SecretRef, message: impl Into<String>) -> Error {
    Error::Secret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        message: message.into(),
    }
}

/// Reads one key of a Secret as text.
pub async fn get_key(source: &dyn SecretSource, key: &SecretKeyRef) -> Result<String> {
    let r = SecretRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    };
    let values = source.get(&r).await?;
    values
        .text(&key.key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| secret_error(&r, format!("has no (UTF-8, non-empty) key {:?}", key.key)))
}

/// Secrets read through the Kubernetes API. Values are cached for `ttl` (default 30s) so that a
/// burst of deliveries does not hammer the apiserver, yet a rotated webhook URL or SMTP password is
/// used within that time, without a restart.
pub struct KubeSecrets {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), (Instant, SecretValues)>>,
}

impl KubeSecrets {
    /// Reads through `client` with the default 30s cache.
    pub fn new(client: kube::Client) -> Self {
        Self::with_ttl(client, Duration::from_secs(30))
    }

    /// Reads through `client`, caching values for `ttl`.
    pub fn with_ttl(client: kube::Client, ttl: Duration) -> Self {
        KubeSecrets {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<SecretValues> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }
}

impl SecretSource for KubeSecrets {
    fn get<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<SecretValues>> {
        Box::pin(async move {
            let key = (secret.namespace.clone(), secret.name.clone());
            if let Some(v) = self.cached(&key) {
                return Ok(v);
            }
            let api: kube::Api<Secret> =
                kube::Api::namespaced(self.client.clone(), &secret.namespace);
            let found = api.get_opt(&secret.name).await.map_err(Error::Kube)?;
            let s = found.ok_or_else(|| secret_error(secret, "not found"))?;
            let mut values = BTreeMap::new();
            for (k, v) in s.data.unwrap_or_default() {
                values.insert(k, v.0);
            }
            // stringData is write-only in the API, but a Secret read from a cache may carry it.
            for (k, v) in s.string_data.unwrap_or_default() {
                values.insert(k, v.into_bytes());
            }
            let values = SecretValues(values);
            if let Ok(mut cache) = self.cache.lock() {
                cache.insert(key, (Instant::now(), values.clone()));
            }
            Ok(values)
        })
    }
}

/// Secrets in a directory laid out as `DIR/<namespace>/<name>/<key>` (the shape of a mounted
/// Secret volume per Secret). Files are re-read on every use: they are tiny, and this way a rotated
/// file is picked up at once.
#[derive(Clone, Debug)]
pub struct FileSecrets {
    root: PathBuf,
}

impl FileSecrets {
    /// Reads Secrets below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileSecrets { root: root.into() }
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\\')
}

impl SecretSource for FileSecrets {
    fn get<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<SecretValues>> {
        Box::pin(async move {
            // Names come from policies: refuse anything that could walk out of the directory.
            if !valid_segment(&secret.namespace) || !valid_segment(&secret.name) {
                return Err(secret_error(secret, "invalid namespace or name"));
            }
            let dir = self.root.join(&secret.namespace).join(&secret.name);
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(secret_error(
                        secret,
                        format!("not found in {}", dir.display()),
                    ));
                }
                Err(e) => return Err(Error::file(&dir, e)),
            };
            let mut values = BTreeMap::new();
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| Error::file(&dir, e))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Mounted Secret volumes hold `..data` and timestamped dirs next to the keys.
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if !tokio::fs::metadata(&path)
                    .await
                    .map(|m| m.is_file())
                    .unwrap_or(false)
                {
                    continue;
                }
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| Error::file(&path, e))?;
                values.insert(name, bytes);
            }
            Ok(SecretValues(values))
        })
    }
}

/// Fixed values, for tests and embedding.
#[derive(Default)]
pub struct StaticSecrets(Mutex<HashMap<(String, String), SecretValues>>);

impl StaticSecrets {
    /// Sets (or replaces) a Secret's keys.
    pub fn set(&self, namespace: &str, name: &str, values: &[(&str, &[u8])]) {
        let values = SecretValues(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
        if let Ok(mut m) = self.0.lock() {
            m.insert((namespace.into(), name.into()), values);
        }
    }
}

impl SecretSource for StaticSecrets {
    fn get<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<SecretValues>> {
        let found = self.0.lock().ok().and_then(|m| {
            m.get(&(secret.namespace.clone(), secret.name.clone()))
                .cloned()
        });
        Box::pin(async move { found.ok_or_else(|| secret_error(secret, "not found")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ns: &str, name: &str) -> SecretRef {
        SecretRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// A mocked apiserver answering Secret reads from a script of (path, body or 404).
    fn mock_api(
        script: Vec<(&'static str, Option<serde_json::Value>)>,
    ) -> (kube::Client, tokio::task::JoinHandle<()>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            for (path, body) in script {
                let (request, send) = handle.next_request().await.expect("a request");
                assert_eq!(request.method(), http::Method::GET);
                assert_eq!(request.uri().path(), path);
                let response = match body {
                    Some(b) => Response::new(Body::from(serde_json::to_vec(&b).unwrap())),
                    None => Response::builder()
                        .status(404)
                        .body(Body::from(
                            serde_json::to_vec(&serde_json::json!({
                                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "secrets \"x\" not found"
                            }))
                            .unwrap(),
                        ))
                        .unwrap(),
                };
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), server)
    }

    fn secret(url: &str) -> serde_json::Value {
        use base64::Engine;
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "slack", "namespace": "histor-system"},
            "data": {"url": base64::engine::general_purpose::STANDARD.encode(url)}
        })
    }

    #[tokio::test]
    async fn kube_secrets_are_read_through_the_api_and_reread_after_their_ttl() {
        const PATH: &str = "/api/v1/namespaces/histor-system/secrets/slack";
        let (client, server) = mock_api(vec![
            (PATH, Some(secret("https://hooks.example/one"))),
            (PATH, Some(secret("https://hooks.example/two"))),
            ("/api/v1/namespaces/histor-system/secrets/missing", None),
        ]);
        let source = KubeSecrets::with_ttl(client, Duration::from_millis(50));
        let slack = r("histor-system", "slack");
        let first = source.get(&slack).await.unwrap();
        assert_eq!(
            first.text("url").as_deref(),
            Some("https://hooks.example/one")
        );
        // Within the TTL the cached value serves: no second request yet.
        let cached = source.get(&slack).await.unwrap();
        assert_eq!(
            cached.text("url").as_deref(),
            Some("https://hooks.example/one")
        );
        // After it, a rotated Secret is picked up without a restart.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rotated = source.get(&slack).await.unwrap();
        assert_eq!(
            rotated.text("url").as_deref(),
            Some("https://hooks.example/two")
        );
        let missing = source
            .get(&r("histor-system", "missing"))
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        // Debug output never shows values.
        assert!(!format!("{rotated:?}").contains("hooks.example"));
        drop(source);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn file_secrets_are_reread_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("histor-system/slack");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("url"), "http://one\n").unwrap();
        std::fs::create_dir_all(d.join("..data")).unwrap();
        let s = FileSecrets::new(dir.path());
        let key = SecretKeyRef {
            namespace: "histor-system".into(),
            name: "slack".into(),
            key: "url".into(),
        };
        assert_eq!(get_key(&s, &key).await.unwrap(), "http://one");
        std::fs::write(d.join("url"), "http://two").unwrap();
        assert_eq!(get_key(&s, &key).await.unwrap(), "http://two");
        let v = s.get(&r("histor-system", "slack")).await.unwrap();
        assert_eq!(format!("{v:?}"), "{\"url\"}");
        assert!(s.get(&r("histor-system", "nope")).await.is_err());
        assert!(s.get(&r("..", "slack")).await.is_err());
        let missing = SecretKeyRef {
            key: "token".into(),
            ..key
        };
        let err = get_key(&s, &missing).await.unwrap_err().to_string();
        assert!(
            err.contains("token") && !err.contains("http://two"),
            "{err}"
        );
    }
}
