//! [`PgKubeEvents`]: Kubernetes Events ([`KubeEventStore`]) in the events' schema, table
//! `kube_events`: one row per Event uid with the object it regards (namespace, kind, name), its
//! last-seen time (µs) and the record (JSON of [`KeptEvent`]), indexed by object and time and
//! by time alone.
//!
//! Recording is one transaction: the stored records of the call's uids are read `FOR UPDATE`
//! (in uid order), what each form adds is decided as in every engine ([`KeptEvent::take`]),
//! and the changed records are written with one multi-row upsert. Only the leader watches
//! Events, so two replicas seldom record at once; when they do, the row locks order them.

use super::{PgStore, wait_on, with_pooled};
use crate::events::{KubeEvent, Seen};
use crate::store::kube_events::{KeptEvent, KubeEventStore, MAX_REGARDING, Regarding, take_into};
use crate::{Error, Result};
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Events of a [`PgStore`]; from [`PgStore::kube_events`].
pub(super) struct PgKubeEvents {
    pool: deadpool_postgres::Pool,
    handle: tokio::runtime::Handle,
    op_timeout: Duration,
    sql: Statements,
}

struct Statements {
    lock: String,
    upsert: String,
    regarding: String,
    get: String,
    forget: String,
    count: String,
}

impl Statements {
    fn new(s: &str) -> Statements {
        Statements {
            lock: format!(
                "SELECT body FROM {s}.kube_events WHERE uid = ANY($1) ORDER BY uid FOR UPDATE"
            ),
            upsert: format!(
                "INSERT INTO {s}.kube_events (uid, namespace, kind, name, last_seen, body) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::bigint[], $6::bytea[]) \
                 ON CONFLICT (uid) DO UPDATE SET namespace = excluded.namespace, \
                 kind = excluded.kind, name = excluded.name, last_seen = excluded.last_seen, \
                 body = excluded.body"
            ),
            regarding: format!(
                "SELECT body FROM {s}.kube_events WHERE (namespace, kind, name) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[], $3::text[])) AND last_seen >= $4 \
                 ORDER BY last_seen DESC, uid DESC LIMIT $5"
            ),
            get: format!("SELECT body FROM {s}.kube_events WHERE uid = $1"),
            forget: format!(
                "DELETE FROM {s}.kube_events WHERE uid IN (SELECT uid FROM {s}.kube_events \
                 WHERE last_seen < $1 ORDER BY last_seen LIMIT $2)"
            ),
            count: format!("SELECT count(*) FROM {s}.kube_events"),
        }
    }
}

impl PgStore {
    /// The Kubernetes Events, in this store's schema (shared by every replica).
    pub fn kube_events(&self) -> Arc<dyn KubeEventStore> {
        Arc::new(PgKubeEvents::new(self))
    }
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("kube events {what}"))
}

fn decode(body: &[u8]) -> Result<KeptEvent> {
    serde_json::from_slice(body).map_err(|_| corrupt("record"))
}

impl PgKubeEvents {
    fn new(store: &PgStore) -> PgKubeEvents {
        PgKubeEvents {
            pool: store.pool.clone(),
            handle: store.handle.clone(),
            op_timeout: store.op_timeout,
            sql: Statements::new(&store.sql.schema),
        }
    }

    /// Runs `f` on a pooled connection within the operation timeout; after an error the
    /// connection is closed rather than pooled (a transaction may be open on it).
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut deadpool_postgres::Object, Instant) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.op_timeout;
        with_pooled(&self.handle, &self.pool, deadline, |client| {
            f(client, deadline)
        })
    }

    fn bodies(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<KeptEvent>> {
        self.with_client(|client, deadline| {
            let rows = wait_on(&self.handle, deadline, async {
                let st = client.prepare_cached(sql).await?;
                client.query(&st, params).await
            })?;
            rows.iter().map(|r| decode(r.get(0))).collect()
        })
    }
}

