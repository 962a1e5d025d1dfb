//! [`PgStore`]: the [`EventStore`] on PostgreSQL, shared by every replica.
//!
//! Tables and indexes are in [`schema`]. What makes one database serve several writers:
//! - **One writer at a time.** A batch is one transaction that first takes an advisory lock, so
//!   ids grow in commit order across replicas (`max(receipt time, last id + 1)`, from `meta`),
//!   chains and heads never race, and dedupe by request uid (the `requests` table) holds across
//!   replicas: the apiserver may send one request's webhooks, or a retry, to different pods.
//!   Group commit: the batch is written with one multi-row statement per table and one COMMIT,
//!   so the lock is held for a few round trips whatever the batch size.
//! - **States cached, heads checked.** Each replica keeps the state after each object's newest
//!   event it wrote; the head read in the batch's transaction says whether the cache is still
//!   the newest (another replica may have written since), else the state is rebuilt from the
//!   object's rows back to its last snapshot (one indexed query).
//! - **Commit answers lost.** A batch writes its token and outcomes into `batches`; when the
//!   answer to a COMMIT is lost and the writer retries the same batch, the retry finds them and
//!   reports what the commit did rather than calling its own events duplicates.
//!
//! The contract is blocking; this engine runs tokio-postgres on a small runtime of its own and
//! blocks the calling thread (a blocking-pool thread, as the contract requires) on it. The audit
//! journal ([`audit`]) and the notification outbox ([`outbox`]) live in the same schema.

use super::history::{self, ChainPos};
use super::query::{self, PageBuilder};
use super::{
    AppendOutcome, EventId, EventStore, ObjectHead, Page, Query, Resolution, RetentionReport,
    RetentionRule, StoreStats, StoredEvent, digest,
};
use crate::crd::Operation;
use crate::pipeline::{AuditInfo, Captured, ChangeEvent, ChangeState, Commit};
use crate::{Error, Result};
use jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

mod append;
mod audit;
mod chain;
mod config;
mod kube_events;
mod outbox;
mod retention;
mod schema;
mod sql;
#[cfg(test)]
pub(crate) mod tests;

use self::chain::Chain;
pub use self::config::PgConfig;
use self::sql::Sql;

/// States kept for the writer; past this the cache is dropped and rebuilt on demand.
const STATE_CACHE: usize = 4096;

