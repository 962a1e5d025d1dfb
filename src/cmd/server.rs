//! Assembles a running capture server from its parts: the HTTPS endpoint, the group-commit writer
//! feeding the store, the notification delivery loop and the retention loop. `histor serve` and
//! `histor operator` differ only in where policies, certificates and secrets come from.

use super::files::load_or_create_key;
use crate::capture::conn::{self, ConnLimits, Limiter};
use crate::capture::{self, Capture, RecordObserver, Writer, tls};
use crate::index::PolicyIndex;
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifyConfig, NotifyMetrics, SecretSource};
use crate::pipeline::Redactor;
use crate::query::{self, QueryState};
use crate::store::{
    DEFAULT_SPOOL_BYTES, Engine, EventStore, Location, OutboxStore, RetentionReport, RetentionRule,
    Spool, StoredEvent,
};
use crate::{Error, Result};
use axum_server::Handle;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How the apiserver's audit events reach histor, `histor serve` and `histor operator` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Take audit events on `POST /audit` (the apiserver's `--audit-webhook-config-file`
    /// pointing at this server). Pair it with `--webhook-client-ca`, so that only the
    /// apiserver can post them.
    #[arg(long)]
    pub audit_webhook: bool,
    /// Follow this audit log file (the apiserver's `--audit-log-path`, JSON format) through
    /// rotation, its position kept in the store.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Where to begin a log file no position was kept for: `end` (only what comes) or
    /// `beginning`.
    #[arg(long, value_enum, default_value_t = LogStart::End)]
    pub audit_log_start: LogStart,
    /// How long an audit event waits for the change it names to be stored.
    #[arg(long, default_value = "2m")]
    pub audit_patience: String,
    /// How long audit IDs are remembered, so that an event sent twice is taken once.
    #[arg(long, default_value = "1h")]
    pub audit_remember: String,
    /// How long API usage counted from audit events is kept.
    #[arg(long, default_value = "720h")]
    pub audit_usage_retention: String,
    /// The cluster's OpenAPI v2 document (`kubectl get --raw /openapi/v2 > FILE`), to name
    /// usage endpoints by operationId. The operator reads the cluster's own when not given.
    #[arg(long, value_name = "FILE")]
    pub audit_openapi: Option<PathBuf>,
}

impl Default for AuditArgs {
    /// No audit events: what `histor demo` and tests start with.
    fn default() -> Self {
        AuditArgs {
            audit_webhook: false,
            audit_log: None,
            audit_log_start: LogStart::End,
            audit_patience: "2m".into(),
            audit_remember: "1h".into(),
            audit_usage_retention: "720h".into(),
            audit_openapi: None,
        }
    }
}

/// Where to begin a new audit log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogStart {
    /// Its first line.
    Beginning,
    /// Past its last line.
    End,
}

impl AuditArgs {
    /// True when audit events come in some way: the audit log is a witness.
    pub fn enabled(&self) -> bool {
        self.audit_webhook || self.audit_log.is_some()
    }

    /// The witness's settings; `only_witness` when no watch decides received changes.
    pub fn settings(&self, only_witness: bool) -> Result<crate::witness::audit::Settings> {
        let duration = |flag: &str, v: &str| {
            crate::pipeline::parse_duration(v).map_err(|e| Error::Usage(format!("--{flag}: {e}")))
        };
        let patience = duration("audit-patience", &self.audit_patience)?;
        Ok(crate::witness::audit::Settings {
            patience,
            remember: duration("audit-remember", &self.audit_remember)?,
            unconfirmed_after: only_witness.then_some(patience),
            usage_retention: duration("audit-usage-retention", &self.audit_usage_retention)?,
        })
    }

    /// The log file to follow, if any.
    pub fn log_file(&self) -> Option<crate::witness::audit::logfile::LogFile> {
        use crate::witness::audit::follow::Start;
        self.audit_log
            .clone()
            .map(|path| crate::witness::audit::logfile::LogFile {
                path,
                start: match self.audit_log_start {
                    LogStart::Beginning => Start::Beginning,
                    LogStart::End => Start::End,
                },
            })
    }
}

