//! [`PgOutbox`]: the notification outbox ([`OutboxStore`]) in the events' database, so every
//! replica's notifier sees one queue and one cursor: the replica that leads delivers, and a new
//! leader continues where the last one stopped. Keys come from a sequence (unique and increasing
//! across sessions); each call is one statement or one transaction. The futures run on the
//! engine's own runtime, so they neither block nor depend on the caller's.

use super::{PgStore, pg_err, pool_err, timed_out};
use crate::store::EventId;
use crate::store::outbox::{BufferedRecord, OutboxCounts, OutboxIntake, OutboxKey, OutboxStore};
use crate::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The outbox of a [`PgStore`]; from [`PgStore::outbox`].
pub struct PgOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    handle: tokio::runtime::Handle,
    op_timeout: Duration,
    s: String,
    config: super::PgConfig,
    notify_lock: i64,
    /// The session that holds (or tries for) the delivery lock, and whether it holds it.
    leader: tokio::sync::Mutex<Option<(tokio_postgres::Client, bool)>>,
}

impl PgStore {
    /// The notification outbox in this store's database.
    pub fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(PgOutbox {
            inner: Arc::new(Inner {
                pool: self.pool.clone(),
                handle: self.handle.clone(),
                op_timeout: self.op_timeout,
                s: self.sql.schema.clone(),
                config: self.config.clone(),
                notify_lock: self.sql.notify_lock,
                leader: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

impl PgOutbox {
    /// Runs `f` with a pooled connection on the engine's runtime, within the operation timeout.
    /// After an error the connection is closed rather than pooled (see `PgStore::with_client`).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = (Result<T, tokio_postgres::Error>, deadpool_postgres::Object)> + Send,
    {
        let inner = self.inner.clone();
        let task = self.inner.handle.spawn(async move {
            let timeout = inner.op_timeout;
            let work = async {
                let client = inner.pool.get().await.map_err(pool_err)?;
                let (result, client) = f(inner.clone(), client).await;
                if result.is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
                result.map_err(pg_err)
            };
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        });
        task.await
            .map_err(|e| Error::store(std::io::Error::other(e.to_string())))?
    }
}

#[async_trait::async_trait]
impl OutboxStore for PgOutbox {
    async fn next_keys(&self, n: usize) -> Result<Vec<OutboxKey>> {
        let n = n as i64;
        self.run(move |i, c| async move {
            let sql = format!(
                "SELECT nextval('{}.outbox_keys') FROM generate_series(1, $1::bigint)",
                i.s
            );
            let r = c.query(sql.as_str(), &[&n]).await.map(|rows| {
                let mut keys: Vec<OutboxKey> =
                    rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
                keys.sort_unstable();
                keys
            });
            (r, c)
        })
        .await
    }

    async fn commit(&self, intake: OutboxIntake) -> Result<()> {
        if intake.is_empty() {
            return Ok(());
        }
        self.run(move |i, mut c| async move {
            let r = async {
                let s = &i.s;
                let tx = c.transaction().await?;
                if !intake.entries.is_empty() {
                    let (keys, values): (Vec<i64>, Vec<Vec<u8>>) = intake
                        .entries
                        .into_iter()
                        .map(|(k, v)| (k as i64, v))
                        .unzip();
                    tx.execute(
                        format!(
                            "INSERT INTO {s}.outbox (key, value) SELECT * FROM \
                             unnest($1::bigint[], $2::bytea[])"
                        )
                        .as_str(),
                        &[&keys, &values],
                    )
                    .await?;
                }
                if !intake.buffered.is_empty() {
                    let mut sinks = Vec::new();
                    let mut events = Vec::new();
                    let mut values = Vec::new();
                    for b in intake.buffered {
                        sinks.push(b.sink);
                        events.push(b.event as i64);
                        values.push(b.value);
                    }
                    tx.execute(
                        format!(
                            "INSERT INTO {s}.outbox_buffered (sink, event, value) SELECT * FROM \
                             unnest($1::text[], $2::bigint[], $3::bytea[]) \
                             ON CONFLICT (sink, event) DO UPDATE SET value = EXCLUDED.value"
                        )
                        .as_str(),
                        &[&sinks, &events, &values],
                    )
                    .await?;
                }
                if let Some(cursor) = intake.cursor {
                    tx.execute(
                        format!(
                            "UPDATE {s}.meta SET value = greatest(value, $1) \
                             WHERE key = 'outbox_cursor'"
                        )
                        .as_str(),
                        &[&(cursor as i64)],
                    )
                    .await?;
                }
                tx.commit().await
            }
            .await;
            (r, c)
        })
        .await
    }

    async fn cursor(&self) -> Result<Option<EventId>> {
        self.run(|i, c| async move {
            let sql = format!("SELECT value FROM {}.meta WHERE key = 'outbox_cursor'", i.s);
            let r = c.query_one(sql.as_str(), &[]).await.map(|row| {
                let v: i64 = row.get(0);
                (v >= 0).then_some(v as u64)
            });
            (r, c)
        })
        .await
    }

    async fn init_cursor(&self, at: EventId) -> Result<EventId> {
        let at = at as i64;
        self.run(move |i, c| async move {
            // One statement: set when unset (-1), and read back what it then is.
            let sql = format!(
                "UPDATE {s}.meta SET value = CASE WHEN value < 0 THEN $1 ELSE value END \
                 WHERE key = 'outbox_cursor' RETURNING value",
                s = i.s
            );
            let r = c
                .query_one(sql.as_str(), &[&at])
                .await
                .map(|row| row.get::<_, i64>(0) as u64);
            (r, c)
        })
        .await
    }

    async fn entries(&self) -> Result<Vec<(OutboxKey, Vec<u8>)>> {
        self.run(|i, c| async move {
            let sql = format!("SELECT key, value FROM {}.outbox ORDER BY key", i.s);
            let r = c.query(sql.as_str(), &[]).await.map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                    .collect()
            });
            (r, c)
        })
        .await
    }

    async fn update(&self, key: OutboxKey, value: Vec<u8>) -> Result<()> {
        self.run(move |i, c| async move {
            let sql = format!("UPDATE {}.outbox SET value = $2 WHERE key = $1", i.s);
            let r = c
                .execute(sql.as_str(), &[&(key as i64), &value])
                .await
                .map(drop);
            (r, c)
        })
        .await
    }

    async fn remove(&self, keys: &[OutboxKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<i64> = keys.iter().map(|&k| k as i64).collect();
        self.run(move |i, c| async move {
            let sql = format!("DELETE FROM {}.outbox WHERE key = ANY($1)", i.s);
            let r = c.execute(sql.as_str(), &[&keys]).await.map(drop);
            (r, c)
        })
        .await
    }

    async fn buffered(&self, sink: Option<&str>) -> Result<Vec<BufferedRecord>> {
        let sink = sink.map(str::to_owned);
        self.run(move |i, c| async move {
            // Byte order of sink names, as every engine orders them.
            let sql = format!(
                "SELECT sink, event, value FROM {}.outbox_buffered \
                 WHERE $1::text IS NULL OR sink = $1 ORDER BY sink COLLATE \"C\", event",
                i.s
            );
            let r = c.query(sql.as_str(), &[&sink]).await.map(|rows| {
                rows.iter()
                    .map(|r| BufferedRecord {
                        sink: r.get(0),
                        event: r.get::<_, i64>(1) as u64,
                        value: r.get(2),
                    })
                    .collect()
            });
            (r, c)
        })
        .await
    }

    async fn remove_buffered(&self, events: &[(String, EventId)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (sinks, ids): (Vec<String>, Vec<i64>) =
            events.iter().map(|(s, e)| (s.clone(), *e as i64)).unzip();
        self.run(move |i, c| async move {
            let sql = format!(
                "DELETE FROM {}.outbox_buffered b USING unnest($1::text[], $2::bigint[]) \
                 AS u(sink, event) WHERE b.sink = u.sink AND b.event = u.event",
                i.s
            );
            let r = c.execute(sql.as_str(), &[&sinks, &ids]).await.map(drop);
            (r, c)
        })
        .await
    }

    async fn close_window(
        &self,
        sink: &str,
        events: &[EventId],
        key: OutboxKey,
        value: Vec<u8>,
    ) -> Result<()> {
        let sink = sink.to_owned();
        let ids: Vec<i64> = events.iter().map(|&e| e as i64).collect();
        self.run(move |i, mut c| async move {
            let r = async {
                let s = &i.s;
                let tx = c.transaction().await?;
                tx.execute(
                    format!("DELETE FROM {s}.outbox_buffered WHERE sink = $1 AND event = ANY($2)")
                        .as_str(),
                    &[&sink, &ids],
                )
                .await?;
                tx.execute(
                    format!("INSERT INTO {s}.outbox (key, value) VALUES ($1, $2)").as_str(),
                    &[&(key as i64), &value],
                )
                .await?;
                tx.commit().await
            }
            .await;
            (r, c)
        })
        .await
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// The delivery lock is a session-level advisory lock on a connection of its own: held
    /// while this process lives and its connection does, released by the server the moment
    /// either goes (a crash, a partition once keepalives give up).
    async fn try_lead(&self) -> Result<bool> {
        let inner = self.inner.clone();
        let task = self.inner.handle.spawn(async move {
            let timeout = inner.op_timeout;
            let mut slot = inner.leader.lock().await;
            let attempt = async {
                if slot.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    *slot = Some((inner.config.connect().await?, false));
                }
                let Some((client, holding)) = slot.as_mut() else {
                    return Ok(false);
                };
                if *holding {
                    client.simple_query("SELECT 1").await.map_err(pg_err)?;
                } else {
                    *holding = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&inner.notify_lock])
                        .await
                        .map_err(pg_err)?
                        .get(0);
                }
                Ok(*holding)
            };
            let result = tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            if result.is_err() {
                // Whatever it held is gone with it (or soon will be, server side).
                *slot = None;
            }
            result
        });
        task.await
            .map_err(|e| Error::store(std::io::Error::other(e.to_string())))?
    }

    async fn counts(&self) -> Result<OutboxCounts> {
        self.run(|i, c| async move {
            let sql = format!(
                "SELECT (SELECT count(*) FROM {s}.outbox), (SELECT count(*) FROM {s}.outbox_buffered)",
                s = i.s
            );
            let r = c.query_one(sql.as_str(), &[]).await.map(|row| OutboxCounts {
                pending: row.get::<_, i64>(0) as usize,
                buffered: row.get::<_, i64>(1) as usize,
            });
            (r, c)
        })
        .await
    }
}
