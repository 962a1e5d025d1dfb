//! The sled engine's [`OutboxStore`]: three trees in the store's own database, so the event
//! store's group commit also makes the outbox's cheap writes durable.
//! - `notify_outbox`: key (big-endian u64) → notification.
//! - `notify_digest`: sink ‖ event id (big-endian u64) → buffered event.
//! - `notify_meta`: `cursor` → event id (big-endian u64).
//!
//! Every call runs on tokio's blocking pool (sled's reads and flushes block). Each takes the
//! database afresh from the [`SharedDb`]: the store replaces it when it reopens after a write
//! failure, and a kept clone would hold the old database's file lock. A call that writes
//! notifications (or removes them) flushes before it returns; one that only moves the cursor or
//! buffers events leaves them to the store's next flush, as the contract allows.

use super::SharedDb;
use crate::store::EventId;
use crate::store::outbox::{BufferedRecord, OutboxCounts, OutboxIntake, OutboxKey, OutboxStore};
use crate::{Error, Result};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

const OUTBOX_TREE: &str = "notify_outbox";
const DIGEST_TREE: &str = "notify_digest";
const META_TREE: &str = "notify_meta";
const CURSOR_KEY: &[u8] = b"cursor";

/// The outbox trees of the store's database.
#[derive(Clone)]
pub(super) struct SledOutbox {
    db: SharedDb,
}

/// The trees of one call.
struct Trees {
    db: sled::Db,
    outbox: sled::Tree,
    digest: sled::Tree,
    meta: sled::Tree,
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

fn digest_key(sink: &str, id: EventId) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 8);
    k.extend_from_slice(sink.as_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The sink and event id of a digest key.
fn split_digest_key(k: &[u8]) -> Result<(String, EventId)> {
    let corrupt = || Error::Corrupt("outbox digest key".into());
    let at = k.len().checked_sub(8).ok_or_else(corrupt)?;
    let (sink, id) = k.split_at(at);
    let id = <[u8; 8]>::try_from(id).map_err(|_| corrupt())?;
    let sink = std::str::from_utf8(sink).map_err(|_| corrupt())?;
    Ok((sink.to_owned(), u64::from_be_bytes(id)))
}

fn key_of(k: &[u8]) -> Result<OutboxKey> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt("outbox key".into()))
}

fn cursor_of(v: Option<sled::IVec>) -> Option<EventId> {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::store)?
}

impl SledOutbox {
    pub(super) fn new(db: SharedDb) -> SledOutbox {
        SledOutbox { db }
    }

    fn trees(&self) -> Result<Trees> {
        let db = self.db.get()?;
        Ok(Trees {
            outbox: db.open_tree(OUTBOX_TREE)?,
            digest: db.open_tree(DIGEST_TREE)?,
            meta: db.open_tree(META_TREE)?,
            db,
        })
    }

    fn commit_now(&self, intake: &OutboxIntake) -> Result<()> {
        if intake.is_empty() {
            return Ok(());
        }
        let t = self.trees()?;
        let buffered: Vec<(Vec<u8>, &[u8])> = intake
            .buffered
            .iter()
            .map(|b| (digest_key(&b.sink, b.event), b.value.as_slice()))
            .collect();
        let cursor = intake.cursor;
        (&t.outbox, &t.digest, &t.meta)
            .transaction(|(o, d, m)| {
                for (k, v) in &intake.entries {
                    o.insert(&k.to_be_bytes()[..], v.as_slice())?;
                }
                for (k, v) in &buffered {
                    d.insert(k.as_slice(), *v)?;
                }
                if let Some(c) = cursor
                    && cursor_of(m.get(CURSOR_KEY)?).is_none_or(|old| old < c)
                {
                    m.insert(CURSOR_KEY, &c.to_be_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        // Notifications are sent soon: they must be on disk first. A cursor or buffered events
        // alone wait for the store's next group commit (see the contract).
        if !intake.entries.is_empty() {
            t.db.flush()?;
        }
        Ok(())
    }

    fn entries_now(&self) -> Result<Vec<(OutboxKey, Vec<u8>)>> {
        self.trees()?
            .outbox
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key_of(&k)?, v.to_vec()))
            })
            .collect()
    }

    fn update_now(&self, key: OutboxKey, value: &[u8]) -> Result<()> {
        let t = self.trees()?;
        // Only an entry still queued: a delivery that ends after its entry was dropped must
        // not bring it back.
        t.outbox
            .fetch_and_update(key.to_be_bytes(), |old| old.map(|_| value.to_vec()))?;
        t.db.flush()?;
        Ok(())
    }

