//! The operator: turns TrackingPolicies into ValidatingWebhookConfigurations, manages the webhook's
//! certificates, and writes ChangeRecords back from the store.
//!
//! I/O handles live in [`Context`]; the logic that decides things lives in pure functions
//! ([`webhook::build`], [`certs::decide`], [`records::summarise`]). Depends on `crd`, `pipeline` and
//! `store` types; the capture side is reached only through the [`PolicyRegistry`] trait and the
//! serving files in the cert directory, so this module never links against it.
//!
//! Only the leader (see [`leader`]) reconciles policies, rotates certificates and writes
//! ChangeRecords; every replica keeps its serving certificate files current and serves the webhook.

pub mod certs;
pub mod leader;
pub mod options;
pub mod policy;
pub mod records;
pub mod webhook;

#[cfg(test)]
pub(crate) mod fixtures;

pub use options::OperatorOptions;
pub use policy::{error_policy, reconcile};
pub use records::ChangeRecordWriter;

use crate::certs::CertTimings;
use crate::crd::TrackingPolicySpec;
use crate::store::EventStore;
use certs::CertManager;
use jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use webhook::WebhookClient;

/// Field manager of every server-side apply histor makes.
pub const FIELD_MANAGER: &str = "histor";
/// Finalizer histor puts on TrackingPolicies so their webhook configuration goes with them.
pub const FINALIZER: &str = "histor.dev/cleanup";

pub use crate::{Error, Result};

/// The capture side's in-memory index of compiled policies. The integrator implements it for the
/// real index; reconcile calls it so the capture side sees policy changes at once.
pub trait PolicyRegistry: Send + Sync {
    /// Compiles and installs (or replaces) policy `name`. `Err` carries a message fit for a
    /// condition and an Event, such as which CEL expression or glob is bad and why.
    fn apply(&self, name: &str, spec: &TrackingPolicySpec) -> Result<(), String>;
    /// Forgets policy `name`.
    fn remove(&self, name: &str);
}

pub use crate::notify::SinkHealth;

/// `events recorded, newest receipt time` for a policy name.
pub type StatsProvider = Arc<dyn Fn(&str) -> (u64, Option<Timestamp>) + Send + Sync>;

/// Health of a policy's notification sinks, by policy name.
pub type SinkHealthProvider = Arc<dyn Fn(&str) -> Vec<SinkHealth> + Send + Sync>;

/// The `WatchesHealthy` condition of a policy, by name: `(status, reason, message)`, status
/// `None` for Unknown; `None` when the policy is unknown.
pub type WatchHealthProvider =
    Arc<dyn Fn(&str) -> Option<(Option<bool>, String, String)> + Send + Sync>;

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertMode {
    /// histor makes its own CA and serving certificate (Secret `histor-webhook-tls`).
    SelfManaged,
    /// cert-manager provides the certificate (mounted into the cert dir) and injects the CA.
    CertManager {
        /// `NAMESPACE/NAME` of the cert-manager Certificate.
        certificate: String,
    },
}

/// The operator's settings (see [`OperatorOptions`] for the command line that produces them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the operator runs in: its Secret, Lease and cluster-scoped ChangeRecords live here.
    pub namespace: String,
    /// Service account the operator runs as; its requests never reach its own webhook.
    pub service_account: String,
    /// How the apiserver reaches the webhook.
    pub webhook: WebhookClient,
    /// Certificate source.
    pub cert_mode: CertMode,
    /// Directory holding `tls.crt` and `tls.key` for the capture server.
    pub cert_dir: PathBuf,
    /// Certificate lifetimes and rotation pacing.
    pub cert_timings: CertTimings,
    /// How often certificates are checked.
    pub cert_check_interval: Duration,
    /// Least time between two writes of one ChangeRecord.
    pub record_interval: Duration,
    /// How often a Ready policy is reconciled again (refreshes eventsRecorded and sink health).
    pub resync_interval: Duration,
    /// Whether to elect a leader; without it this replica always leads.
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name when known).
    pub identity: String,
    /// Names the serving certificate carries besides the webhook's own.
    pub extra_sans: Vec<String>,
    /// Label selector of the TrackingPolicies this operator reconciles (all when `None`).
    pub policy_selector: Option<String>,
}