/// Wraps a driver error. (The one place this engine turns its crate's errors into histor's.)
pub(super) fn pg_err(e: tokio_postgres::Error) -> Error {
    // The driver's own text of a server error is only "db error": say what the server said.
    match e.as_db_error() {
        Some(db) => Error::store(std::io::Error::other(format!(
            "postgres: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        ))),
        None => Error::store(e),
    }
}

pub(super) fn timed_out() -> Error {
    Error::store(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "postgres: no answer in time",
    ))
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    Error::store(e)
}

/// The PostgreSQL event store. Share it behind an `Arc`; appends serialise on a lock of this
/// replica and on the database's advisory lock across replicas; queries run beside them.
pub struct PgStore {
    /// The driver's runtime; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: deadpool_postgres::Pool,
    sql: Sql,
    /// Who this writer is in `batches`.
    writer_id: i64,
    /// The settings it was opened with (the outbox's leader connection is made from them).
    config: PgConfig,
    writer: Mutex<Writer>,
    /// One retention pass at a time in this replica.
    retention: Mutex<()>,
    /// Longest wait for one statement (queries, retention).
    op_timeout: Duration,
    /// Longest time one append may take, so that a writer with somewhere else to put a batch
    /// (a local spool) puts it there while the reviews still wait.
    append_timeout: Duration,
}

struct Writer {
    /// Object → (its newest event this replica knows of, the state after it).
    states: HashMap<i64, (EventId, Value)>,
    /// Policies and kind aliases known to be in the database already.
    policies: HashSet<String>,
    kinds: HashSet<(String, String)>,
    /// The batch whose last attempt failed: (its fingerprint, the token it wrote with).
    pending: Option<(u64, i64)>,
}

/// An object's newest event and how its chain stands, as `heads` holds it.
#[derive(Clone, Copy, Debug)]
struct Head {
    last: EventId,
    count: u64,
    pos: ChainPos,
}

/// The key of an event's object: its uid, or without one its resource, namespace and name.
fn object_key(e: &ChangeEvent) -> i64 {
    let h = match &e.object_uid {
        Some(uid) => digest::hash64(&["uid", uid]),
        None => digest::hash64(&[
            "target",
            &e.resource.group_resource(),
            e.namespace.as_deref().unwrap_or(""),
            &e.name,
        ]),
    };
    h as i64
}

fn op_code(op: Operation) -> i16 {
    match op {
        Operation::Create => 0,
        Operation::Update => 1,
        Operation::Delete => 2,
        Operation::Connect => 3,
    }
}

/// A change state as the `state` column holds it.
fn state_code(s: ChangeState) -> i16 {
    i16::from(s.code())
}

fn state_of(code: i16) -> Result<ChangeState> {
    u8::try_from(code)
        .ok()
        .and_then(ChangeState::from_code)
        .ok_or_else(|| Error::Corrupt(format!("unknown change state {code}")))
}

/// A commit as the `committed` column holds it.
fn committed_of(commit: &Option<Commit>) -> Result<Option<Vec<u8>>> {
    Ok(commit.as_ref().map(serde_json::to_vec).transpose()?)
}

/// The audit log's account as the `audit` column holds it.
fn audit_of(audit: Option<&AuditInfo>) -> Result<Option<Vec<u8>>> {
    Ok(audit.map(serde_json::to_vec).transpose()?)
}

fn id_i64(id: EventId) -> i64 {
    id as i64
}

fn id_u64(id: i64) -> EventId {
    id as u64
}

/// An event read back (columns [`sql::EVENT_COLUMNS`]).
fn event_of(row: &Row) -> Result<StoredEvent> {
    let id: i64 = row.get(0);
    let body: &[u8] = row.get(6);
    let mut event: ChangeEvent =
        serde_json::from_slice(body).map_err(|e| Error::Corrupt(format!("event {id}: {e}")))?;
    event.namespace = row.get(1);
    event.name = row.get(2);
    event.object_uid = row.get(3);
    event.user.username = row.get(4);
    event.policies = row.get(5);
    event.state = state_of(row.get(7))?;
    event.commit = row
        .get::<_, Option<&[u8]>>(8)
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|e| Error::Corrupt(format!("event {id}: commit: {e}")))?;
    event.audit = row
        .get::<_, Option<&[u8]>>(9)
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|e| Error::Corrupt(format!("event {id}: audit: {e}")))?;
    Ok(StoredEvent {
        id: id_u64(row.get(0)),
        event,
    })
}