    fn remove_now(&self, keys: &[OutboxKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let t = self.trees()?;
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(&key.to_be_bytes()[..]);
        }
        t.outbox.apply_batch(batch)?;
        t.db.flush()?;
        Ok(())
    }

    fn buffered_now(&self, sink: Option<&str>) -> Result<Vec<BufferedRecord>> {
        let t = self.trees()?;
        let iter = match sink {
            Some(s) => t.digest.scan_prefix(s.as_bytes()),
            None => t.digest.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv?;
            let (s, event) = split_digest_key(&k)?;
            // The prefix scan also finds sinks whose name starts with this one's.
            if sink.is_some_and(|want| want != s) {
                continue;
            }
            out.push(BufferedRecord {
                sink: s,
                event,
                value: v.to_vec(),
            });
        }
        Ok(out)
    }

    fn remove_buffered_now(&self, events: &[(String, EventId)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let t = self.trees()?;
        let mut batch = sled::Batch::default();
        for (sink, id) in events {
            batch.remove(digest_key(sink, *id));
        }
        t.digest.apply_batch(batch)?;
        t.db.flush()?;
        Ok(())
    }

    fn close_window_now(
        &self,
        sink: &str,
        events: &[EventId],
        key: OutboxKey,
        value: &[u8],
    ) -> Result<()> {
        let keys: Vec<Vec<u8>> = events.iter().map(|id| digest_key(sink, *id)).collect();
        let t = self.trees()?;
        (&t.outbox, &t.digest)
            .transaction(|(o, d)| {
                for k in &keys {
                    d.remove(k.as_slice())?;
                }
                o.insert(&key.to_be_bytes()[..], value)?;
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        t.db.flush()?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl OutboxStore for SledOutbox {
    async fn next_keys(&self, n: usize) -> Result<Vec<OutboxKey>> {
        let this = self.clone();
        blocking(move || {
            let db = this.db.get()?;
            (0..n).map(|_| Ok(db.generate_id()?)).collect()
        })
        .await
    }

    async fn commit(&self, intake: OutboxIntake) -> Result<()> {
        if intake.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        blocking(move || this.commit_now(&intake)).await
    }

    async fn cursor(&self) -> Result<Option<EventId>> {
        let this = self.clone();
        blocking(move || Ok(cursor_of(this.trees()?.meta.get(CURSOR_KEY)?))).await
    }

    async fn init_cursor(&self, at: EventId) -> Result<EventId> {
        let this = self.clone();
        blocking(move || {
            let t = this.trees()?;
            let set = t.meta.compare_and_swap(
                CURSOR_KEY,
                None as Option<&[u8]>,
                Some(&at.to_be_bytes()[..]),
            )?;
            t.db.flush()?;
            match set {
                Ok(()) => Ok(at),
                Err(_) => Ok(cursor_of(t.meta.get(CURSOR_KEY)?).unwrap_or(at)),
            }
        })
        .await
    }

    async fn entries(&self) -> Result<Vec<(OutboxKey, Vec<u8>)>> {
        let this = self.clone();
        blocking(move || this.entries_now()).await
    }

    async fn update(&self, key: OutboxKey, value: Vec<u8>) -> Result<()> {
        let this = self.clone();
        blocking(move || this.update_now(key, &value)).await
    }

    async fn remove(&self, keys: &[OutboxKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let (this, keys) = (self.clone(), keys.to_vec());
        blocking(move || this.remove_now(&keys)).await
    }

    async fn buffered(&self, sink: Option<&str>) -> Result<Vec<BufferedRecord>> {
        let (this, sink) = (self.clone(), sink.map(str::to_owned));
        blocking(move || this.buffered_now(sink.as_deref())).await
    }

    async fn remove_buffered(&self, events: &[(String, EventId)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (this, events) = (self.clone(), events.to_vec());
        blocking(move || this.remove_buffered_now(&events)).await
    }

    async fn close_window(
        &self,
        sink: &str,
        events: &[EventId],
        key: OutboxKey,
        value: Vec<u8>,
    ) -> Result<()> {
        let (this, sink, events) = (self.clone(), sink.to_owned(), events.to_vec());
        blocking(move || this.close_window_now(&sink, &events, key, &value)).await
    }

    async fn counts(&self) -> Result<OutboxCounts> {
        let this = self.clone();
        blocking(move || {
            let t = this.trees()?;
            Ok(OutboxCounts {
                pending: t.outbox.len(),
                buffered: t.digest.len(),
            })
        })
        .await
    }
}
