//! `histor serve`: capture, pipeline and store in one process, with policies from files.

use super::files::read_policy_files;
use super::server::{self, CaptureArgs, Parts, Running};
use crate::Result;
use crate::capture::tls;
use crate::index::PolicyIndex;
use crate::notify::{FileSecrets, SecretSource, StaticSecrets};
use crate::query::{QueryState, auth::StaticTokens};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `histor serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TrackingPolicy YAML files (several documents per file allowed). Reviews are POSTed to
    /// `/admit/<policy name>`.
    #[arg(long = "policy-file", required = true)]
    pub policy_files: Vec<PathBuf>,
    /// Directory of the store (created when missing), the Secret hasher's key and the
    /// certificate histor makes.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where the history is kept (default: in DATA_DIR).
    #[command(flatten)]
    pub store: server::StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM serving certificate (chain). Without it a self-signed one is made in DATA_DIR/tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Deadline, queue and retention settings.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Audit events: the webhook backend, a log file.
    #[command(flatten)]
    pub audit: server::AuditArgs,
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
    let (redactor, engine, spool) =
        server::open_data_dir(&args.data_dir, &args.capture, &args.store).await?;
    let store = engine.events;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        },
        _ => self_signed(&args)?,
    };
    let secrets: Arc<dyn SecretSource> = match &args.secrets_dir {
        Some(dir) => Arc::new(FileSecrets::new(dir)),
        None => Arc::new(StaticSecrets::default()),
    };
    let (metrics, registry, notifier) = server::metrics_and_notifier(engine.outbox, secrets)?;
    for policy in policies.all() {
        if let Err(error) = notifier.set_policy(policy.name(), &policy.spec().notify) {
            tracing::warn!(%error, policy = %policy.name(), "some notification sinks are not usable");
        }
    }
    let query = tokens.map(|tokens| {
        let query = QueryState::standalone(store.clone(), tokens);
        Arc::new(if args.audit.enabled() {
            query.with_usage(engine.audit.clone())
        } else {
            query
        })
    });
    // One process, no leader: the audit witness runs here, and is the only witness.
    let audit = server::start_audit(
        &args.audit,
        engine.audit,
        crate::witness::verdicts::Verdicts {
            store: store.clone(),
            notifier: Some(notifier.clone()),
            on_not_applied: None,
            metrics: metrics.clone(),
        },
        true,
        false,
    )?;
    if let Some(w) = audit.witness.clone() {
        tokio::spawn(async move { w.run().await });
    }
    server::start(Parts {
        policies,
        query,
        store,
        shared_store: engine.shared,
        redactor,
        notifier,
        metrics,
        registry,
        listen: args.listen,
        tls,
        options: args.capture,
        default_retention: crate::store::RetentionRule::default(),
        ignored_users: Vec::new(),
        witnessed: audit.witness.is_some(),
        audit: audit.intake,
        observers: Vec::new(),
        on_retention: None,
        spool,
    })
    .await
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

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let running = start(args).await?;
    match &running.ca_file {
        Some(ca) => {
            tracing::info!(addr = %running.addr, ca = %ca.display(), "serving (self-signed: trust this CA)")
        }
        None => tracing::info!(addr = %running.addr, "serving"),
    }
    server::shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight reviews and draining the queue");
    running.shutdown().await
}
