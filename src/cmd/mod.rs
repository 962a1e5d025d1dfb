//! The subcommands of the `histor` binary. Each module wires library parts together for one job;
//! the logic they use lives in the library modules.

mod audit;
mod demo;
mod files;
mod history;
mod operator;
mod progress;
mod replay;
mod serve;
mod server;
mod store_copy;
mod usage;

pub use demo::REVIEWS as RECORDED_REVIEWS;
pub use files::{load_or_create_key, read_policy_files};
pub use serve::{ServeArgs, start};
pub use server::{AuditArgs, CaptureArgs, Running};

use crate::Result;
use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};

/// histor: who changed what in a Kubernetes cluster, when, and exactly how.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HISTOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is unset, such as `info` or `histor=debug` (default: `info`;
    /// `warn` for the demo, whose report is its output).
    #[arg(long, global = true, env = "HISTOR_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run capture, pipeline and store without a cluster, with policies read from files.
    Serve(Box<ServeArgs>),
    /// Record AdmissionReviews from files (one JSON document per file, or JSON lines).
    Replay(replay::ReplayArgs),
    /// Read recorded changes from a store directory.
    History(history::HistoryArgs),
    /// Run the operator in a cluster: webhook, store, notifications, TrackingPolicy controller
    /// and ChangeRecords.
    Operator(Box<operator::OperatorArgs>),
    /// Run a self-contained demo: a real server on a temporary store, fed recorded reviews.
    Demo(demo::DemoArgs),
    /// API usage from audit log files: which endpoints, at which level, by which clients;
    /// deprecated APIs still called, and the release that removes them.
    Usage(usage::UsageArgs),
    /// Audit log files into a store: `histor audit ingest FILE...` takes each event once and
    /// joins it to the changes the store holds.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Store maintenance: `histor store copy` moves a history (a sled directory to
    /// PostgreSQL, say) with every id and state.
    Store {
        /// What to do.
        #[command(subcommand)]
        command: store_copy::StoreCommand,
    },
}

impl Cli {
    /// The log filter to use when RUST_LOG is unset.
    pub fn log_level(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(level), _) => level,
            (None, Command::Demo(_)) => "warn",
            (None, _) => "info",
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Replay(args) => replay::run(args).await,
        // The store blocks on its I/O: off the runtime's threads.
        Command::History(args) => tokio::task::spawn_blocking(move || history::run(args))
            .await
            .map_err(|e| crate::Error::Usage(format!("history failed: {e}")))?,
        Command::Demo(args) => demo::run(args).await,
        Command::Operator(args) => operator::run(*args).await,
        Command::Usage(args) => usage::run(args),
        Command::Store { command } => store_copy::run(command).await,
    }
}