impl KubeEventStore for PgKubeEvents {
    fn record(&self, events: &[KubeEvent]) -> Result<Vec<Seen>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut uids: Vec<&str> = events.iter().map(|e| e.uid.as_str()).collect();
        uids.sort_unstable();
        uids.dedup();
        self.with_client(|client, deadline| {
            let h = &self.handle;
            let tx = wait_on(h, deadline, client.transaction())?;
            let rows = wait_on(h, deadline, tx.query(self.sql.lock.as_str(), &[&uids]))?;
            let mut stored: HashMap<String, KeptEvent> = HashMap::new();
            for row in &rows {
                let kept = decode(row.get(0))?;
                stored.insert(kept.event.uid.clone(), kept);
            }
            let before: HashMap<String, KubeEvent> = stored
                .iter()
                .map(|(uid, k)| (uid.clone(), k.event.clone()))
                .collect();
            let seen = take_into(&mut stored, events);
            let mut changed: Vec<&KeptEvent> = stored
                .values()
                .filter(|k| before.get(&k.event.uid) != Some(&k.event))
                .collect();
            changed.sort_by(|a, b| a.event.uid.cmp(&b.event.uid));
            if !changed.is_empty() {
                let regarding: Vec<Regarding> =
                    changed.iter().map(|k| Regarding::of(&k.event)).collect();
                let uid: Vec<&str> = changed.iter().map(|k| k.event.uid.as_str()).collect();
                let namespace: Vec<&str> = regarding.iter().map(|r| r.namespace.as_str()).collect();
                let kind: Vec<&str> = regarding.iter().map(|r| r.kind.as_str()).collect();
                let name: Vec<&str> = regarding.iter().map(|r| r.name.as_str()).collect();
                let last: Vec<i64> = changed
                    .iter()
                    .map(|k| k.event.last_seen.as_microsecond())
                    .collect();
                let body: Vec<Vec<u8>> = changed
                    .iter()
                    .map(|k| serde_json::to_vec(k).map_err(|_| corrupt("record")))
                    .collect::<Result<_>>()?;
                wait_on(
                    h,
                    deadline,
                    tx.execute(
                        self.sql.upsert.as_str(),
                        &[&uid, &namespace, &kind, &name, &last, &body],
                    ),
                )?;
            }
            wait_on(h, deadline, tx.commit())?;
            Ok(seen)
        })
    }

    fn regarding(
        &self,
        objects: &[Regarding],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeptEvent>> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let namespace: Vec<&str> = objects.iter().map(|r| r.namespace.as_str()).collect();
        let kind: Vec<&str> = objects.iter().map(|r| r.kind.as_str()).collect();
        let name: Vec<&str> = objects.iter().map(|r| r.name.as_str()).collect();
        let since = since.as_microsecond();
        let limit = limit.min(MAX_REGARDING) as i64;
        self.bodies(
            &self.sql.regarding,
            &[&namespace, &kind, &name, &since, &limit],
        )
    }

    fn get(&self, uid: &str) -> Result<Option<KeptEvent>> {
        Ok(self.bodies(&self.sql.get, &[&uid])?.pop())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let (before, limit) = (
            before.as_microsecond(),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        self.with_client(|client, deadline| {
            let n = wait_on(&self.handle, deadline, async {
                let st = client.prepare_cached(&self.sql.forget).await?;
                client.execute(&st, &[&before, &limit]).await
            })?;
            Ok(n as usize)
        })
    }

    fn count(&self) -> Result<u64> {
        self.with_client(|client, deadline| {
            let row = wait_on(&self.handle, deadline, async {
                let st = client.prepare_cached(&self.sql.count).await?;
                client.query_one(&st, &[]).await
            })?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    crate::store::kube_events::conformance::kube_events_conformance_suite!(
        optional
            || super::super::tests::fresh().map(|(schema, store)| {
                let events = super::PgKubeEvents::new(&store);
                ((schema, store), events)
            })
    );
}
