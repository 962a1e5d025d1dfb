//! The durable outbox: notifications waiting to be delivered, events waiting in a digest window,
//! and the cursor of the last event handed over, in three sled trees of the store's database.
//!
//! Every change is flushed before anything is sent, so a restart resumes where the last process
//! stopped. An entry is marked in-flight (and flushed) before each attempt and removed after a
//! confirmed delivery: after a crash an in-flight entry is sent again (its outcome is unknown, and
//! it keeps its delivery id so the receiver can drop the duplicate), a confirmed one never.
//! Depends on sled and the notify types only.

use super::config::{SinkId, SinkKind};
use super::message::Payload;
use crate::pipeline::ChangeEvent;
use crate::store::{EventId, SharedDb};
use crate::{Error, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

const OUTBOX_TREE: &str = "notify_outbox";
const DIGEST_TREE: &str = "notify_digest";
const META_TREE: &str = "notify_meta";
const CURSOR_KEY: &[u8] = b"cursor";

/// Where an entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EntryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt was started; if the process died then, nobody knows whether it arrived.
    InFlight,
}

/// One notification to deliver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Idempotency key sent with every attempt (`X-Histor-Delivery`, email `Message-ID`).
    pub delivery_id: String,
    /// The sink it goes to.
    pub sink: SinkId,
    /// The sink's kind when the payload was rendered.
    pub kind: SinkKind,
    /// Events it covers.
    pub event_ids: Vec<EventId>,
    /// The rendered message.
    pub payload: Payload,
    /// When it was made; retries stop `maxRetryDuration` after this.
    pub created_at: Timestamp,
    /// Attempts started so far.
    pub attempts: u32,
    /// Not before this time.
    pub next_attempt_at: Timestamp,
    /// Pending or in flight.
    pub state: EntryState,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An event waiting in a sink's digest window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BufferedEvent {
    /// The sink whose window holds it.
    pub sink: SinkId,
    /// The event's store id.
    pub id: EventId,
    /// When it entered the window (the window opens with its first event).
    pub added_at: Timestamp,
    /// The event, without `object`.
    pub event: ChangeEvent,
}

/// What one call of the notifier hands to the outbox, written atomically.
#[derive(Debug, Default)]
pub struct Intake {
    /// New notifications, with their keys from [`Outbox::next_key`].
    pub entries: Vec<(u64, OutboxEntry)>,
    /// Events for digest windows.
    pub buffered: Vec<BufferedEvent>,
    /// New cursor (last event id handed over), if it moves.
    pub cursor: Option<EventId>,
}

/// The outbox trees, in the store's database. Each use takes the database afresh from the
/// [`SharedDb`]: the store replaces it when it reopens after a write failure.
#[derive(Clone)]
pub struct Outbox {
    db: SharedDb,
}