impl Settings {
    /// Defaults for a given namespace and webhook client, for tests and embedding.
    pub fn new(namespace: impl Into<String>, webhook: WebhookClient) -> Settings {
        Settings {
            namespace: namespace.into(),
            service_account: "histor".into(),
            webhook,
            cert_mode: CertMode::SelfManaged,
            cert_dir: PathBuf::from("/var/run/histor/tls"),
            cert_timings: CertTimings::default(),
            cert_check_interval: Duration::from_secs(60),
            record_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(60),
            leader_election: true,
            lease_name: "histor-leader".into(),
            identity: leader::default_identity(),
            extra_sans: Vec::new(),
            policy_selector: None,
        }
    }
}

/// Everything reconcile and the background loops need.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events about policies.
    pub recorder: Recorder,
    /// The capture side's policy index.
    pub registry: Arc<dyn PolicyRegistry>,
    /// Settings.
    pub settings: Settings,
    /// Writes ChangeRecords; the capture writer reports durable batches to it.
    pub records: Arc<ChangeRecordWriter>,
    stats: Option<StatsProvider>,
    sink_health: Option<SinkHealthProvider>,
    watch_health: Option<(WatchHealthProvider, watch::Receiver<u64>)>,
    match_conditions: OnceLock<bool>,
    ca_bundle: watch::Sender<Option<Vec<u8>>>,
    serving: watch::Sender<Option<SocketAddr>>,
    failures: Mutex<HashMap<String, u32>>,
    leader_work: Option<LeaderWork>,
}

/// More work for the leader (the witness), started on leading and cancelled on losing it.
pub type LeaderWork =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

impl Context {
    /// A context over `client`, reporting to `registry` and reading history from `store`.
    pub fn new(
        client: Client,
        settings: Settings,
        registry: Arc<dyn PolicyRegistry>,
        store: Arc<dyn EventStore>,
    ) -> Context {
        let reporter = Reporter {
            controller: "histor".into(),
            instance: Some(settings.identity.clone()),
        };
        let records = Arc::new(ChangeRecordWriter::new(
            client.clone(),
            store,
            settings.namespace.clone(),
            settings.record_interval,
        ));
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            records,
            settings,
            stats: None,
            sink_health: None,
            watch_health: None,
            match_conditions: OnceLock::new(),
            ca_bundle: watch::channel(None).0,
            serving: watch::channel(None).0,
            failures: Mutex::new(HashMap::new()),
            leader_work: None,
        }
    }

    /// Runs `work` while this replica leads (the witness).
    pub fn with_leader_work(mut self, work: LeaderWork) -> Context {
        self.leader_work = Some(work);
        self
    }

    /// Reports `eventsRecorded` and `lastEventTime` in policy status.
    pub fn with_stats(mut self, stats: StatsProvider) -> Context {
        self.stats = Some(stats);
        self
    }

    /// Reports the witness's watches in the `WatchesHealthy` condition, written again whenever
    /// `changes` moves.
    pub fn with_watch_health(
        mut self,
        health: WatchHealthProvider,
        changes: watch::Receiver<u64>,
    ) -> Context {
        self.watch_health = Some((health, changes));
        self
    }

    /// Moves when a `WatchesHealthy` condition may have changed (never without a witness).
    pub fn watch_health_changes(&self) -> Option<watch::Receiver<u64>> {
        self.watch_health.as_ref().map(|(_, rx)| rx.clone())
    }

    /// The `WatchesHealthy` condition of `policy`, when a witness runs.
    pub fn watch_health(&self, policy: &str) -> Option<(Option<bool>, String, String)> {
        self.watch_health.as_ref().and_then(|(f, _)| f(policy))
    }

    /// Reports sink health in the `SinksReady` condition.
    pub fn with_sink_health(mut self, health: SinkHealthProvider) -> Context {
        self.sink_health = Some(health);
        self
    }

    /// Fixes whether webhook configurations carry `matchConditions` ([`run`] asks the server).
    pub fn set_match_conditions(&self, supported: bool) {
        let _ = self.match_conditions.set(supported);
    }

    fn match_conditions(&self) -> bool {
        self.match_conditions.get().copied().unwrap_or(false)
    }

    /// Sets the caBundle webhook configurations carry (self-managed certificates).
    pub fn set_ca_bundle(&self, bundle: Option<Vec<u8>>) {
        self.ca_bundle.send_if_modified(|current| {
            if *current == bundle {
                false
            } else {
                *current = bundle;
                true
            }
        });
    }

    /// Tells the certificate loop where the capture server listens, once it does. Until then
    /// (and until a handshake there verifies against it) no caBundle is published, so no policy
    /// says Ready while the apiserver would refuse the certificate histor serves.
    pub fn set_serving(&self, addr: SocketAddr) {
        self.serving.send_replace(Some(addr));
    }

    /// Where the capture server listens, once it does.
    fn serving(&self) -> Option<SocketAddr> {
        *self.serving.borrow()
    }

    fn ca_bundle(&self) -> Option<Vec<u8>> {
        self.ca_bundle.borrow().clone()
    }

    fn stats(&self, policy: &str) -> (u64, Option<Timestamp>) {
        self.stats.as_ref().map_or((0, None), |f| f(policy))
    }

    fn sink_health(&self, policy: &str) -> Option<Vec<SinkHealth>> {
        self.sink_health.as_ref().map(|f| f(policy))
    }

    /// Counts a failed reconcile of `policy` and returns how many in a row.
    fn failed(&self, policy: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(policy.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, policy: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(policy);
    }
}

