//! Feeding a followed audit log file ([`follow`](super::follow)) to the journal: each batch of
//! lines is parsed, the events put in the journal ([`take_in`](super::take_in)), and only then
//! is the file position saved in the store (a cursor), so a restart neither loses nor repeats
//! an event (repeats would be dropped by the journal all the same).

use super::follow::{FollowNote, Follower, Position, Start};
use super::take_in;
use crate::metrics::Metrics;
use crate::store::{AuditJournal, EventStore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Lines and bytes read at once.
const MAX_LINES: usize = 2_000;
const MAX_BYTES: usize = 8 << 20;

/// A log file to follow.
#[derive(Clone, Debug)]
pub struct LogFile {
    /// The file the apiserver writes (`--audit-log-path`).
    pub path: PathBuf,
    /// Where to begin when no position was saved.
    pub start: Start,
}

impl LogFile {
    /// The store cursor that keeps the position.
    pub fn cursor_key(&self) -> String {
        format!("audit-log:{}", self.path.display())
    }
}

/// Follows `file` for ever, putting its events in `journal` and its position in `store`.
/// Failures (the file unreadable, the store down) are logged and retried; nothing read is
/// given up on until it is in the journal.
pub async fn run(
    file: LogFile,
    store: Arc<dyn EventStore>,
    journal: Arc<dyn AuditJournal>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match follow(&file, &store, &journal, &metrics).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, path = %file.path.display(), "following the audit log failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn follow(
    file: &LogFile,
    store: &Arc<dyn EventStore>,
    journal: &Arc<dyn AuditJournal>,
    metrics: &Metrics,
) -> crate::Result<()> {
    let key = file.cursor_key();
    let saved = {
        let (store, key) = (store.clone(), key.clone());
        super::blocking(move || store.cursor(&key)).await?
    };
    let saved = match saved.as_deref().map(str::parse::<Position>) {
        Some(Ok(p)) => Some(p),
        Some(Err(error)) => {
            tracing::warn!(%error, "the saved audit log position is unreadable; starting afresh");
            None
        }
        None => None,
    };
    let mut follower = Follower::open(&file.path, saved, file.start)
        .map_err(|e| crate::Error::file(&file.path, e))?;
    tracing::info!(path = %file.path.display(), "following the audit log");
    loop {
        let batch = follower
            .next_batch(MAX_LINES, MAX_BYTES)
            .await
            .map_err(|e| crate::Error::file(&file.path, e))?;
        for note in &batch.notes {
            log_note(note);
        }
        let mut events = Vec::with_capacity(batch.lines.len());
        for line in &batch.lines {
            match crate::usage::parse_line(line) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(bad) => metrics.audit_events(bad.label(), 1),
            }
        }
        // Until the events are in the journal the position stays where it was: on failure
        // the same lines are read again by the next follower.
        let (j, s, k) = (journal.clone(), store.clone(), key.clone());
        let position = batch.position.map(|p| p.to_string());
        let taken = super::blocking(move || {
            let taken = take_in(j.as_ref(), &events)?;
            if let Some(p) = position {
                s.set_cursor(&k, &p)?;
            }
            Ok(taken)
        })
        .await?;
        taken.count(metrics);
    }
}

fn log_note(note: &FollowNote) {
    match note {
        FollowNote::Rotated { .. } => tracing::info!("audit log rotated; reading the new file"),
        FollowNote::Truncated { copy: Some(copy) } => {
            tracing::info!(copy = %copy.display(), "audit log truncated (copytruncate); its copy read first")
        }
        FollowNote::Truncated { copy: None } => tracing::warn!(
            "audit log truncated and no copy found: lines written just before may be lost"
        ),
        FollowNote::LineCut { .. } => {
            tracing::warn!("an audit log line was cut by a rotation; counted as truncated")
        }
        FollowNote::LineTooLong { limit, .. } => {
            tracing::warn!(limit, "an audit log line is too long; skipped")
        }
        FollowNote::ResumedElsewhere { path } => {
            tracing::info!(path = %path.display(), "the saved position is in a rotated file; finishing it first")
        }
        FollowNote::SavedNotFound { start, .. } => {
            tracing::warn!(
                ?start,
                "the saved audit log position matches no file; starting afresh"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemAudit, MemStore};
    use std::io::Write;

    /// The recorded log written in two parts with a restart between: every final event lands
    /// in the journal once, none twice.
    #[tokio::test]
    async fn a_restart_neither_loses_nor_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/audit/v1.33/audit.log"
        ))
        .unwrap();
        let lines: Vec<&str> = log.lines().collect();
        let (first, second) = lines.split_at(lines.len() / 2);
        let write = |part: &[&str]| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            for l in part {
                writeln!(f, "{l}").unwrap();
            }
        };
        let store: Arc<dyn EventStore> = Arc::new(MemStore::new());
        let journal = Arc::new(MemAudit::new());
        let metrics = Arc::new(Metrics::default());
        let file = LogFile {
            path: path.clone(),
            start: Start::Beginning,
        };
        let finals = |part: &[&str]| {
            part.iter()
                .filter(|l| {
                    l.contains(r#""stage":"ResponseComplete""#) || l.contains(r#""stage":"Panic""#)
                })
                .count() as u64
        };
        let queued = |n: u64| {
            let journal = journal.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(20), async {
                    while journal.counts().unwrap().keys < n {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .expect("the events reach the journal");
            }
        };
        write(first);
        let task = tokio::spawn(run(
            file.clone(),
            store.clone(),
            journal.clone(),
            metrics.clone(),
        ));
        queued(finals(first)).await;
        task.abort();
        let _ = task.await;
        write(second);
        let task = tokio::spawn(run(file, store.clone(), journal.clone(), metrics.clone()));
        queued(finals(&lines)).await;
        // A little longer: nothing more may come.
        tokio::time::sleep(Duration::from_millis(600)).await;
        task.abort();
        assert_eq!(journal.counts().unwrap().keys, finals(&lines));
        assert!(
            store
                .cursor(&format!("audit-log:{}", path.display()))
                .unwrap()
                .is_some(),
            "the position is kept"
        );
        let dup = metrics
            .audit_events
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: "duplicate",
            })
            .get();
        assert_eq!(
            dup, 0,
            "the position was saved with the events: nothing read twice"
        );
    }
}
