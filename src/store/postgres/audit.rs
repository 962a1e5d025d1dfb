//! [`PgAudit`]: the audit journal ([`AuditJournal`]) in the events' schema, so that every
//! replica's audit intake shares one queue and one memory of the keys taken: the apiserver's
//! webhook backend may send a batch to one pod and its retry to another, and each replica may
//! read the same log.
//!
//! - `audit_keys`: key → time (µs), and whether its entry is still queued. The primary key is
//!   what makes an append exactly once across replicas: a key inserted by another transaction
//!   that has not committed yet makes the insert wait for it, then skip the key.
//! - `audit_queue`: seq (`bigserial`, in insertion order) → key, time, value.
//!
//! Every call is one statement, so one transaction of its own, durable when it returns
//! (appending writes both tables in one statement: keys first, then the queue rows of the keys
//! it inserted). Statements are prepared once per connection.

use super::{PgStore, wait_on, with_pooled};
use crate::store::audit::{AuditCounts, AuditEntry, AuditJournal, AuditSeq, UsageRow};
use crate::usage::Counts;
use crate::{Error, Result};
use jiff::Timestamp;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The journal of a [`PgStore`]; from [`PgStore::audit_journal`].
pub(super) struct PgAudit {
    pool: deadpool_postgres::Pool,
    handle: tokio::runtime::Handle,
    op_timeout: Duration,
    sql: Statements,
}

/// The journal's statements, with the schema filled in.
struct Statements {
    append: String,
    queued: String,
    done: String,
    forget: String,
    counts: String,
    usage: String,
    forget_usage: String,
}

impl Statements {
    fn new(s: &str) -> Statements {
        Statements {
            // Keys are inserted in key order, so that two appends sharing keys wait on each
            // other in one order and never deadlock; queue rows in the call's order, which
            // is the order their seqs are drawn in.
            append: format!(
                "WITH fresh AS (INSERT INTO {s}.audit_keys (key, at, queued) \
                 SELECT u.key, u.at, true FROM unnest($1::bytea[], $2::bigint[]) AS u(key, at) \
                 ORDER BY u.key ON CONFLICT (key) DO NOTHING RETURNING key) \
                 INSERT INTO {s}.audit_queue (key, at, value) \
                 SELECT u.key, u.at, u.value FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) \
                 WITH ORDINALITY AS u(key, at, value, n) JOIN fresh ON fresh.key = u.key \
                 ORDER BY u.n RETURNING key"
            ),
            queued: format!(
                "SELECT seq, key, at, value FROM {s}.audit_queue WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            // A queue row is deleted by one transaction only, so each key is updated by the
            // call that took its entry out, and usage is added by a call that took one out.
            // Usage rows are upserted in key order (the caller sorts them), so two calls at once
            // never deadlock.
            done: format!(
                "WITH gone AS (DELETE FROM {s}.audit_queue WHERE seq = ANY($1) RETURNING key), \
                 keys AS (UPDATE {s}.audit_keys k SET queued = false FROM gone \
                 WHERE k.key = gone.key) \
                 INSERT INTO {s}.audit_usage AS a SELECT * FROM unnest($2::bigint[], $3::bytea[], \
                 $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], \
                 $9::bigint[], $10::bigint[], $11::bigint[]) WHERE EXISTS (SELECT 1 FROM gone) \
                 ON CONFLICT (hour, series) DO UPDATE SET calls = a.calls + excluded.calls, \
                 other = a.other + excluded.other, success = a.success + excluded.success, \
                 client_error = a.client_error + excluded.client_error, \
                 server_error = a.server_error + excluded.server_error, \
                 no_code = a.no_code + excluded.no_code, \
                 first_seen = least(a.first_seen, excluded.first_seen), \
                 last_seen = greatest(a.last_seen, excluded.last_seen)"
            ),
            // Oldest first, from the partial index of keys not queued.
            forget: format!(
                "DELETE FROM {s}.audit_keys WHERE key IN (SELECT key FROM {s}.audit_keys \
                 WHERE at < $1 AND NOT queued ORDER BY at LIMIT $2) AND NOT queued"
            ),
            counts: format!(
                "SELECT (SELECT count(*) FROM {s}.audit_queue), \
                 (SELECT count(*) FROM {s}.audit_keys)"
            ),
            usage: format!(
                "SELECT hour, series, calls, other, success, client_error, server_error, \
                 no_code, first_seen, last_seen FROM {s}.audit_usage WHERE hour >= $1 \
                 ORDER BY hour, series LIMIT $2"
            ),
            forget_usage: format!("DELETE FROM {s}.audit_usage WHERE hour < $1"),
        }
    }
}

impl PgStore {
    /// The audit journal, in this store's schema (shared by every replica).
    pub fn audit_journal(&self) -> Arc<dyn AuditJournal> {
        Arc::new(PgAudit::new(self))
    }
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("audit journal {what}"))
}

fn key_of(b: &[u8]) -> Result<[u8; 16]> {
    b.try_into().map_err(|_| corrupt("key"))
}