impl PgStore {
    /// Connects, applies the schema's migrations and returns the store. Fails when the server
    /// cannot be reached or refuses the credentials, with the URL (password hidden) in the
    /// message.
    pub fn open(config: &PgConfig) -> Result<PgStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("histor-postgres")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let pool = {
            let _guard = rt.enter();
            config.pool()?
        };
        let store = PgStore {
            rt: Some(rt),
            handle,
            pool,
            sql: Sql::new(&config.schema),
            writer_id: random_i64(),
            config: config.clone(),
            writer: Mutex::new(Writer {
                states: HashMap::new(),
                policies: HashSet::new(),
                kinds: HashSet::new(),
                pending: None,
            }),
            retention: Mutex::new(()),
            op_timeout: config.op_timeout,
            append_timeout: config.append_timeout,
        };
        let mut client = store
            .client()
            .map_err(|e| Error::Usage(format!("store {config}: cannot connect: {e}")))?;
        let applied = store
            .handle
            .block_on(schema::migrate(&mut client, &config.schema))?;
        tracing::info!(store = %config, migrations = applied, "postgres store open");
        Ok(store)
    }

    /// Runs a driver future on the engine's runtime, blocking this thread, for at most the
    /// operation timeout.
    fn block_on<T>(&self, f: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T> {
        self.wait(Instant::now() + self.op_timeout, f)
    }

    /// [`block_on`](Self::block_on) until `deadline`: a server that does not answer (down,
    /// partitioned, locked up) is an error in bounded time, never a writer stuck for ever.
    fn wait<T>(
        &self,
        deadline: Instant,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        wait_on(&self.handle, deadline, f)
    }

    /// A pooled connection, waiting at most until `deadline`.
    fn client_by(&self, deadline: Instant) -> Result<deadpool_postgres::Object> {
        client_on(&self.handle, &self.pool, deadline)
    }

    fn client(&self) -> Result<deadpool_postgres::Object> {
        self.client_by(Instant::now() + self.op_timeout)
    }

    /// Runs `f` on a pooled connection within the operation timeout (see `with_client`).
    fn pooled<T>(&self, f: impl FnOnce(&tokio_postgres::Client) -> Result<T>) -> Result<T> {
        self.with_client(Instant::now() + self.op_timeout, |c| f(c))
    }

    /// Runs `f` on a pooled connection. After an error the connection is closed rather than
    /// pooled again: a timed-out statement may still be running on it, or a transaction open.
    fn with_client<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&mut deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        with_pooled(&self.handle, &self.pool, deadline, f)
    }

    /// The aliases `kind` resolves to, from the `kinds` table (other replicas learn too).
    fn resolve_kind(&self, client: &impl GenericClient, kind: &str) -> Result<BTreeSet<String>> {
        let k = kind.to_lowercase();
        let rows = self.block_on(client.query(self.sql.kinds_of.as_str(), &[&k]))?;
        let set: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(if set.is_empty() {
            BTreeSet::from([k])
        } else {
            set
        })
    }
}

/// [`PgStore::wait`] on `handle`: shared with the audit journal, which holds the runtime's
/// handle and the pool rather than the store.
fn wait_on<T>(
    handle: &tokio::runtime::Handle,
    deadline: Instant,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    handle
        .block_on(async { tokio::time::timeout_at(deadline.into(), f).await })
        .map_err(|_| timed_out())?
        .map_err(pg_err)
}

/// Runs `f` on a connection from `pool` taken by `deadline`. After an error the connection is
/// closed rather than pooled again: a timed-out statement may still be running on it, or a
/// transaction open. Shared by the store, the audit journal and the Events.
fn with_pooled<T>(
    handle: &tokio::runtime::Handle,
    pool: &deadpool_postgres::Pool,
    deadline: Instant,
    f: impl FnOnce(&mut deadpool_postgres::Object) -> Result<T>,
) -> Result<T> {
    let mut client = client_on(handle, pool, deadline)?;
    let result = f(&mut client);
    if result.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// [`PgStore::client_by`] on `handle` and `pool`.
fn client_on(
    handle: &tokio::runtime::Handle,
    pool: &deadpool_postgres::Pool,
    deadline: Instant,
) -> Result<deadpool_postgres::Object> {
    handle
        .block_on(async { tokio::time::timeout_at(deadline.into(), pool.get()).await })
        .map_err(|_| timed_out())?
        .map_err(pool_err)
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; the store may be dropped on a runtime thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Adds `AND <column op> $n` with `p` as parameter n.
fn and<'a>(
    sql: &mut String,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
    condition: &str,
    p: &'a (dyn ToSql + Sync),
) {
    params.push(p);
    sql.push_str(&format!(" AND {condition} ${}", params.len()));
}

fn random_i64() -> i64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system's random source");
    i64::from_be_bytes(b)
}

