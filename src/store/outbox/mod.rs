//! The notification outbox's contract, [`OutboxStore`]: where the notifier keeps what it has yet
//! to send (encoded notifications), the events waiting in digest windows, and the cursor of the
//! last event handed to it. Each engine implements it next to its events (`sled/outbox.rs`; the
//! in-memory reference in [`mem`]), and one conformance suite holds every engine to it.
//!
//! The contract knows nothing of sinks, payloads or retries: values are bytes the notifier
//! encodes, sinks are names it chooses. Depends on store types only; `notify` depends on it, never
//! the reverse.

use super::EventId;
use crate::Result;

#[cfg(test)]
pub(crate) mod conformance;
pub mod mem;

pub use self::mem::MemOutbox;

/// Identifies a queued notification. Keys come from [`OutboxStore::next_keys`].
pub type OutboxKey = u64;

/// An event waiting in a sink's digest window: `(sink, event)` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferedRecord {
    /// The sink whose window holds it, as the notifier names sinks.
    pub sink: String,
    /// The event's store id.
    pub event: EventId,
    /// What the notifier keeps of it.
    pub value: Vec<u8>,
}

/// What one [`OutboxStore::commit`] writes, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxIntake {
    /// New notifications, each under a key from [`OutboxStore::next_keys`].
    pub entries: Vec<(OutboxKey, Vec<u8>)>,
    /// Events entering digest windows; one already held under the same `(sink, event)` is
    /// replaced, so handing an event over twice holds it once.
    pub buffered: Vec<BufferedRecord>,
    /// The id of the newest event handed over, if it moves.
    pub cursor: Option<EventId>,
}

impl OutboxIntake {
    /// True when committing it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.buffered.is_empty() && self.cursor.is_none()
    }
}

/// How much waits, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Notifications queued.
    pub pending: usize,
    /// Events held in digest windows.
    pub buffered: usize,
}

/// Durable storage of the notification outbox: the contract each engine keeps.
///
/// **Data.** Three things: queued notifications (key → bytes, read back in key order), events
/// buffered in digest windows (`(sink, event id)` → bytes, read back ordered by sink, then event
/// id), and one cursor (an event id). Values come back byte for byte as written.
///
/// **Keys.** [`next_keys`](OutboxStore::next_keys) hands out keys that are unique in the outbox
/// and greater than every key handed out before, also across a restart, so key order is the order
/// in which notifications were made; a key is never handed out twice, even when the notification
/// it was meant for was never committed.
///
/// **Cursor.** It only moves forward: a [`commit`](OutboxStore::commit) whose cursor is lower
/// than the stored one leaves the stored one. The notifier stores the id of the newest event it
/// was handed; after a crash it asks the event store for the events past it and hands them over
/// again.
///
/// **Atomic calls.** Each call takes effect whole or not at all, also when it fails (it may then
/// have taken effect, or not) and when the process dies in the middle; calls from several tasks
/// at once (the delivery tasks, the writer's thread) each see the others whole. Reads reflect
/// every call that has returned.
///
/// **Durable on return.** When a call returns `Ok`, what it wrote survives a crash, except a
/// `commit` that queues no notification (only buffered events and the cursor): it may wait for
/// the engine's next durable write (on sled, the event store's next group commit; on a database,
/// its transaction's commit), since losing it only moves the cursor back and the notifier hands
/// those events over again (buffering them is idempotent, above). What a crash keeps is a prefix:
/// a call that is durable makes every call that returned before it durable too. An engine without
/// durability (the in-memory reference) keeps everything for as long as it lives.
///
/// **Updates of gone entries.** [`update`](OutboxStore::update) rewrites an entry that is still
/// queued and leaves a key that is not (delivered, dropped) absent; removing absent keys or
/// buffered events is not an error.
///
/// **Where it is called from.** Futures are `Send` and never block the thread that polls them
/// (an engine on a blocking database runs it through `spawn_blocking`). The notifier awaits them
/// on the runtime, and also, for [`commit`](OutboxStore::commit) right after the event store made
/// a batch durable, from the capture writer's own thread through `Handle::block_on`: inside the
/// runtime's context (spawning works) but not on one of its workers, so an engine must not use
/// `block_in_place`.
///
/// **Engine failures.** An engine that reopens its database after a write failure (sled) answers
/// [`Error::StoreClosed`](crate::Error::StoreClosed) meanwhile and works again once it has
/// reopened; the notifier retries on its next pass.
#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// `n` fresh keys, increasing.
    async fn next_keys(&self, n: usize) -> Result<Vec<OutboxKey>>;

    /// Writes `intake` atomically: its notifications, its buffered events and the cursor
    /// (moved forward only). Durable on return when it queues notifications; see the contract.
    async fn commit(&self, intake: OutboxIntake) -> Result<()>;

    /// The cursor, `None` until a commit first sets it.
    async fn cursor(&self) -> Result<Option<EventId>>;

    /// Sets the cursor to `at` only if nothing ever set it, atomically (replicas starting at
    /// once: the first one's start wins, and none skips what another already recorded), and
    /// durably; returns the cursor as it then is.
    async fn init_cursor(&self, at: EventId) -> Result<EventId>;

    /// Every queued notification, in key order.
    async fn entries(&self) -> Result<Vec<(OutboxKey, Vec<u8>)>>;

    /// Rewrites the queued notification `key` (its attempts, state, next attempt), durably; a
    /// key no longer queued stays absent.
    async fn update(&self, key: OutboxKey, value: Vec<u8>) -> Result<()>;

    /// Removes notifications (delivered, given up, dropped), durably, in one write.
    async fn remove(&self, keys: &[OutboxKey]) -> Result<()>;

    /// The buffered events of `sink` (of every sink for `None`), ordered by sink, then event id.
    async fn buffered(&self, sink: Option<&str>) -> Result<Vec<BufferedRecord>>;

    /// Removes buffered events by `(sink, event id)`, durably, in one write.
    async fn remove_buffered(&self, events: &[(String, EventId)]) -> Result<()>;

    /// Closes a digest window: removes `sink`'s buffered `events` and queues the notification
    /// `key` made of them, atomically and durably (after a crash either the events are still
    /// buffered or the notification is queued, never both or neither).
    async fn close_window(
        &self,
        sink: &str,
        events: &[EventId],
        key: OutboxKey,
        value: Vec<u8>,
    ) -> Result<()>;

    /// How much waits.
    async fn counts(&self) -> Result<OutboxCounts>;

    /// Whether this process is the one that delivers. An outbox that several processes share
    /// (replicas on one database) lets one of them at a time, for as long as it lives and keeps
    /// asking; the others get `false` until it is gone. An outbox only this process uses is
    /// always its own.
    async fn try_lead(&self) -> Result<bool> {
        Ok(true)
    }

    /// True when other processes may share this outbox and its event store (so the delivering
    /// one takes every event from the store, not only those its own writer made).
    fn is_shared(&self) -> bool {
        false
    }
}
