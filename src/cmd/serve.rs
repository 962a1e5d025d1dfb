//! `histor serve`: capture, pipeline and store in one process, with policies from files.

use super::files::{load_or_create_key, read_policy_files};
use crate::capture::{self, Capture, RecordObserver, Writer, tls};
use crate::index::PolicyIndex;
use crate::metrics::Metrics;
use crate::notify::{
    FileSecrets, Notifier, NotifyConfig, NotifyMetrics, SecretSource, StaticSecrets,
};
use crate::pipeline::Redactor;
use crate::query::{self, QueryState, auth::StaticTokens};
use crate::store::{EventStore, RetentionRule, SledStore, StoredEvent};
use crate::{Error, Result};
use axum_server::Handle;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Options of `histor serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TrackingPolicy YAML files (several documents per file allowed). Reviews are POSTed to
    /// `/admit/<policy name>`.
    #[arg(long = "policy-file", required = true)]
    pub policy_files: Vec<PathBuf>,
    /// Directory of the store (created when missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM serving certificate (chain). Without it a self-signed one is made in DATA_DIR/tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
    /// Directory of the Secrets that notification sinks refer to, laid out as
    /// `DIR/<namespace>/<name>/<key>` (a mounted Secret has this shape). Files are re-read on use,
    /// so a rotated webhook URL or SMTP password needs no restart.
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// Bearer tokens (one a line, `TOKEN` or `TOKEN,USER`) that may read the query API under
    /// `/apis/query.histor.dev/v1alpha1/`; every listed token sees everything. Without it the
    /// query API is not served.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// A started server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The CA to trust, when histor made the certificate.
    pub ca_file: Option<PathBuf>,
    /// The store, shared with the writer.
    pub store: Arc<SledStore>,
    /// The shared state of the handlers.
    pub capture: Arc<Capture>,
    handle: Handle<SocketAddr>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: std::thread::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    notifier: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish, drains the queue to the store.
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
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| Error::Usage(format!("writer join failed: {e}")))?
            .map_err(|_| Error::Usage("writer thread panicked".into()))?;
        // Deliveries still running get their timeout; unsent ones stay in the durable outbox.
        let (stop, notifier) = self.notifier;
        let _ = stop.send(());
        let _ = notifier.await;
        self.store.flush()?;
        served?.map_err(Error::Io)
    }
}

/// Starts serving and returns once the socket is bound.
pub async fn start(args: ServeArgs) -> Result<Running> {
    // Read first: a bad token file should stop the start before anything is bound or opened.
    let tokens = args
        .token_file
        .as_deref()
        .map(StaticTokens::read)
        .transpose()?;
    let policies = Arc::new(PolicyIndex::new());
    for policy in read_policy_files(&args.policy_files)? {
        tracing::info!(policy = %policy.name(), "policy loaded");
        policies.apply(policy);
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|e| Error::file(&args.data_dir, e))?;
    let key_path = args
        .hmac_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("hmac.key"));
    let redactor = Arc::new(Redactor::new(&load_or_create_key(&key_path)?));
    let store = Arc::new(SledStore::open(args.data_dir.join("store"))?);

    let files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        },
        _ => self_signed(&args)?,
    };
    let rustls_config = tls::load(&files).await?;

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let notifier = notifier(&args, &store, &policies, &mut registry).await?;
    let (writer, writer_thread) = Writer::spawn(
        store.clone() as Arc<dyn EventStore>,
        args.queue_capacity,
        metrics.clone(),
        vec![Arc::new(NotifyObserver(notifier.clone())) as Arc<dyn RecordObserver>],
    )?;
    let capture = Arc::new(Capture {
        policies: policies.clone(),
        redactor,
        writer,
        metrics: metrics.clone(),
        registry: Arc::new(registry),
        deadline: Duration::from_millis(args.deadline_ms),
        ready: Default::default(),
    });

    let handle = Handle::new();
    let mut app = capture::router(capture.clone());
    if let Some(tokens) = tokens {
        let state = QueryState::standalone(store.clone() as Arc<dyn EventStore>, tokens);
        app = app.merge(query::router(Arc::new(state)));
    }
    let server = tokio::spawn(
        axum_server::bind_rustls(args.listen, rustls_config.clone())
            .handle(handle.clone())
            .serve(app.into_make_service()),
    );
    let addr = handle
        .listening()
        .await
        .ok_or_else(|| Error::Usage(format!("could not listen on {}", args.listen)))?;
    let background = vec![
        tokio::spawn(tls::watch(
            rustls_config,
            files.clone(),
            Duration::from_secs(5),
        )),
        tokio::spawn(retention_loop(
            store.clone(),
            policies,
            metrics,
            Duration::from_secs(args.retention_interval_secs.max(1)),
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
        notifier: (stop, delivery),
    })
}

/// The notification hub on the store's database, with every policy's sinks, caught up with
/// events a crash may have stored but not handed to it.
async fn notifier(
    args: &ServeArgs,
    store: &Arc<SledStore>,
    policies: &PolicyIndex,
    registry: &mut Registry,
) -> Result<Notifier> {
    let secrets: Arc<dyn SecretSource> = match &args.secrets_dir {
        Some(dir) => Arc::new(FileSecrets::new(dir)),
        None => Arc::new(StaticSecrets::default()),
    };
    let metrics = NotifyMetrics::default();
    metrics.register(registry);
    let notifier = Notifier::new(
        store.db().clone(),
        secrets,
        NotifyConfig::default(),
        metrics,
    )?;
    for policy in policies.all() {
        if let Err(error) = notifier.set_policy(policy.name(), &policy.spec().notify) {
            tracing::warn!(%error, policy = %policy.name(), "some notification sinks are not usable");
        }
    }
    let (n, s) = (notifier.clone(), store.clone());
    tokio::task::spawn_blocking(move || n.recover_from(s.as_ref()))
        .await
        .map_err(|e| Error::Usage(format!("notification recovery failed: {e}")))??;
    Ok(notifier)
}

/// Hands each durable batch to the notification outbox.
struct NotifyObserver(Notifier);

impl RecordObserver for NotifyObserver {
    fn on_recorded(&self, events: &[StoredEvent]) {
        if let Err(error) = self.0.on_recorded(events) {
            tracing::error!(%error, events = events.len(), "queueing notifications failed; they are recovered at the next start");
        }
    }
}

fn self_signed(args: &ServeArgs) -> Result<tls::CertFiles> {
    let dir = args.data_dir.join("tls");
    let existing = tls::CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: Some(dir.join("ca.crt")),
    };
    if existing.cert.exists() && existing.key.exists() {
        return Ok(existing);
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = args.listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    tls::write_self_signed(&dir, &names)
}

/// Enforces retention and refreshes the store gauges, off the async threads.
async fn retention_loop(
    store: Arc<SledStore>,
    policies: Arc<PolicyIndex>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (store, policies, metrics) = (store.clone(), policies.clone(), metrics.clone());
        let pass = tokio::task::spawn_blocking(move || -> Result<()> {
            let report = store.enforce_retention(
                jiff::Timestamp::now(),
                &|name: &str| policies.retention(name),
                RetentionRule::default(),
            )?;
            metrics.retention_removed.inc_by(report.removed);
            let stats = store.stats()?;
            metrics.store_events.set(stats.events);
            metrics.store_bytes.set(stats.bytes_on_disk);
            Ok(())
        })
        .await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "retention pass failed"),
            Err(error) => tracing::warn!(%error, "retention pass panicked"),
        }
    }
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let running = start(args).await?;
    match &running.ca_file {
        Some(ca) => {
            tracing::info!(addr = %running.addr, ca = %ca.display(), "serving (self-signed: trust this CA)")
        }
        None => tracing::info!(addr = %running.addr, "serving"),
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight reviews and draining the queue");
    running.shutdown().await
}

async fn shutdown_signal() {
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