/// The audit side of a server, as [`start_audit`] makes it.
pub struct AuditSide {
    /// What `POST /audit` writes to, when the webhook backend is on.
    pub intake: Option<Arc<capture::audit::AuditIntake>>,
    /// The witness to run (on the leader), when audit events come in some way.
    pub witness: Option<Arc<crate::witness::audit::AuditWitness>>,
    /// The endpoints usage is named by; to follow the cluster's document (on the leader) when
    /// `follow_cluster`.
    pub endpoints: Arc<crate::witness::audit::endpoints::Endpoints>,
    /// True when no document was given: the operator reads the cluster's.
    pub follow_cluster: bool,
}

/// Makes the audit side: the `/audit` intake, the witness, and the log follower, which it
/// starts (every replica follows the file it can read; the journal takes each event once).
/// `in_cluster`: the operator, which reads the cluster's endpoints unless given a document.
pub fn start_audit(
    args: &AuditArgs,
    journal: Arc<dyn crate::store::AuditJournal>,
    verdicts: crate::witness::verdicts::Verdicts,
    only_witness: bool,
    in_cluster: bool,
) -> Result<AuditSide> {
    use crate::witness::audit::endpoints::Endpoints;
    if !args.enabled() {
        return Ok(AuditSide {
            intake: None,
            witness: None,
            endpoints: Arc::new(Endpoints::none()),
            follow_cluster: false,
        });
    }
    let settings = args.settings(only_witness)?;
    let endpoints = match &args.audit_openapi {
        Some(path) => Arc::new(Endpoints::fixed(super::usage::read_document(path)?)),
        None if in_cluster => Arc::new(Endpoints::from_cluster()),
        None => Arc::new(Endpoints::none()),
    };
    if let Some(file) = args.log_file() {
        tokio::spawn(crate::witness::audit::logfile::run(
            file,
            verdicts.store.clone(),
            journal.clone(),
            verdicts.metrics.clone(),
        ));
    }
    let intake = args.audit_webhook.then(|| {
        Arc::new(capture::audit::AuditIntake::new(
            journal.clone(),
            capture::audit::DEFAULT_AUDIT_SLOTS,
        ))
    });
    let witness = Arc::new(
        crate::witness::audit::AuditWitness::new(journal, verdicts, settings)
            .with_endpoints(endpoints.clone()),
    );
    Ok(AuditSide {
        intake,
        witness: Some(witness),
        follow_cluster: in_cluster && args.audit_openapi.is_none(),
        endpoints,
    })
}

/// Options every capture server takes, `histor serve` and `histor operator` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Key for hashing Secret values; made once in DATA_DIR/hmac.key when not given.
    #[arg(long)]
    pub hmac_key_file: Option<PathBuf>,
    /// Longest time a review waits for its durable write before it is answered anyway.
    #[arg(long, default_value_t = 500)]
    pub deadline_ms: u64,
    /// Events that may wait for the writer; beyond it reviews are answered and counted as dropped.
    #[arg(long, default_value_t = 16_384)]
    pub queue_capacity: usize,
    /// Seconds between retention passes.
    #[arg(long, default_value_t = 10)]
    pub retention_interval_secs: u64,
    /// Longest TLS handshake of the HTTPS port.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Longest wait for a request's headers: the first request of a connection and, with
    /// HTTP/1.1, each next one on a kept-alive connection.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed. Longer than the 90 s
    /// after which Go clients (the apiserver) drop idle connections themselves, so a request
    /// never races the server's close.
    #[arg(long, default_value_t = 120_000)]
    pub idle_timeout_ms: u64,
    /// Longest time to receive a review's body once its headers are in; a slower one gets 408
    /// and its connection is closed.
    #[arg(long, default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Most connections the HTTPS port keeps open; more are closed at once. 0: the open-files
    /// limit (RLIMIT_NOFILE) less a quarter of it (at least 64) for the store, the Kubernetes
    /// client and the sinks, at most 1024.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Most connections open at once from one source address, so that one local process or pod
    /// cannot take every slot. The apiserver needs few: it multiplexes reviews over HTTP/2.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_source: usize,
    /// PEM CA of the client certificate the apiserver presents to webhooks (configured in its
    /// AdmissionConfiguration). When set, `/admit` answers only requests with a certificate from
    /// this CA (others get 401 or 403 and are not recorded).
    #[arg(long)]
    pub webhook_client_ca: Option<PathBuf>,
    /// Names (subject CN or DNS SAN) one of which the webhook client certificate must carry;
    /// any certificate from the CA when empty. Comma-separated.
    #[arg(long, value_delimiter = ',', requires = "webhook_client_ca")]
    pub webhook_client_names: Vec<String>,
    /// Connection slots, out of `--max-connections`, kept for clients with a certificate from
    /// the webhook client CA: the apiserver still gets in when others (even from its own
    /// address) hold every other slot. Only with `--webhook-client-ca`.
    #[arg(long, default_value_t = 16)]
    pub reserved_connections: usize,
}

