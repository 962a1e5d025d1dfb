//! The endpoints live usage is named by: an index of the cluster's own OpenAPI v2 document
//! (`/openapi/v2`), read by the operator at start and again when the cluster's API changes
//! (a CustomResourceDefinition written, or requests to a group version or resource the index
//! does not know), at most once per [`MIN_REFRESH`]; or a document from a file (`histor serve
//! --audit-openapi`); or none, and endpoints are named by group, version, resource and verb.
//!
//! Reading `/openapi/v2` needs no grant of its own: the `system:discovery` role gives it to
//! every authenticated user.

use crate::usage::{AuditEvent, EndpointIndex, Series, Unmapped};
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Least time between two reads of the document (a burst of CRDs is read once).
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// The document is read again at least this often, in case a change went unseen (an
/// aggregated API that came back).
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Largest document read; clusters with many CRDs reach tens of MB.
const MAX_DOCUMENT_BYTES: usize = 256 << 20;

/// The current index, shared by the witness (reads) and the loop that refreshes it.
#[derive(Default)]
pub struct Endpoints {
    current: RwLock<Option<Arc<EndpointIndex>>>,
    wanted: tokio::sync::Notify,
    /// When a refresh was last asked for, so that the asking is cheap when it repeats.
    asked: Mutex<Option<Instant>>,
    /// True until [`follow`](Endpoints::follow) has tried its first read: the witness waits for
    /// it (a little), so that the first requests are not counted without operationIds.
    first_read_pending: std::sync::atomic::AtomicBool,
}

impl Endpoints {
    /// No index: endpoints are named without operationIds until one is set.
    pub fn none() -> Endpoints {
        Endpoints::default()
    }

    /// A fixed index.
    pub fn fixed(index: EndpointIndex) -> Endpoints {
        let endpoints = Endpoints::default();
        endpoints.set(index);
        endpoints
    }

    /// Endpoints that [`follow`](Endpoints::follow) will read from the cluster.
    pub fn from_cluster() -> Endpoints {
        let endpoints = Endpoints::default();
        endpoints
            .first_read_pending
            .store(true, std::sync::atomic::Ordering::Release);
        endpoints
    }

    /// True while the cluster's document has not been tried yet.
    pub fn first_read_pending(&self) -> bool {
        self.first_read_pending
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The index now.
    pub fn get(&self) -> Option<Arc<EndpointIndex>> {
        self.current.read().clone()
    }

    fn set(&self, index: EndpointIndex) {
        *self.current.write() = Some(Arc::new(index));
    }

    /// Notes what an audit event tells of the API's shape: a written CRD or a request the
    /// index could not name asks for the document to be read again.
    pub fn saw(&self, event: &AuditEvent, series: &Series) {
        let crd_written = event.object_ref.as_ref().is_some_and(|o| {
            o.api_group == "apiextensions.k8s.io" && o.resource == "customresourcedefinitions"
        }) && matches!(
            event.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) && event.code().is_some_and(|c| (200..300).contains(&c));
        let unknown = matches!(
            series,
            Series::Unmapped(Unmapped::UnknownGroupVersion | Unmapped::UnknownResource)
        ) && self.current.read().is_some();
        if crd_written || unknown {
            self.ask();
        }
    }

    fn ask(&self) {
        let mut asked = self.asked.lock();
        if asked.is_none_or(|at| at.elapsed() >= MIN_REFRESH) {
            *asked = Some(Instant::now());
            self.wanted.notify_one();
        }
    }

    /// Reads the cluster's document now, then whenever asked (at most once per
    /// [`MIN_REFRESH`]) and every [`REFRESH_EVERY`]; runs until dropped.
    pub async fn follow(&self, client: kube::Client) {
        loop {
            match read(&client).await {
                Ok(index) => {
                    tracing::info!(
                        operations = index.len(),
                        "read the cluster's OpenAPI document for API usage"
                    );
                    self.set(index);
                }
                Err(error) => tracing::warn!(
                    %error,
                    "reading the cluster's OpenAPI document failed; usage names endpoints \
                     without operationIds until it is read"
                ),
            }
            self.first_read_pending
                .store(false, std::sync::atomic::Ordering::Release);
            tokio::select! {
                _ = self.wanted.notified() => {}
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            tokio::time::sleep(MIN_REFRESH).await;
        }
    }
}

/// Reads and indexes `/openapi/v2`.
async fn read(client: &kube::Client) -> crate::Result<EndpointIndex> {
    let request = http::Request::get("/openapi/v2")
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| crate::Error::Usage(format!("OpenAPI request: {e}")))?;
    let text = client.request_text(request).await?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(crate::Error::Usage(format!(
            "the cluster's OpenAPI document is {} bytes, more than the {MAX_DOCUMENT_BYTES} read",
            text.len()
        )));
    }
    tokio::task::spawn_blocking(move || EndpointIndex::from_v2(text.as_bytes()))
        .await
        .map_err(|e| crate::Error::Usage(format!("indexing the OpenAPI document: {e}")))?
}
