//! Event storage: the [`EventStore`] trait the rest of histor speaks, and its sled implementation.
//! Depends only on pipeline types; knows nothing of HTTP or Kubernetes clients.

use crate::Result;
use crate::crd::Operation;
use crate::pipeline::{Captured, ChangeEvent};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

mod codec;
mod keys;
mod recent;
mod sled;
#[cfg(test)]
mod tests;

pub use self::sled::{
    BUCKET_SHIFT, DEDUPE_WINDOW, HEADS_CACHE, MAX_PAGE, MAX_REMOVALS_PER_PASS, SNAPSHOT_EVERY,
    SharedDb, SledStore,
};

/// Identifies a stored event. Ids grow with receipt time (microseconds since the epoch, bumped to
/// stay unique), so an id range is a time range.
pub type EventId = u64;

/// An event as read back from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The event's id.
    pub id: EventId,
    /// The event. `object` is filled only by [`EventStore::get`] (the state after the change);
    /// queries leave it `None` to stay cheap.
    pub event: ChangeEvent,
}

/// What [`EventStore::append`] did with one captured event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as a new event.
    Recorded(EventId),
    /// The same request was already stored under another policy; this policy was linked to it.
    Linked(EventId),
    /// The same request was already stored under this policy (an apiserver retry); nothing written.
    Duplicate(EventId),
}

/// Filters for [`EventStore::query`]. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Namespace; `None` for all namespaces and cluster-scoped objects.
    pub namespace: Option<String>,
    /// Kind or resource, case-insensitive: `Deployment`, `deployment`, `deployments`,
    /// `deployments.apps`, `apps/deployment` (aliases are learnt from stored events). Matches the
    /// object's subresource events too (a `deployments/scale` change is a Deployment's).
    pub kind: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Object uid.
    pub uid: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Operation.
    pub operation: Option<Operation>,
    /// Only events received at or after this time (compared as event ids: an id is the receipt
    /// time in microseconds, bumped by a few µs at most to stay unique).
    pub since: Option<Timestamp>,
    /// Only events received before this time (likewise by id).
    pub until: Option<Timestamp>,
    /// Page size; 0 means 100, more than 1000 means 1000.
    pub limit: usize,
    /// Continue from a previous page (its `next`).
    pub after: Option<EventId>,
}

/// One page of results, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The events.
    pub events: Vec<StoredEvent>,
    /// Pass as [`Query::after`] to get the next (older) page; `None` on the last page.
    pub next: Option<EventId>,
}

/// How long a policy keeps its events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetentionRule {
    /// Most events per object.
    pub max_events_per_object: u32,
    /// Oldest event kept.
    pub max_age: SignedDuration,
}

/// What one retention pass removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetentionReport {
    /// Events removed.
    pub removed: u64,
    /// Objects whose last event was removed (their ChangeRecords can go).
    pub objects_emptied: Vec<EmptiedObject>,
    /// The pass stopped at its bound with more due: run the next one soon.
    pub incomplete: bool,
}

/// An object that no longer has any stored event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmptiedObject {
    /// `deployments.apps`, or `configmaps` for the core group.
    pub resource: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// Object uid, when its events had one.
    pub uid: Option<String>,
}

/// Size figures for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// Events held.
    pub events: u64,
    /// Bytes the store occupies on disk.
    pub bytes_on_disk: u64,
}

/// Durable, queryable storage of change events. Methods block: call them from a blocking thread.
pub trait EventStore: Send + Sync + 'static {
    /// Stores a batch atomically enough that a crash after return loses none of it: when this
    /// returns `Ok`, every `Recorded`/`Linked` outcome is on disk (group commit: one flush a batch).
    fn append(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
        let outcomes = self.append_buffered(batch)?;
        self.sync()?;
        Ok(outcomes)
    }

    /// [`append`](EventStore::append) without the flush: the batch is durable once a later
    /// [`sync`](EventStore::sync) returns. Lets a writer append the next batch while the previous
    /// one is being flushed.
    ///
    /// A call that fails may have written part of the batch. Called again with the same batch
    /// (before a `sync` succeeds), it reports each event the failed call wrote as that call
    /// wrote it (`Recorded` or `Linked`, with the same id), not as a `Duplicate` of itself, so a
    /// retrying writer tells its observers of every durable event exactly once. An event that
    /// was a true duplicate (an apiserver retry) stays a `Duplicate`.
    fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>>;

    /// Makes everything appended so far durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Called by the writer after a failed append or sync, before it tries again: a store that
    /// cannot write again without reopening (sled after an I/O error) reopens here. An error
    /// means "not yet" (the disk is still full, say); the writer calls again later.
    fn recover(&self) -> Result<()> {
        Ok(())
    }

    /// Events matching `query`, newest first.
    fn query(&self, query: &Query) -> Result<Page>;

    /// One event by id, with `object` rebuilt: the state after the change, the last state for
    /// DELETE, and for a subresource event (such as `scale`) the parent object's state after it
    /// (the subresource object itself is not kept). `None` in `object` when the state is unknown.
    fn get(&self, id: EventId) -> Result<Option<StoredEvent>>;

    /// The object's cleaned state right after event `id`, rebuilt from snapshots and deltas.
    fn state_after(&self, id: EventId) -> Result<Option<Value>>;

    /// The state before event `id` (the state after the object's previous event), if known:
    /// `None` for an object's first event, and when the pipeline's `before` showed the object had
    /// changed in a way the store never saw and could not keep as a delta.
    fn state_before(&self, id: EventId) -> Result<Option<Value>>;

    /// Removes events past their policies' retention. `rule` gives the rule of a policy by name;
    /// events of unknown policies use `default`. An event goes when none of its policies keeps
    /// it: a policy keeps events younger than its `max_age` and, per object, its newest
    /// `max_events_per_object` events. Incremental and bounded: call it every few seconds.
    fn enforce_retention(
        &self,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport>;

    /// Size figures.
    fn stats(&self) -> Result<StoreStats>;
}

impl Default for RetentionRule {
    fn default() -> Self {
        RetentionRule {
            max_events_per_object: 100,
            max_age: SignedDuration::from_hours(720),
        }
    }
}