/// A limit as a statement's `LIMIT` (any `usize` is a valid limit).
fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PgAudit {
    pub(super) fn new(store: &PgStore) -> PgAudit {
        PgAudit {
            pool: store.pool.clone(),
            handle: store.handle.clone(),
            op_timeout: store.op_timeout,
            sql: Statements::new(&store.sql.schema),
        }
    }

    /// Runs `f` with statement `sql`, prepared, on a pooled connection, all within the
    /// operation timeout. After an error the connection is closed rather than pooled (see
    /// `PgStore::with_client`).
    fn run<T>(
        &self,
        sql: &str,
        f: impl AsyncFnOnce(
            &tokio_postgres::Client,
            &tokio_postgres::Statement,
        ) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.op_timeout;
        with_pooled(&self.handle, &self.pool, deadline, |client| {
            wait_on(&self.handle, deadline, async {
                let st = client.prepare_cached(sql).await?;
                f(client, &st).await
            })
        })
    }
}

impl AuditJournal for PgAudit {
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>> {
        // Only the first entry of a key in this call may be queued: only it is sent.
        let mut first: HashMap<[u8; 16], usize> = HashMap::new();
        let (mut keys, mut ats, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e) in entries.iter().enumerate() {
            if first.contains_key(&e.key) {
                continue;
            }
            first.insert(e.key, i);
            keys.push(&e.key[..]);
            ats.push(e.at.as_microsecond());
            values.push(&e.value[..]);
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.run(&self.sql.append, async |c, st| {
            c.query(st, &[&keys, &ats, &values]).await
        })?;
        let queued: HashSet<[u8; 16]> = rows
            .iter()
            .map(|r| key_of(r.get(0)))
            .collect::<Result<_>>()?;
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, e)| first[&e.key] == i && queued.contains(&e.key))
            .collect())
    }

    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>> {
        let limit = limit_of(limit);
        // Seqs start at 1: 0 is before every one.
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let rows = self.run(&self.sql.queued, async |c, st| {
            c.query(st, &[&after, &limit]).await
        })?;
        rows.iter()
            .map(|r| {
                let at = Timestamp::from_microsecond(r.get(2)).map_err(|_| corrupt("time"))?;
                let entry = AuditEntry {
                    key: key_of(r.get(1))?,
                    at,
                    value: r.get(3),
                };
                Ok((r.get::<_, i64>(0) as AuditSeq, entry))
            })
            .collect()
    }

    fn done(&self, seqs: &[AuditSeq], usage: &[UsageRow]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        // A seq past i64 was never handed out: nothing to take out. In order, so that two calls
        // taking out the same entries lock them in one order.
        let mut seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
        seqs.sort_unstable();
        // One row per series and hour (an upsert may not touch a row twice), in key order.
        let mut merged: std::collections::BTreeMap<(i64, &[u8]), Counts> = Default::default();
        for row in usage {
            merged
                .entry((row.hour, &row.series))
                .or_default()
                .merge(&row.counts);
        }
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let time = |t: Option<Timestamp>| t.map(|t| t.as_microsecond());
        let (mut hours, mut series) = (Vec::new(), Vec::new());
        let mut cols: [Vec<i64>; 6] = Default::default();
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for ((hour, s), c) in &merged {
            hours.push(*hour);
            series.push(*s);
            for (col, f) in cols.iter_mut().zip(c.tallies()) {
                col.push(big(f));
            }
            first.push(time(c.first_seen));
            last.push(time(c.last_seen));
        }
        let [calls, other, success, client_error, server_error, no_code] = &cols;
        self.run(&self.sql.done, async |c, st| {
            c.execute(
                st,
                &[
                    &seqs,
                    &hours,
                    &series,
                    calls,
                    other,
                    success,
                    client_error,
                    server_error,
                    no_code,
                    &first,
                    &last,
                ],
            )
            .await
        })?;
        Ok(())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let (before, limit) = (before.as_microsecond(), limit_of(limit));
        let n = self.run(&self.sql.forget, async |c, st| {
            c.execute(st, &[&before, &limit]).await
        })?;
        Ok(n as usize)
    }

    fn counts(&self) -> Result<AuditCounts> {
        let row = self.run(&self.sql.counts, async |c, st| c.query_one(st, &[]).await)?;
        Ok(AuditCounts {
            queued: row.get::<_, i64>(0).max(0) as u64,
            keys: row.get::<_, i64>(1).max(0) as u64,
        })
    }

    fn usage(&self, since: i64, limit: usize) -> Result<Vec<UsageRow>> {
        let limit = limit_of(limit);
        let rows = self.run(&self.sql.usage, async |c, st| {
            c.query(st, &[&since, &limit]).await
        })?;
        let count = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
        let time = |r: &tokio_postgres::Row, i: usize| -> Result<Option<Timestamp>> {
            r.get::<_, Option<i64>>(i)
                .map(|t| Timestamp::from_microsecond(t).map_err(|_| corrupt("usage time")))
                .transpose()
        };
        rows.iter()
            .map(|r| {
                let tallies = std::array::from_fn(|i| count(r, 2 + i));
                Ok(UsageRow {
                    hour: r.get(0),
                    series: r.get(1),
                    counts: Counts::from_tallies(tallies, time(r, 8)?, time(r, 9)?),
                })
            })
            .collect()
    }

    fn forget_usage(&self, before: i64) -> Result<usize> {
        let n = self.run(&self.sql.forget_usage, async |c, st| {
            c.execute(st, &[&before]).await
        })?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    crate::store::audit::conformance::audit_conformance_suite!(
        optional
            || super::super::tests::fresh().map(|(schema, store)| {
                let journal = super::PgAudit::new(&store);
                ((schema, store), journal)
            })
    );
}