impl Default for CaptureArgs {
    fn default() -> Self {
        CaptureArgs {
            hmac_key_file: None,
            deadline_ms: 500,
            queue_capacity: 16_384,
            retention_interval_secs: 10,
            handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            body_timeout_ms: 10_000,
            max_connections: 0,
            max_connections_per_source: 64,
            webhook_client_ca: None,
            webhook_client_names: Vec::new(),
            reserved_connections: 16,
        }
    }
}

impl CaptureArgs {
    /// The connection limits these options ask for, the cap derived from the process's
    /// open-files limit when not given.
    pub fn conn_limits(&self) -> ConnLimits {
        let max_connections = match self.max_connections {
            0 => conn::nofile_soft_limit()
                .map_or(conn::MAX_DERIVED_CONNECTIONS, conn::derived_max_connections),
            n => n,
        };
        ConnLimits {
            max_connections,
            max_per_source: self.max_connections_per_source.clamp(1, max_connections),
            // At most half: the apiserver needs few, and the others must not starve either.
            reserved: match self.webhook_client_ca {
                Some(_) => self.reserved_connections.min(max_connections / 2),
                None => 0,
            },
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

/// Where the history is kept.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// The store: a directory or `sled:DIR` (default: DATA_DIR/store, this process only), or
    /// `postgres://USER@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA.pem`, one history
    /// shared by every replica (`schema=NAME` picks the schema, `histor` by default).
    #[arg(long, env = "HISTOR_STORE")]
    pub store: Option<String>,
    /// File holding the PostgreSQL password (a mounted Secret's key), rather than the URL.
    #[arg(long, env = "HISTOR_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
}

/// Opens the store `store` names (in `data_dir` by default), for a shared store the local spool
/// (`data_dir/spool`) that keeps batches while it cannot take them, and the Secret hasher with its key
/// (made once in `data_dir` when missing; replicas sharing a store must share the key too, so
/// that one Secret value hashes the same on each: give them `--hmac-key-file`).
pub async fn open_data_dir(
    data_dir: &Path,
    options: &CaptureArgs,
    store: &StoreArgs,
) -> Result<(Arc<Redactor>, Engine, Option<Arc<Spool>>)> {
    std::fs::create_dir_all(data_dir).map_err(|e| Error::file(data_dir, e))?;
    let key_path = options
        .hmac_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("hmac.key"));
    let redactor = Arc::new(Redactor::new(&load_or_create_key(&key_path)?));
    let location = Location::parse(
        store.store.as_deref(),
        data_dir,
        store.store_password_file.as_deref(),
    )?;
    if location.is_shared() && options.hmac_key_file.is_none() {
        tracing::warn!(
            "a shared store without --hmac-key-file: each replica hashes Secret values with its own key, so their records of one Secret disagree"
        );
    }
    // Opening may block on the network (PostgreSQL) or the disk: off the runtime's threads.
    let engine = {
        let location = location.clone();
        tokio::task::spawn_blocking(move || location.open())
            .await
            .map_err(|e| Error::Usage(format!("opening the store failed: {e}")))??
    };
    tracing::info!(store = %location, "store open");
    // A store across the network can be down or slow; batches wait on local disk meanwhile.
    let spool = if engine.shared {
        let path = data_dir.join("spool");
        Some(Arc::new(Spool::open(&path, DEFAULT_SPOOL_BYTES)?))
    } else {
        None
    };
    Ok((redactor, engine, spool))
}

/// The metrics registry (capture and notification metrics) and the notification hub on the
/// store's outbox (its engine's `outbox()`), reading sink credentials from `secrets`.
pub fn metrics_and_notifier(
    outbox: Arc<dyn OutboxStore>,
    secrets: Arc<dyn SecretSource>,
) -> Result<(Arc<Metrics>, Registry, Notifier)> {
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let notify_metrics = NotifyMetrics::default();
    notify_metrics.register(&mut registry);
    let notifier = Notifier::new(outbox, secrets, NotifyConfig::default(), notify_metrics)?;
    Ok((metrics, registry, notifier))
}

/// Called with every retention pass's report (ChangeRecords of emptied objects go away).
pub type RetentionHook = Arc<dyn Fn(&RetentionReport) + Send + Sync>;

/// Everything a server is made of.
pub struct Parts {
    /// Compiled policies, shared with whoever keeps them current.
    pub policies: Arc<PolicyIndex>,
    /// The query API, served on the same port when present.
    pub query: Option<Arc<QueryState>>,
    /// The store (any engine; the notifier was built on its outbox beforehand).
    pub store: Arc<dyn EventStore>,
    /// Other replicas write the store too: the notifier takes every replica's events from it
    /// (on the replica that delivers) rather than from this writer.
    pub shared_store: bool,
    /// Secret value hasher.
    pub redactor: Arc<Redactor>,
    /// Notification hub on the store's database.
    pub notifier: Notifier,
    /// Capture metrics, registered in `registry`.
    pub metrics: Arc<Metrics>,
    /// Every metric of the process.
    pub registry: Registry,
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Serving certificate files (reloaded when they change).
    pub tls: tls::CertFiles,
    /// Deadline, queue and retention settings.
    pub options: CaptureArgs,
    /// Retention of events whose policies are gone.
    pub default_retention: RetentionRule,
    /// Users whose requests are never recorded (the operator's own service account).
    pub ignored_users: Vec<String>,
    /// A witness will confirm changes (events start `received`, else `unconfirmed`).
    pub witnessed: bool,
    /// Where `POST /audit` puts audit events; `None` refuses them.
    pub audit: Option<Arc<capture::audit::AuditIntake>>,
    /// Told about every durable batch, besides the notifier.
    pub observers: Vec<Arc<dyn RecordObserver>>,
    /// Told about every retention pass.
    pub on_retention: Option<RetentionHook>,
    /// Where events wait on local disk while a shared store (PostgreSQL) is down or slow; `None`
    /// for a local one (sled), whose failures a spool on the same disk would not survive.
    pub spool: Option<Arc<Spool>>,
}

/// A started server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The CA to trust, when histor made the certificate.
    pub ca_file: Option<PathBuf>,
    /// The store, shared with the writer.
    pub store: Arc<dyn EventStore>,
    /// The shared state of the handlers.
    pub capture: Arc<Capture>,
    handle: Handle<SocketAddr>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: std::thread::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    delivery: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish, drains the queue to the store. Every wait
    /// is bounded (in all at most ~21 s, inside Kubernetes' default 30 s grace period), so a
    /// store that cannot write does not keep the process alive: in-flight reviews get 5 s, the
    /// writer [`SHUTDOWN_GRACE`](crate::capture::writer) to write the queue and [`WRITER_JOIN`]
    /// to exit, deliveries [`DELIVERY_STOP`], the last flush [`LAST_FLUSH`].
    pub async fn shutdown(self) -> Result<()> {
        self.capture.ready.store(false, Ordering::Relaxed);
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        let served = self
            .server
            .await
            .map_err(|e| Error::Usage(format!("server task failed: {e}")));
        for task in self.background {
            task.abort();
        }
        // Dropping the last Writer (inside Capture) closes the queue; the writer drains and exits.
        drop(self.capture);
        let writer = self.writer;
        // A plain thread, not spawn_blocking: the runtime waits for its blocking tasks at exit,
        // and a writer stuck in sled would keep it waiting for ever.
        match bounded(WRITER_JOIN, move || writer.join()).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(Error::Usage("writer thread panicked".into())),
            None => tracing::error!(
                waited_s = WRITER_JOIN.as_secs(),
                "event writer did not finish: exiting without it; queued events are NOT recorded"
            ),
        }
        // Deliveries still running get their timeout; unsent ones stay in the durable outbox.
        let (stop, delivery) = self.delivery;
        let _ = stop.send(());
        if tokio::time::timeout(DELIVERY_STOP, delivery).await.is_err() {
            tracing::warn!("notification delivery did not stop in time; unsent ones stay queued");
        }
        // A sync flushes the whole database, the notification outbox's writes with the events.
        let store = self.store;
        match bounded(LAST_FLUSH, move || store.sync()).await {
            Some(Ok(())) => {}
            Some(Err(error)) => tracing::warn!(%error, "last store flush failed"),
            None => tracing::warn!("last store flush did not return in time"),
        }
        served?.map_err(Error::Io)
    }
}

