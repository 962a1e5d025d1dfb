//! `histor audit ingest FILE...`: audit log files (plain or gzip, JSON lines as the apiserver
//! writes them) into a store's audit journal, each event once, then joined to the changes the
//! store holds, as the operator's audit witness does. A progress bar on a terminal.

use super::server::StoreArgs;
use super::usage::{each_line, maybe_gunzip};
use crate::pipeline::ChangeState;
use crate::store::{Location, Query};
use crate::usage::BadLine;
use crate::witness::audit::{AuditWitness, Settings, Taken, take_in};
use crate::witness::verdicts::Verdicts;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Events put in the journal at once.
const CHUNK: usize = 2_000;

/// `histor audit` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Put audit log files into a store's journal and join them to its changes.
    Ingest(IngestArgs),
}

/// Options of `histor audit ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Audit log files (JSON lines; gzip allowed, as rotated files are).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Directory of the store, when `--store` does not name one.
    #[arg(long, default_value = "/var/lib/histor")]
    pub data_dir: PathBuf,
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs a `histor audit` subcommand.
pub async fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Ingest(args) => ingest(args).await,
    }
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let location = Location::parse(
        args.store.store.as_deref(),
        &args.data_dir,
        args.store.store_password_file.as_deref(),
    )?;
    let engine = tokio::task::spawn_blocking(move || location.open())
        .await
        .map_err(|e| Error::Usage(format!("opening the store failed: {e}")))??;
    let journal = engine.audit.clone();
    let files = args.files.clone();
    let (taken, bad) = tokio::task::spawn_blocking(move || read_files(&files, journal.as_ref()))
        .await
        .map_err(|e| Error::Usage(format!("reading audit logs failed: {e}")))??;
    println!(
        "audit events: {} new, {} already taken, {} earlier stages skipped",
        taken.new, taken.duplicate, taken.skipped
    );
    for (why, n) in &bad {
        println!("  {n} line(s) not taken: {}", why.label());
    }
    // Join now, as the operator's witness would: an old log's events whose change is not in
    // this store are let go at once.
    let witness = AuditWitness::new(
        engine.audit,
        Verdicts {
            store: engine.events.clone(),
            notifier: None,
            on_not_applied: None,
            metrics: Arc::new(crate::metrics::Metrics::default()),
        },
        Settings {
            patience: jiff::SignedDuration::ZERO,
            ..Settings::default()
        },
    );
    let report = witness.pass(jiff::Timestamp::now()).await?;
    let store = engine.events;
    let received = tokio::task::spawn_blocking(move || {
        store.query(&Query {
            state: Some(ChangeState::Received),
            limit: 1,
            ..Query::default()
        })
    })
    .await
    .map_err(|e| Error::Usage(format!("reading the store failed: {e}")))??;
    println!(
        "joined: {} verdict(s) written, {} change(s) given the audit account{}",
        report.resolved,
        report.noted,
        if received.events.is_empty() {
            ""
        } else {
            "; some changes are still waiting for a witness"
        }
    );
    Ok(())
}

/// Reads every file into the journal, in chunks; returns what was taken and the bad lines.
fn read_files(
    files: &[PathBuf],
    journal: &dyn crate::store::AuditJournal,
) -> Result<(Taken, BTreeMap<BadLine, u64>)> {
    let bar = super::progress::bytes_bar(files);
    let mut taken = Taken::default();
    let mut bad: BTreeMap<BadLine, u64> = BTreeMap::new();
    let mut pending = Vec::with_capacity(CHUNK);
    let mut failure: Option<Error> = None;
    let flush = |pending: &mut Vec<crate::usage::AuditEvent>, taken: &mut Taken| {
        if pending.is_empty() {
            return Ok(());
        }
        let t = take_in(journal, pending)?;
        taken.new += t.new;
        taken.duplicate += t.duplicate;
        taken.skipped += t.skipped;
        pending.clear();
        Ok::<_, Error>(())
    };
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
        let counted = super::progress::CountingReader {
            inner: file,
            bar: bar.clone(),
        };
        let reader = maybe_gunzip(Box::new(counted)).map_err(|e| Error::file(path, e))?;
        each_line(reader, |line| {
            if failure.is_some() {
                return;
            }
            match line.map(crate::usage::parse_line) {
                Ok(Ok(Some(e))) => pending.push(e),
                Ok(Ok(None)) => {}
                Ok(Err(why)) | Err(why) => *bad.entry(why).or_default() += 1,
            }
            if pending.len() >= CHUNK
                && let Err(e) = flush(&mut pending, &mut taken)
            {
                failure = Some(e);
            }
        })
        .map_err(|e| Error::file(path, e))?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
    }
    flush(&mut pending, &mut taken)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok((taken, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ingest_takes_each_event_once_and_counts_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let mut text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/audit/v1.33/audit.log"
        ))
        .unwrap();
        text.push_str(
            "not json\n{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"auditID\"",
        );
        std::fs::write(&log, text).unwrap();
        let location = Location::Sled(dir.path().join("store"));
        let engine = location.open().unwrap();
        let (taken, bad) = read_files(&[log.clone(), log], engine.audit.as_ref()).unwrap();
        assert_eq!(taken.new, 350, "{taken:?}");
        assert_eq!(taken.duplicate, 350, "the second copy adds nothing");
        assert_eq!(bad.get(&BadLine::NotJson), Some(&2));
        assert_eq!(bad.get(&BadLine::Truncated), Some(&2));
        assert_eq!(engine.audit.counts().unwrap().queued, 350);
    }
}