/// Runs the operator until an unrecoverable error: leader election, the certificate loop (every
/// replica), and, while leading, the TrackingPolicy controller and the ChangeRecord writer.
pub async fn run(ctx: Arc<Context>) -> Result<()> {
    let version = ctx.client.apiserver_version().await?;
    let supported = webhook::supports_match_conditions(&version);
    ctx.set_match_conditions(supported);
    info!(
        version = %version.git_version,
        match_conditions = supported,
        "connected to the apiserver"
    );

    let (leading, _lease) = leader::elect(ctx.client.clone(), &ctx.settings).await?;

    let certs = cert_loop(ctx.clone(), leading.clone());
    let records = ctx.records.clone().run(leading.clone());
    let work = leader::while_leader(leading.clone(), {
        let work = ctx.leader_work.clone();
        move || {
            let work = work.clone();
            async move {
                match work {
                    Some(w) => w().await,
                    None => std::future::pending().await,
                }
            }
        }
    });
    let controller = leader::while_leader(leading, {
        let ctx = ctx.clone();
        move || policy::run_controller(ctx.clone())
    });
    tokio::join!(certs, records, controller, work);
    Ok(())
}

/// Name of the APIService of the query API, when installed (by the Helm chart).
pub const API_SERVICE: &str = "v1alpha1.query.histor.dev";

/// Puts the CA bundle into the query API's APIService, so the aggregator trusts the serving
/// certificate. An APIService that is absent (standalone installs) is fine, and one whose Service
/// lives in another namespace belongs to another installation of histor: it is left alone.
async fn inject_api_service_ca(client: &Client, namespace: &str, bundle: &[u8]) {
    use k8s_openapi::ByteString;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    let api: Api<APIService> = Api::all(client.clone());
    let current = match api.get_opt(API_SERVICE).await {
        Ok(Some(service)) => {
            let spec = service.spec.unwrap_or_default();
            let theirs = spec.service.as_ref().and_then(|s| s.namespace.as_deref());
            if theirs != Some(namespace) {
                debug!(apiservice = API_SERVICE, service_namespace = ?theirs, "the APIService points at another installation; not injecting");
                return;
            }
            spec.ca_bundle
        }
        Ok(None) => return,
        Err(error) => {
            warn!(%error, apiservice = API_SERVICE, "reading the APIService failed");
            return;
        }
    };
    if current.as_ref().map(|b| b.0.as_slice()) == Some(bundle) {
        return;
    }
    let patch = serde_json::json!({"spec": {"caBundle": ByteString(bundle.to_vec())}});
    match api
        .patch(API_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => info!(apiservice = API_SERVICE, "CA bundle injected"),
        Err(error) => warn!(%error, apiservice = API_SERVICE, "injecting the CA bundle failed"),
    }
}