/// The trees of one use.
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

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn digest_key(sink: &SinkId, id: EventId) -> Vec<u8> {
    let mut k = sink.key().into_bytes();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Outbox {
    /// Opens (creating if needed) the outbox trees in `db`.
    pub fn open(db: impl Into<SharedDb>) -> Result<Self> {
        let outbox = Outbox { db: db.into() };
        outbox.trees()?;
        Ok(outbox)
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

    /// A fresh, increasing entry key.
    pub fn next_key(&self) -> Result<u64> {
        let t = self.trees()?;
        Ok(t.db.generate_id()?)
    }

    /// Writes `intake` in one transaction, flushed to disk when it queues notifications.
    pub fn commit(&self, intake: &Intake) -> Result<()> {
        let t = self.trees()?;
        if intake.entries.is_empty() && intake.buffered.is_empty() && intake.cursor.is_none() {
            return Ok(());
        }
        // Serialise outside the transaction: its closure may run more than once.
        let entries = intake
            .entries
            .iter()
            .map(|(k, e)| Ok((k.to_be_bytes(), encode(e)?)))
            .collect::<Result<Vec<_>>>()?;
        let buffered = intake
            .buffered
            .iter()
            .map(|b| Ok((digest_key(&b.sink, b.id), encode(b)?)))
            .collect::<Result<Vec<_>>>()?;
        let cursor = intake.cursor;
        (&t.outbox, &t.digest, &t.meta)
            .transaction(|(o, d, m)| {
                for (k, v) in &entries {
                    o.insert(&k[..], v.as_slice())?;
                }
                for (k, v) in &buffered {
                    d.insert(k.as_slice(), v.as_slice())?;
                }
                if let Some(c) = cursor {
                    let old = m
                        .get(CURSOR_KEY)?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                        .map(u64::from_be_bytes);
                    if old.is_none_or(|o| o < c) {
                        m.insert(CURSOR_KEY, &c.to_be_bytes())?;
                    }
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        // Entries are sent soon: they must be on disk first. A cursor or digest buffer alone
        // waits for the database's next flush (the store's next group commit); a crash before
        // it only moves the cursor back, and `Notifier::recover_from` hands those events over
        // again (buffering is keyed by sink and event id, so that is idempotent).
        if !intake.entries.is_empty() {
            t.db.flush()?;
        }
        Ok(())
    }

    /// The last event id handed to the outbox, if any.
    pub fn cursor(&self) -> Result<Option<EventId>> {
        Ok(self
            .trees()?
            .meta
            .get(CURSOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> Result<Vec<(u64, OutboxEntry)>> {
        let t = self.trees()?;
        t.outbox
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let key = <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| Error::Corrupt("outbox key".into()))?;
                Ok((key, decode("outbox entry", &v)?))
            })
            .collect()
    }

    /// Number of notifications waiting (0 while the store reopens).
    pub fn len(&self) -> usize {
        self.trees().map_or(0, |t| t.outbox.len())
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of events waiting in digest windows (0 while the store reopens).
    pub fn buffered_len(&self) -> usize {
        self.trees().map_or(0, |t| t.digest.len())
    }

    /// Rewrites an entry (state, attempts, next attempt) and flushes.
    pub async fn update(&self, key: u64, entry: &OutboxEntry) -> Result<()> {
        let t = self.trees()?;
        t.outbox.insert(key.to_be_bytes(), encode(entry)?)?;
        t.db.flush_async().await?;
        Ok(())
    }

    /// Removes a delivered (or given-up) entry and flushes.
    pub async fn remove(&self, key: u64) -> Result<()> {
        let t = self.trees()?;
        t.outbox.remove(key.to_be_bytes())?;
        t.db.flush_async().await?;
        Ok(())
    }

    /// Removes entries (expired or over a bound) and flushes once.
    pub async fn remove_many(&self, keys: &[u64]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let t = self.trees()?;
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(&key.to_be_bytes()[..]);
        }
        t.outbox.apply_batch(batch)?;
        t.db.flush_async().await?;
        Ok(())
    }

    /// Every sink with buffered events, the time its window opened, and how many it holds.
    pub fn open_windows(&self) -> Result<Vec<(SinkId, Timestamp, usize)>> {
        let t = self.trees()?;
        let mut out: Vec<(SinkId, Timestamp, usize)> = Vec::new();
        for kv in t.digest.iter() {
            let (_, v) = kv?;
            let b: BufferedEvent = decode("digest entry", &v)?;
            match out.iter_mut().find(|(s, _, _)| *s == b.sink) {
                Some((_, t, n)) => {
                    *t = (*t).min(b.added_at);
                    *n += 1;
                }
                None => out.push((b.sink, b.added_at, 1)),
            }
        }
        Ok(out)
    }

    /// Removes buffered digest events (of sinks no longer configured) and flushes.
    pub fn remove_buffered(&self, events: &[(SinkId, EventId)]) -> Result<()> {
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

    /// The events buffered for `sink`, oldest first.
    pub fn buffered(&self, sink: &SinkId) -> Result<Vec<BufferedEvent>> {
        let t = self.trees()?;
        t.digest
            .scan_prefix(sink.key().as_bytes())
            .map(|kv| {
                let (_, v) = kv?;
                decode("digest entry", &v)
            })
            .collect()
    }

    /// Atomically turns `sink`'s buffered events `ids` into the notification `entry`, and flushes.
    pub fn close_window(
        &self,
        sink: &SinkId,
        ids: &[EventId],
        key: u64,
        entry: &OutboxEntry,
    ) -> Result<()> {
        let value = encode(entry)?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| digest_key(sink, *id)).collect();
        let t = self.trees()?;
        (&t.outbox, &t.digest)
            .transaction(|(o, d)| {
                for k in &keys {
                    d.remove(k.as_slice())?;
                }
                o.insert(&key.to_be_bytes()[..], value.as_slice())?;
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        t.db.flush()?;
        Ok(())
    }

    /// Drops everything queued for sinks that `keep` rejects (a sink or policy was removed).
    pub fn retain(&self, keep: impl Fn(&SinkId) -> bool) -> Result<usize> {
        let t = self.trees()?;
        let mut dropped = 0;
        for (key, e) in self.entries()? {
            if !keep(&e.sink) {
                t.outbox.remove(key.to_be_bytes())?;
                dropped += 1;
            }
        }
        for kv in t.digest.iter() {
            let (k, v) = kv?;
            let b: BufferedEvent = decode("digest entry", &v)?;
            if !keep(&b.sink) {
                t.digest.remove(k)?;
                dropped += 1;
            }
        }
        t.db.flush()?;
        Ok(dropped)
    }
}
