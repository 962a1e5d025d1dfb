//! `histor history`: read recorded changes straight from a store directory.

use crate::crd::Operation;
use crate::render;
use crate::store::{EventStore, Query, StoredEvent};
use crate::{Error, Result};
use std::path::PathBuf;

/// Options of `histor history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Directory given to `histor serve --data-dir` (its store is DATA_DIR/store).
    #[arg(long, required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// Or the store itself: `sled:DIR`, or a `postgres://` URL as `histor serve --store` takes.
    #[command(flatten)]
    pub store: super::server::StoreArgs,
    /// Only this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this kind or resource (`Deployment`, `deployments`, `deployments.apps`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only objects with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only changes by this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this operation.
    #[arg(long)]
    pub operation: Option<Operation>,
    /// Only changes received at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<jiff::Timestamp>,
    /// Only changes received before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<jiff::Timestamp>,
    /// Most changes to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The events as a JSON array.
    Json,
}

/// Up to `limit` matching events, newest first, across as many store pages as that takes.
fn collect(store: &dyn EventStore, mut query: Query, limit: usize) -> Result<Vec<StoredEvent>> {
    let mut events = Vec::new();
    while events.len() < limit {
        query.limit = limit - events.len();
        let page = store.query(&query)?;
        events.extend(page.events);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    Ok(events)
}

/// Prints the matching changes, newest first.
pub fn run(args: HistoryArgs) -> Result<()> {
    let location = crate::store::Location::parse(
        args.store.store.as_deref(),
        &args.data_dir.clone().unwrap_or_default(),
        args.store.store_password_file.as_deref(),
    )?;
    let store = location.open()?.events;
    let query = Query {
        namespace: args.namespace,
        kind: args.kind,
        name: args.name,
        user: args.user,
        operation: args.operation,
        since: args.since,
        until: args.until,
        limit: args.limit,
        ..Query::default()
    };
    let events = collect(&*store, query, args.limit)?;
    let out = match args.output {
        Output::Table if events.is_empty() => "No changes recorded that match.\n".to_string(),
        Output::Table => render::events_table(&events),
        Output::Json => {
            let events: Vec<_> = events.iter().map(|e| &e.event).collect();
            serde_json::to_string_pretty(&events).map_err(Error::Json)? + "\n"
        }
    };
    print!("{out}");
    Ok(())
}