/// Keeps the serving files and the caBundle current. The leader also renews and rotates.
async fn cert_loop(ctx: Arc<Context>, mut leading: watch::Receiver<bool>) {
    let settings = &ctx.settings;
    if let CertMode::CertManager { certificate } = &settings.cert_mode {
        info!(%certificate, "certificates come from cert-manager");
        return;
    }
    let manager = CertManager::new(
        ctx.client.clone(),
        settings.namespace.clone(),
        settings
            .webhook
            .subject_alt_names()
            .into_iter()
            .chain(settings.extra_sans.iter().cloned())
            .collect(),
        settings.cert_dir.clone(),
        settings.cert_timings,
    );
    let server_name = settings.webhook.server_name();
    let mut serving = ctx.serving.subscribe();
    loop {
        let is_leader = *leading.borrow_and_update();
        let material = if is_leader {
            manager.ensure(Timestamp::now()).await.map(Some)
        } else {
            manager.read().await.map(|m| m.map(|(m, _)| m))
        };
        let wait = match material.and_then(|m| match m {
            Some(m) => manager.write_files(&m).map(|_| Some(m)),
            None => Ok(None),
        }) {
            Ok(Some(m)) => {
                let bundle = m.ca_bundle();
                match served_verifies(&mut serving, &server_name, &bundle).await {
                    Ok(()) => {
                        ctx.set_ca_bundle(Some(bundle.clone()));
                        if is_leader {
                            inject_api_service_ca(&ctx.client, &settings.namespace, &bundle).await;
                        }
                        settings.cert_check_interval
                    }
                    Err(error) => {
                        warn!(%error, "the capture server does not serve a certificate the CA bundle verifies yet; policies stay not Ready");
                        Duration::from_secs(2)
                    }
                }
            }
            Ok(None) => {
                info!(
                    leader = is_leader,
                    "waiting for the leader to create webhook certificates"
                );
                Duration::from_secs(5)
            }
            Err(error) => {
                warn!(%error, leader = is_leader, "webhook certificate check failed");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = leading.changed() => if changed.is_err() { return },
        }
    }
}

/// How long the certificate loop waits for the capture server to load newly written files.
const SERVE_WAIT: Duration = Duration::from_secs(15);

/// Waits until the capture server listens, then until a handshake with it verifies against
/// `bundle` (the server reloads written files within a second or two), at most [`SERVE_WAIT`].
async fn served_verifies(
    serving: &mut watch::Receiver<Option<SocketAddr>>,
    server_name: &str,
    bundle: &[u8],
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SERVE_WAIT;
    let addr = loop {
        if let Some(addr) = *serving.borrow_and_update() {
            break addr;
        }
        // The capture server starts once the first certificate files exist.
        match tokio::time::timeout_at(deadline, serving.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Err(Error::Tls("the capture server is not listening yet".into())),
        }
    };
    loop {
        let attempt =
            crate::capture::tls::probe(addr, server_name, bundle, Duration::from_secs(2)).await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod api_service_tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    const PATH: &str = "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.query.histor.dev";

    fn api_service(namespace: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {"group": "query.histor.dev", "version": "v1alpha1",
                     "service": {"namespace": namespace, "name": "histor", "port": 443},
                     "groupPriorityMinimum": 1000, "versionPriority": 15}
        })
    }

    async fn inject_into(owner: &str) -> Vec<String> {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = fixtures::serve(handle, vec![(PATH.into(), api_service(owner))]);
        inject_api_service_ca(&client, "histor-system", b"CA").await;
        drop(client);
        fixtures::summary(&server.await.expect("server"))
    }

    #[tokio::test]
    async fn the_ca_goes_only_into_this_installations_api_service() {
        assert_eq!(
            inject_into("histor-system").await,
            vec![format!("GET {PATH}"), format!("PATCH {PATH}")]
        );
        // Another installation's operator (another namespace) keeps its own caBundle.
        assert_eq!(inject_into("team-b").await, vec![format!("GET {PATH}")]);
    }
}
