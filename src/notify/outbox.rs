//! The durable outbox as the notifier sees it: notifications waiting to be delivered, events
//! waiting in a digest window, and the cursor of the last event handed over, encoded (JSON) onto
//! the store's [`OutboxStore`] contract, which each engine keeps next to its events.
//!
//! Every notification is durable before anything is sent, so a restart resumes where the last
//! process stopped. An entry is marked in-flight (durably) before each attempt and removed after
//! a confirmed delivery: after a crash an in-flight entry is sent again (its outcome is unknown,
//! and it keeps its delivery id so the receiver can drop the duplicate), a confirmed one never.
//! Depends on the store's outbox contract and the notify types only.

use super::config::{SinkId, SinkKind};
use super::message::Payload;
use crate::pipeline::ChangeEvent;
use crate::store::EventId;
use crate::store::outbox::{BufferedRecord, OutboxCounts, OutboxIntake, OutboxStore};
use crate::{Error, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// New notifications, with their keys from [`Outbox::next_keys`].
    pub entries: Vec<(u64, OutboxEntry)>,
    /// Events for digest windows.
    pub buffered: Vec<BufferedEvent>,
    /// New cursor (last event id handed over), if it moves.
    pub cursor: Option<EventId>,
}

/// The notifier's typed view of the store's outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn OutboxStore>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn decode_buffered(records: Vec<BufferedRecord>) -> Result<Vec<BufferedEvent>> {
    records
        .iter()
        .map(|r| decode("digest entry", &r.value))
        .collect()
}

impl Outbox {
    /// The notifier's view of `store`.
    pub fn new(store: Arc<dyn OutboxStore>) -> Self {
        Outbox { store }
    }

    /// `n` fresh, increasing entry keys.
    pub async fn next_keys(&self, n: usize) -> Result<Vec<u64>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.store.next_keys(n).await
    }

    /// Writes `intake` atomically, durably when it queues notifications (a cursor or buffered
    /// events alone may wait for the store's next flush: a crash before it only moves the cursor
    /// back, and `Notifier::recover_from` hands those events over again, which buffers them
    /// again under the same sink and event id).
    pub async fn commit(&self, intake: &Intake) -> Result<()> {
        // The sink's key: a window's events are read back by it, and the store keeps sinks
        // apart by it (it is also the key layout earlier versions wrote on sled).
        let encoded = OutboxIntake {
            entries: intake
                .entries
                .iter()
                .map(|(k, e)| Ok((*k, encode(e)?)))
                .collect::<Result<_>>()?,
            buffered: intake
                .buffered
                .iter()
                .map(|b| {
                    Ok(BufferedRecord {
                        sink: b.sink.key(),
                        event: b.id,
                        value: encode(b)?,
                    })
                })
                .collect::<Result<_>>()?,
            cursor: intake.cursor,
        };
        self.store.commit(encoded).await
    }

    /// Whether this process delivers (see [`OutboxStore::try_lead`]).
    pub async fn try_lead(&self) -> Result<bool> {
        self.store.try_lead().await
    }

    /// Whether other processes share it (see [`OutboxStore::is_shared`]).
    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// Sets the cursor to `at` unless it was ever set; the cursor as it then is.
    pub async fn init_cursor(&self, at: EventId) -> Result<EventId> {
        self.store.init_cursor(at).await
    }

    /// The last event id handed to the outbox, if any.
    pub async fn cursor(&self) -> Result<Option<EventId>> {
        self.store.cursor().await
    }

    /// All entries, oldest first.
    pub async fn entries(&self) -> Result<Vec<(u64, OutboxEntry)>> {
        self.store
            .entries()
            .await?
            .into_iter()
            .map(|(k, v)| Ok((k, decode("outbox entry", &v)?)))
            .collect()
    }

    /// Notifications waiting and events in digest windows.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        self.store.counts().await
    }

    /// Rewrites an entry (state, attempts, next attempt), durably; one removed meanwhile stays
    /// removed.
    pub async fn update(&self, key: u64, entry: &OutboxEntry) -> Result<()> {
        self.store.update(key, encode(entry)?).await
    }

    /// Removes a delivered (or given-up) entry, durably.
    pub async fn remove(&self, key: u64) -> Result<()> {
        self.store.remove(&[key]).await
    }

    /// Removes entries (expired or over a bound) in one durable write.
    pub async fn remove_many(&self, keys: &[u64]) -> Result<()> {
        self.store.remove(keys).await
    }

    /// Every sink with buffered events, the time its window opened, and how many it holds.
    pub async fn open_windows(&self) -> Result<Vec<(SinkId, Timestamp, usize)>> {
        let mut out: Vec<(SinkId, Timestamp, usize)> = Vec::new();
        for b in decode_buffered(self.store.buffered(None).await?)? {
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

    /// Removes buffered digest events (of sinks no longer configured), durably.
    pub async fn remove_buffered(&self, events: &[(SinkId, EventId)]) -> Result<()> {
        let events: Vec<(String, EventId)> = events.iter().map(|(s, id)| (s.key(), *id)).collect();
        self.store.remove_buffered(&events).await
    }

    /// The events buffered for `sink`, oldest first.
    pub async fn buffered(&self, sink: &SinkId) -> Result<Vec<BufferedEvent>> {
        decode_buffered(self.store.buffered(Some(&sink.key())).await?)
    }

    /// Atomically and durably turns `sink`'s buffered events `ids` into the notification `entry`.
    pub async fn close_window(
        &self,
        sink: &SinkId,
        ids: &[EventId],
        key: u64,
        entry: &OutboxEntry,
    ) -> Result<()> {
        self.store
            .close_window(&sink.key(), ids, key, encode(entry)?)
            .await
    }

    /// Drops everything queued for sinks that `keep` rejects (a sink or policy was removed);
    /// returns how much went.
    pub async fn retain(&self, keep: impl Fn(&SinkId) -> bool) -> Result<usize> {
        let gone: Vec<u64> = self
            .entries()
            .await?
            .into_iter()
            .filter(|(_, e)| !keep(&e.sink))
            .map(|(k, _)| k)
            .collect();
        self.store.remove(&gone).await?;
        let buffered: Vec<(String, EventId)> = decode_buffered(self.store.buffered(None).await?)?
            .into_iter()
            .filter(|b| !keep(&b.sink))
            .map(|b| (b.sink.key(), b.id))
            .collect();
        self.store.remove_buffered(&buffered).await?;
        Ok(gone.len() + buffered.len())
    }
}