impl EventStore for PgStore {
    fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
        self.append_batch(batch)
    }

    fn append_copied(&self, batch: &[(EventId, Captured)]) -> Result<()> {
        self.append_copied_batch(batch)
    }

    fn query(&self, q: &Query) -> Result<Page> {
        let Some((lo, hi)) = query::id_range(q) else {
            return Ok(Page::default());
        };
        self.pooled(|client| self.query_on(client, q, lo, hi))
    }

    fn get(&self, id: EventId) -> Result<Option<StoredEvent>> {
        self.pooled(|client| {
            let Some(row) =
                self.block_on(client.query_opt(self.sql.event.as_str(), &[&id_i64(id)]))?
            else {
                return Ok(None);
            };
            let mut e = event_of(&row)?;
            e.event.object = history::state_after(&Chain::new(self, client), id)?;
            Ok(Some(e))
        })
    }

    fn state_after(&self, id: EventId) -> Result<Option<Value>> {
        self.pooled(|client| history::state_after(&Chain::new(self, client), id))
    }

    fn state_before(&self, id: EventId) -> Result<Option<Value>> {
        self.pooled(|client| history::state_before(&Chain::new(self, client), id))
    }

    fn enforce_retention(
        &self,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport> {
        self.retention_pass(now, rule, default)
    }

    fn stats(&self) -> Result<StoreStats> {
        self.pooled(|client| {
            let schema: [&(dyn ToSql + Sync); 1] = [&self.sql.schema];
            let (count, size) = self.block_on(async {
                futures::try_join!(
                    client.query_one(self.sql.count.as_str(), &[]),
                    client.query_one(self.sql.size.as_str(), &schema),
                )
            })?;
            Ok(StoreStats {
                events: count.get::<_, i64>(0).max(0) as u64,
                bytes_on_disk: size.get::<_, i64>(0).max(0) as u64,
            })
        })
    }

    fn resolve(&self, resolutions: &[Resolution]) -> Result<Vec<bool>> {
        // The first verdict on an id stands, also within one call: only it is sent.
        let mut first: HashMap<EventId, usize> = HashMap::new();
        for (i, r) in resolutions.iter().enumerate() {
            first.entry(r.id).or_insert(i);
        }
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let (mut ids, mut states, mut commits) = (Vec::new(), Vec::new(), Vec::new());
        for &i in first.values() {
            let r = &resolutions[i];
            ids.push(id_i64(r.id));
            states.push(state_code(r.state));
            commits.push(committed_of(&r.commit)?);
        }
        let received = state_code(ChangeState::Received);
        // One statement, its own transaction: durable, and seen by every replica, once it
        // returns. Nothing here caches events, so no copy goes stale.
        let changed: HashSet<EventId> = self.pooled(|client| {
            let rows = self.block_on(client.query(
                self.sql.resolve.as_str(),
                &[&ids, &states, &commits, &received],
            ))?;
            Ok(rows.iter().map(|r| id_u64(r.get(0))).collect())
        })?;
        Ok(resolutions
            .iter()
            .enumerate()
            .map(|(i, r)| first[&r.id] == i && changed.contains(&r.id))
            .collect())
    }

    fn annotate(&self, notes: &[(EventId, AuditInfo)]) -> Result<Vec<bool>> {
        // The first note on an id is the one that may apply, also within one call: only it is
        // sent (the statement would otherwise pick one of them). Ids go in increasing order, so
        // that two replicas noting the same events lock their rows in one order.
        let mut first: BTreeMap<EventId, usize> = BTreeMap::new();
        for (i, (id, _)) in notes.iter().enumerate() {
            first.entry(*id).or_insert(i);
        }
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let (mut ids, mut audits) = (Vec::new(), Vec::new());
        for &i in first.values() {
            let (id, note) = &notes[i];
            ids.push(id_i64(*id));
            audits.push(audit_of(Some(note))?);
        }
        // One statement, its own transaction, as `resolve`: a row already noted (by this call's
        // replica or another, even one committing meanwhile) is not changed again.
        let changed: HashSet<EventId> = self.pooled(|client| {
            let rows = self.block_on(client.query(self.sql.annotate.as_str(), &[&ids, &audits]))?;
            Ok(rows.iter().map(|r| id_u64(r.get(0))).collect())
        })?;
        Ok(notes
            .iter()
            .enumerate()
            .map(|(i, (id, _))| first[id] == i && changed.contains(id))
            .collect())
    }

    fn live_objects(&self, resource: &str) -> Result<Vec<ObjectHead>> {
        let delete = op_code(Operation::Delete);
        self.pooled(|client| {
            let rows =
                self.block_on(client.query(self.sql.live_objects.as_str(), &[&resource, &delete]))?;
            Ok(rows
                .iter()
                .map(|r| ObjectHead {
                    uid: r.get(0),
                    namespace: r.get(1),
                    name: r.get(2),
                    last: id_u64(r.get(3)),
                })
                .collect())
        })
    }

    fn cursor(&self, key: &str) -> Result<Option<String>> {
        self.pooled(|client| {
            let row = self.block_on(client.query_opt(self.sql.cursor.as_str(), &[&key]))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn set_cursor(&self, key: &str, value: &str) -> Result<()> {
        self.pooled(|client| {
            self.block_on(client.execute(self.sql.set_cursor.as_str(), &[&key, &value]))?;
            Ok(())
        })
    }
}

impl PgStore {
    /// One page of `q`, ids in `[lo, hi)`.
    fn query_on(
        &self,
        client: &tokio_postgres::Client,
        q: &Query,
        lo: EventId,
        hi: EventId,
    ) -> Result<Page> {
        let kinds = match &q.kind {
            Some(k) => Some(self.resolve_kind(client, k)?),
            None => None,
        };
        let limit = query::page_limit(q.limit);
        let (lo, hi) = (id_i64(lo), id_i64(hi.min(i64::MAX as u64)));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&lo, &hi];
        let mut sql = format!(
            "SELECT {} FROM {}.events WHERE id >= $1 AND id < $2",
            sql::EVENT_COLUMNS,
            self.sql.schema
        );
        let object = q
            .uid
            .as_ref()
            .map(|uid| digest::hash64(&["uid", uid]) as i64);
        let op = q.operation.map(op_code);
        let state = q.state.map(state_code);
        let kinds_vec: Option<Vec<String>> = kinds.map(|k| k.into_iter().collect());
        let lim = limit as i64 + 1;
        if let Some(o) = &object {
            and(&mut sql, &mut params, "object =", o);
        }
        if let Some(uid) = &q.uid {
            and(&mut sql, &mut params, "uid =", uid);
        }
        if let Some(ns) = &q.namespace {
            and(&mut sql, &mut params, "namespace =", ns);
        }
        if let Some(name) = &q.name {
            and(&mut sql, &mut params, "name =", name);
        }
        if let Some(user) = &q.user {
            and(&mut sql, &mut params, "username =", user);
        }
        if let Some(op) = &op {
            and(&mut sql, &mut params, "operation =", op);
        }
        if let Some(state) = &state {
            and(&mut sql, &mut params, "state =", state);
        }
        if let Some(k) = &kinds_vec {
            params.push(k);
            sql.push_str(&format!(" AND resource = ANY(${})", params.len()));
        }
        params.push(&lim);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let rows = self.block_on(client.query(sql.as_str(), &params))?;
        let kinds = kinds_vec.map(|k| k.into_iter().collect::<BTreeSet<_>>());
        let mut page = PageBuilder::new(q.limit);
        for row in &rows {
            let e = event_of(row)?;
            // The statement filtered already; this keeps one definition of a match.
            if query::matches(q, kinds.as_ref(), &e.event) {
                page.push(e);
            }
            if page.done() {
                break;
            }
        }
        Ok(page.finish())
    }
}
