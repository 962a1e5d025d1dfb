//! The operator's side of self-managed certificates: keeps the CA and serving certificate in a
//! Secret in its namespace (only the leader renews or rotates) and writes the serving pair where
//! the capture server reloads it. What to do and how is decided by [`crate::certs`].

use crate::certs::{CertTimings, SECRET_NAME, TlsMaterial, decide, issue, write_serving_files};
use crate::{Error, Result};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::path::PathBuf;
use tracing::{debug, info};

/// Reads and writes the TLS Secret and the serving files.
#[derive(Clone)]
pub struct CertManager {
    client: kube::Client,
    namespace: String,
    sans: Vec<String>,
    cert_dir: PathBuf,
    timings: CertTimings,
}

impl CertManager {
    /// A manager for the Secret in `namespace`, writing `tls.crt`/`tls.key` into `cert_dir`.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        sans: Vec<String>,
        cert_dir: impl Into<PathBuf>,
        timings: CertTimings,
    ) -> CertManager {
        CertManager {
            client,
            namespace: namespace.into(),
            sans,
            cert_dir: cert_dir.into(),
            timings,
        }
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Secret's material and resourceVersion, if it exists and is complete.
    pub async fn read(&self) -> Result<Option<(TlsMaterial, Option<String>)>> {
        let secret = self.api().get_opt(SECRET_NAME).await?;
        Ok(secret.and_then(|s| {
            let rv = s.metadata.resource_version.clone();
            TlsMaterial::from_secret(&s).map(|m| (m, rv))
        }))
    }

    /// Leader only: brings the Secret up to date at `now` and returns what it holds afterwards.
    pub async fn ensure(&self, now: Timestamp) -> Result<TlsMaterial> {
        let current = self.read().await?;
        let (material, rv) = match &current {
            Some((m, rv)) => (Some(m), rv.clone()),
            None => (None, None),
        };
        let action = decide(material, &self.sans, now, &self.timings);
        let Some(next) = issue(&action, material, &self.sans, now, &self.timings)? else {
            debug!(secret = SECRET_NAME, "webhook certificates are current");
            // `issue` returns None only for Nothing, which needs existing material.
            return material
                .cloned()
                .ok_or_else(|| Error::Tls("no certificate material".into()));
        };
        info!(secret = SECRET_NAME, action = ?action, "updating webhook certificates");
        let mut secret = next.to_secret(&self.namespace);
        // Optimistic concurrency: a replica that lost leadership mid-way cannot overwrite the
        // new leader's rotation.
        secret.metadata.resource_version = rv;
        self.api()
            .patch(
                SECRET_NAME,
                &PatchParams::apply(super::FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(next)
    }

    /// Writes the serving certificate and key into the cert directory when they differ from what
    /// is there; returns whether anything was written. Each file is written to a temporary name
    /// and renamed, so the capture server's reloader never reads half a file.
    pub fn write_files(&self, material: &TlsMaterial) -> Result<bool> {
        write_serving_files(&self.cert_dir, material)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::test_support::*;
    use crate::certs::{CA_CRT, CA_KEY, CA_PREVIOUS, TLS_CRT, TLS_KEY, signed_by};
    use http::{Request, Response};
    use kube::client::Body;

    #[tokio::test]
    async fn ensure_renews_an_expiring_leaf_in_the_existing_secret() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let old = created(t0());
        let mut secret = serde_json::to_value(old.to_secret("histor-system")).expect("json");
        secret["metadata"]["resourceVersion"] = "7".into();
        let path = "/api/v1/namespaces/histor-system/secrets/histor-webhook-tls".to_string();
        let server = super::super::fixtures::serve(handle, vec![(path.clone(), secret)]);
        let manager = CertManager::new(client, "histor-system", sans(), "/nonexistent", timings());

        // day 25 of a 30-day leaf: renew, keep the CA
        let renewed = manager.ensure(t0() + days(25)).await.expect("ensure");
        assert_eq!(renewed.ca_crt, old.ca_crt);
        assert_ne!(renewed.tls_crt, old.tls_crt);
        // the next check finds nothing to do
        let same = manager.ensure(t0() + days(25)).await.expect("ensure");
        assert_eq!(same, renewed);
        drop(manager);

        let calls = server.await.expect("server");
        assert_eq!(
            super::super::fixtures::summary(&calls),
            vec![
                format!("GET {path}"),
                format!("PATCH {path}"),
                format!("GET {path}")
            ]
        );
        let body = &calls[1].body;
        // optimistic concurrency against a stale leader
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        let written =
            TlsMaterial::from_secret(&serde_json::from_value(body.clone()).expect("secret"))
                .expect("material");
        assert_eq!(written, renewed);
        assert!(signed_by(&written.tls_crt, &old.ca_crt));
    }

    #[tokio::test]
    async fn ensure_creates_the_secret_by_server_side_apply() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let manager = CertManager::new(client, "histor-system", sans(), "/nonexistent", timings());
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("GET secret");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/histor-system/secrets/histor-webhook-tls"
            );
            send.send_response(super::super::fixtures::not_found());

            let (req, send) = handle.next_request().await.expect("PATCH secret");
            assert_eq!(req.method(), http::Method::PATCH);
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/histor-system/secrets/histor-webhook-tls"
            );
            let query = req.uri().query().unwrap_or_default().to_string();
            assert!(query.contains("fieldManager=histor") && query.contains("force=true"));
            let body = super::super::fixtures::body_json(req).await;
            let data = body["data"].as_object().expect("data");
            for key in [CA_CRT, CA_KEY, TLS_CRT, TLS_KEY] {
                assert!(data.contains_key(key), "{key} written");
            }
            assert!(!data.contains_key(CA_PREVIOUS));
            assert_eq!(body["type"], "kubernetes.io/tls");
            send.send_response(super::super::fixtures::json_response(&body));
        });
        let m = manager.ensure(t0()).await.expect("ensure");
        assert!(signed_by(&m.tls_crt, &m.ca_crt));
        server.await.expect("scenario");
    }
}
