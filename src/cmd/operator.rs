//! `histor operator`: the in-cluster operator. Serves the webhook from every replica and, on the
//! leader, turns TrackingPolicies into webhook configurations and writes ChangeRecords.

use super::server::{self, CaptureArgs, Parts};
use crate::capture::{RecordObserver, tls};
use crate::controller::{self, Context, OperatorOptions, PolicyRegistry};
use crate::crd::TrackingPolicySpec;
use crate::index::PolicyIndex;
use crate::notify::{KubeSecrets, Notifier};
use crate::pipeline::CompiledPolicy;
use crate::query::{QueryState, auth::refresh_request_header};
use crate::store::{EventStore, StoredEvent};
use crate::witness::reconcile::Windows;
use crate::witness::{Settings as WitnessSettings, Witness};
use crate::{Error, Result};
use jiff::Timestamp;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options of `histor operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Cluster-facing options.
    #[command(flatten)]
    pub operator: OperatorOptions,
    /// HTTPS address of the webhook (and probes).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Directory of the store (with a shared store: the local spool), the Secret hasher's key
    /// unless `--hmac-key-file` names it.
    #[arg(long, default_value = "/var/lib/histor")]
    pub data_dir: PathBuf,
    /// Where the history is kept (default: in DATA_DIR).
    #[command(flatten)]
    pub store: server::StoreArgs,
    /// Deadline, queue and retention settings.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Retention of events whose policies are gone: oldest kept.
    #[arg(long, default_value = "720h")]
    pub retention_max_age: String,
    /// Retention of events whose policies are gone: most kept per object.
    #[arg(long, default_value_t = 100)]
    pub retention_max_events_per_object: u32,
    /// Do not watch tracked resources: changes stay `unconfirmed`, and what the webhook misses
    /// is not recorded.
    #[arg(long)]
    pub no_watch: bool,
    /// A change not seen committed within this window, while the watch is healthy, is
    /// `notApplied`.
    #[arg(long, default_value = "30s")]
    pub confirm_window: String,
    /// Audit events: the webhook backend, a log file.
    #[command(flatten)]
    pub audit: server::AuditArgs,
}

/// The live policy set: compiled for capture, sinks for the notifier. Reconcile calls it.
struct LivePolicies {
    index: Arc<PolicyIndex>,
    notifier: Notifier,
}

impl PolicyRegistry for LivePolicies {
    fn apply(&self, name: &str, spec: &TrackingPolicySpec) -> Result<(), String> {
        let compiled = CompiledPolicy::compile(name, spec).map_err(|e| e.to_string())?;
        self.index.apply(compiled);
        // A broken sink does not make the policy invalid: it shows in SinksReady instead.
        if let Err(error) = self.notifier.set_policy(name, &spec.notify) {
            tracing::warn!(%error, policy = %name, "some notification sinks are not usable");
        }
        Ok(())
    }

    fn remove(&self, name: &str) {
        self.index.remove(name);
        self.notifier.remove_policy(name);
    }
}

/// Events recorded per policy by this replica since it started, for the policy status.
#[derive(Default)]
struct PolicyStats(Mutex<HashMap<String, (u64, Timestamp)>>);

impl PolicyStats {
    fn get(&self, policy: &str) -> (u64, Option<Timestamp>) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(policy).map_or((0, None), |(n, t)| (*n, Some(*t)))
    }
}

impl RecordObserver for PolicyStats {
    fn on_recorded(&self, events: &[StoredEvent]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            for policy in &e.event.policies {
                let entry = map
                    .entry(policy.clone())
                    .or_insert((0, e.event.received_at));
                entry.0 += 1;
                entry.1 = entry.1.max(e.event.received_at);
            }
        }
    }
}

/// Forwards durable batches to the ChangeRecord writer.
struct Records(Arc<Context>);

impl RecordObserver for Records {
    fn on_recorded(&self, events: &[StoredEvent]) {
        self.0.records.on_recorded(events);
    }
}

/// Forwards verdicts to the ChangeRecord writer, once the context that holds it exists (the
/// witness is made before it).
struct LateRecords(Arc<Mutex<Option<Arc<Context>>>>);

impl RecordObserver for LateRecords {
    fn on_recorded(&self, events: &[StoredEvent]) {
        let ctx = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(ctx) = ctx {
            ctx.records.on_recorded(events);
        }
    }
}

/// Runs the operator until SIGTERM.
pub async fn run(args: OperatorArgs) -> Result<()> {
    let settings = args.operator.settings(&args.data_dir)?;
    let default_retention = crate::store::RetentionRule {
        max_events_per_object: args.retention_max_events_per_object,
        max_age: crate::pipeline::parse_duration(&args.retention_max_age)
            .map_err(|e| Error::Usage(format!("--retention-max-age: {e}")))?,
    };
    let confirm = crate::pipeline::parse_duration(&args.confirm_window)
        .map_err(|e| Error::Usage(format!("--confirm-window: {e}")))?;
    let client = kube::Client::try_default().await?;
    let (redactor, engine, spool) =
        server::open_data_dir(&args.data_dir, &args.capture, &args.store).await?;
    let store = engine.events;
    let policies = Arc::new(PolicyIndex::new());
    let (metrics, registry, notifier) =
        server::metrics_and_notifier(engine.outbox, Arc::new(KubeSecrets::new(client.clone())))?;
    let records_hook: Arc<Mutex<Option<Arc<Context>>>> = Arc::default();
    let witness = (!args.no_watch).then(|| {
        Witness::new(WitnessSettings {
            windows: Windows {
                confirm,
                ..Windows::default()
            },
            on_not_applied: Some(Arc::new(LateRecords(records_hook.clone()))),
            notifier: Some(notifier.clone()),
        })
    });

    // The query API authenticates users like the apiserver does (front-proxy certificates,
    // TokenReview) and shows each only what SubjectAccessReview allows.
    // API usage, when audit events come in, is served from the store's counts.
    let mut query = QueryState::in_cluster(store.clone() as Arc<dyn EventStore>, client.clone());
    if args.audit.enabled() {
        query = query.with_usage(engine.audit.clone());
    }
    let query = Arc::new(query);
    if let Some(front_proxy) = query.front_proxy() {
        tokio::spawn(refresh_request_header(
            client.clone(),
            front_proxy,
            Duration::from_secs(60),
        ));
    }
    let stats = Arc::new(PolicyStats::default());
    let ignored_users = vec![format!(
        "system:serviceaccount:{}:{}",
        settings.namespace, settings.service_account
    )];
    let cert_dir = settings.cert_dir.clone();
    let live = Arc::new(LivePolicies {
        index: policies.clone(),
        notifier: notifier.clone(),
    });
    let health = notifier.clone();
    let stats_of = stats.clone();
    let ctx = Arc::new(
        Context::new(client, settings, live, store.clone())
            .with_stats(Arc::new(move |policy: &str| stats_of.get(policy)))
            .with_sink_health(Arc::new(move |policy: &str| {
                health
                    .health()
                    .into_iter()
                    .filter(|h| h.policy == policy)
                    .collect()
            })),
    );
    let ctx = match &witness {
        Some(w) => {
            let (w, index) = (w.clone(), policies.clone());
            let changes = w.health_changes();
            let health: controller::WatchHealthProvider =
                Arc::new(move |name: &str| index.get(name).map(|p| w.policy_health(&p)));
            Arc::new(
                Arc::into_inner(ctx)
                    .expect("not shared yet")
                    .with_watch_health(health, changes),
            )
        }
        None => ctx,
    };
    if engine.shared {
        ctx.records.follow_shared_store();
    }
    // The audit side: its intake serves on every replica, its witness runs on the leader.
    let audit = server::start_audit(
        &args.audit,
        engine.audit,
        crate::witness::verdicts::Verdicts {
            store: store.clone(),
            notifier: Some(notifier.clone()),
            on_not_applied: Some(Arc::new(LateRecords(records_hook.clone()))),
            metrics: metrics.clone(),
        },
        witness.is_none(),
        true,
    )?;
    // Kubernetes Events, watched on the leader while a policy asks for them.
    let events = Arc::new(crate::witness::events::EventsWitness {
        store: engine.kube_events.clone(),
        cursors: store.clone(),
        policies: policies.clone(),
        metrics: metrics.clone(),
    });
    // The witnesses start on leading, once the capture side (its writer) is up.
    let (capture_tx, capture_rx) = tokio::sync::watch::channel(None);
    let ctx = {
        let (w, a, client, store) = (
            witness.clone(),
            audit.witness.clone(),
            ctx.client.clone(),
            store.clone(),
        );
        let endpoints = audit.follow_cluster.then(|| audit.endpoints.clone());
        let events = events.clone();
        let work: controller::LeaderWork = Arc::new(move || {
            let (w, a, client, store) = (w.clone(), a.clone(), client.clone(), store.clone());
            let endpoints = endpoints.clone();
            let events = events.clone();
            let mut capture_rx = capture_rx.clone();
            Box::pin(async move {
                let capture = match capture_rx.wait_for(Option::is_some).await {
                    Ok(capture) => capture.clone(),
                    Err(_) => return,
                };
                let Some(capture) = capture else { return };
                let openapi_client = client.clone();
                let events_client = client.clone();
                let watch = async {
                    match w {
                        Some(w) => w.run(client, capture, store).await,
                        None => std::future::pending().await,
                    }
                };
                let audit = async {
                    match a {
                        Some(a) => a.run().await,
                        None => std::future::pending().await,
                    }
                };
                // The cluster's endpoints, to name API usage by.
                let openapi = async {
                    match endpoints {
                        Some(e) => e.follow(openapi_client).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::join!(watch, audit, openapi, events.run(events_client));
            })
        });
        Arc::new(
            Arc::into_inner(ctx)
                .expect("not shared yet")
                .with_leader_work(work),
        )
    };
    *records_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
    let controller = tokio::spawn(controller::run(ctx.clone()));

    // Self-managed certificates are written by the certificate loop; cert-manager's are mounted.
    let tls = wait_for_certificates(&cert_dir).await?;
    let retention_ctx = ctx.clone();
    let running = server::start(Parts {
        policies,
        query: Some(query),
        store,
        shared_store: engine.shared,
        redactor,
        notifier,
        metrics,
        registry,
        listen: args.listen,
        tls,
        options: args.capture,
        default_retention,
        ignored_users,
        witnessed: witness.is_some() || audit.witness.is_some(),
        audit: audit.intake,
        observers: {
            let mut o: Vec<Arc<dyn RecordObserver>> = vec![stats, Arc::new(Records(ctx.clone()))];
            o.extend(
                witness
                    .as_ref()
                    .map(|w| w.feed() as Arc<dyn RecordObserver>),
            );
            o
        },
        on_retention: Some(Arc::new(move |report| {
            retention_ctx.records.on_retention(report)
        })),
        spool,
    })
    .await?;
    tracing::info!(addr = %running.addr, "webhook serving");
    let _ = capture_tx.send(Some(running.capture.clone()));
    // From here the certificate loop can check what the server serves before it publishes a
    // caBundle, and with it Ready.
    ctx.set_serving(running.addr);

    let ops =
        crate::capture::ops_router(running.capture.clone()).with_state(running.capture.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", args.metrics_listen)))?;
    let ops_server = tokio::spawn(async move { axum::serve(listener, ops).await });

    let outcome = tokio::select! {
        _ = server::shutdown_signal() => Ok(()),
        result = controller => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(Error::Usage(format!("controller task failed: {error}"))),
        },
    };
    tracing::info!("shutting down: finishing in-flight reviews and draining the queue");
    ops_server.abort();
    running.shutdown().await?;
    outcome
}

/// Waits until the serving certificate and key exist (the certificate loop writes them on its
/// first pass; cert-manager's Secret may take a moment to be issued and mounted).
async fn wait_for_certificates(dir: &std::path::Path) -> Result<tls::CertFiles> {
    let files = tls::CertFiles {
        cert: dir.join(crate::certs::TLS_CRT),
        key: dir.join(crate::certs::TLS_KEY),
        ca: None,
    };
    let mut waited = Duration::ZERO;
    while !(files.cert.exists() && files.key.exists()) {
        if waited.as_secs().is_multiple_of(10) {
            tracing::info!(dir = %dir.display(), "waiting for the serving certificate");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
        if waited > Duration::from_secs(600) {
            return Err(Error::Tls(format!(
                "no serving certificate in {} after 10 minutes",
                dir.display()
            )));
        }
    }
    Ok(files)
}