/// Longest wait for the writer thread to exit at shutdown: its own grace, plus an attempt.
pub const WRITER_JOIN: Duration = Duration::from_secs(8);
/// Longest wait for notification deliveries to stop at shutdown.
pub const DELIVERY_STOP: Duration = Duration::from_secs(5);
/// Longest wait for the last flush at shutdown.
pub const LAST_FLUSH: Duration = Duration::from_secs(3);

/// Runs `f` on a thread of its own and waits for it at most `limit`; `None` when it did not
/// finish (the thread is left to run, or to stay stuck, until the process exits).
async fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("histor-shutdown".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return None;
    }
    tokio::time::timeout(limit, rx).await.ok()?.ok()
}

/// Starts serving and returns once the socket is bound.
pub async fn start(parts: Parts) -> Result<Running> {
    let Parts {
        policies,
        query,
        store,
        shared_store,
        redactor,
        notifier,
        metrics,
        registry,
        listen,
        tls: files,
        options,
        default_retention,
        ignored_users,
        witnessed,
        audit,
        mut observers,
        on_retention,
        spool,
    } = parts;
    // Client certificates are requested (never required by the TLS layer) to authenticate the
    // apiserver: as the webhook client (`/admit`), and as the front proxy of the query API.
    let client_ca = options
        .webhook_client_ca
        .as_deref()
        .map(|path| tls::ClientCa::read(path, options.webhook_client_names.clone()))
        .transpose()?
        .map(Arc::new);
    let clients = query::tls::ClientCerts {
        front_proxy: query.as_ref().and_then(|q| q.front_proxy()),
        webhook: client_ca.clone(),
    };
    let rustls_config = query::tls::load(&files, &clients)?;

    if shared_store {
        // Whichever replica delivers takes every replica's events from the store.
        notifier.follow(store.clone()).await?;
    } else {
        // Catch up on events a crash stored but did not hand to the notifier, before new ones
        // flow; then the writer hands each durable batch over.
        notifier.recover_from(store.clone()).await?;
        observers.insert(
            0,
            Arc::new(NotifyObserver {
                notifier: notifier.clone(),
                runtime: tokio::runtime::Handle::current(),
            }),
        );
    }
    let (writer, writer_thread) = Writer::spawn_with(
        store.clone(),
        options.queue_capacity,
        metrics.clone(),
        observers,
        capture::Timing::for_deadline(Duration::from_millis(options.deadline_ms)),
        spool,
    )?;
    let capture = Arc::new(Capture {
        policies: policies.clone(),
        redactor,
        writer,
        metrics: metrics.clone(),
        registry: Arc::new(registry),
        deadline: Duration::from_millis(options.deadline_ms),
        body_timeout: Duration::from_millis(options.body_timeout_ms),
        client_ca: client_ca.clone(),
        ignored_users,
        witnessed,
        audit,
        ready: Default::default(),
        warnings: Default::default(),
    });

    let limits = options.conn_limits();
    tracing::info!(
        max_connections = limits.max_connections,
        per_source = limits.max_per_source,
        reserved = limits.reserved,
        "connection limits"
    );
    let limiter = Limiter::new(limits, &metrics, client_ca);
    let handle = Handle::new();
    let mut app = capture::router(capture.clone());
    if let Some(query) = query {
        app = app.merge(query::router(query));
    }
    let server = tokio::spawn(
        query::tls::bind(listen, rustls_config.clone(), limiter)
            .handle(handle.clone())
            .serve(app.into_make_service()),
    );
    let addr = handle
        .listening()
        .await
        .ok_or_else(|| Error::Usage(format!("could not listen on {listen}")))?;
    let background = vec![
        tokio::spawn(query::tls::watch(
            rustls_config,
            files.clone(),
            clients,
            // Often enough that a certificate the operator just wrote is served within a
            // second; policies wait for it before they say Ready.
            Duration::from_secs(1),
        )),
        tokio::spawn(retention_loop(
            store.clone(),
            policies,
            metrics,
            Duration::from_secs(options.retention_interval_secs.max(1)),
            default_retention,
            on_retention,
        )),
    ];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let delivery = tokio::spawn(async move {
        notifier
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    capture.ready.store(true, Ordering::Relaxed);
    Ok(Running {
        addr,
        ca_file: files.ca,
        store,
        capture,
        handle,
        server,
        writer: writer_thread,
        background,
        delivery: (stop, delivery),
    })
}

/// Hands each durable batch to the notification outbox. The writer calls it on its own thread
/// (not one of the runtime's), which waits here until the outbox's commit is durable.
struct NotifyObserver {
    notifier: Notifier,
    runtime: tokio::runtime::Handle,
}

impl RecordObserver for NotifyObserver {
    fn on_recorded(&self, events: &[StoredEvent]) {
        if let Err(error) = self.runtime.block_on(self.notifier.on_recorded(events)) {
            tracing::error!(%error, events = events.len(), "queueing notifications failed; they are recovered at the next start");
        }
    }
}

/// Enforces retention and refreshes the store gauges, off the async threads.
async fn retention_loop(
    store: Arc<dyn EventStore>,
    policies: Arc<PolicyIndex>,
    metrics: Arc<Metrics>,
    every: Duration,
    default_retention: RetentionRule,
    on_retention: Option<RetentionHook>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (store, policies, metrics, hook) = (
            store.clone(),
            policies.clone(),
            metrics.clone(),
            on_retention.clone(),
        );
        let pass = tokio::task::spawn_blocking(move || -> Result<bool> {
            let started = std::time::Instant::now();
            let report = store.enforce_retention(
                jiff::Timestamp::now(),
                &|name: &str| policies.retention(name),
                default_retention,
            )?;
            metrics
                .retention_latency
                .observe(started.elapsed().as_secs_f64());
            metrics.retention_removed.inc_by(report.removed);
            if let Some(hook) = hook {
                hook(&report);
            }
            let stats = store.stats()?;
            metrics.store_events.set(stats.events);
            metrics.store_bytes.set(stats.bytes_on_disk);
            Ok(report.incomplete)
        })
        .await;
        match pass {
            // More is due than one pass removes (a burst of changes): keep going, with a pause
            // that leaves the writer and the CPU to capture.
            Ok(Ok(true)) => tick.reset_after(Duration::from_millis(200)),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "retention pass failed"),
            Err(error) => tracing::warn!(%error, "retention pass panicked"),
        }
    }
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
