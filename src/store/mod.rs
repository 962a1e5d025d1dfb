//! Event storage: the [`EventStore`] contract the rest of histor speaks, the pure parts every
//! engine shares ([`history`] delta chains, [`retention`] decisions, [`query`] matching and
//! paging, the dedupe window), the notification outbox's own contract ([`outbox`]), and the
//! engines behind both (`sled/`, `postgres/`, one folder per engine).
//! Depends only on pipeline types; knows nothing of HTTP or Kubernetes clients. Nothing outside
//! an engine's folder names its crate.

use crate::Result;
use crate::crd::Operation;
use crate::pipeline::{AuditInfo, Captured, ChangeEvent, ChangeState, Commit};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

pub mod audit;
#[cfg(test)]
pub(crate) mod conformance;
pub mod copy;
pub mod digest;
pub mod history;
pub mod kube_events;
mod location;
pub mod mem;
pub mod outbox;
mod postgres;
pub mod query;
mod recent;
pub mod retention;
mod sled;

pub use self::audit::{AuditEntry, AuditJournal, AuditSeq, MemAudit, UsageRow};
pub use self::history::SNAPSHOT_EVERY;
pub use self::kube_events::{KeptEvent, KubeEventStore, MemKubeEvents, Regarding};
pub use self::location::{Engine, Location};
pub use self::mem::MemStore;
pub use self::outbox::{MemOutbox, OutboxStore};
pub use self::postgres::{PgConfig, PgStore};
pub use self::query::MAX_PAGE;
pub use self::retention::MAX_REMOVALS_PER_PASS;
pub use self::sled::{BUCKET_SHIFT, DEFAULT_SPOOL_BYTES, HEADS_CACHE, SledStore, Spool, Spooled};

/// How long a request uid is remembered for dedupe, in microseconds of event ids: 2 minutes.
/// The apiserver calls every webhook of a request, and retries it, within the request's own
/// timeout (60 s by default; a webhook's timeout is at most 30 s).
pub const DEDUPE_WINDOW: u64 = 2 * 60 * 1_000_000;

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
    /// Only events in this state.
    pub state: Option<ChangeState>,
}

/// A witness's verdict on a received change, for [`EventStore::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The event.
    pub id: EventId,
    /// Its new state: `confirmed`, `notApplied` or `unconfirmed`.
    pub state: ChangeState,
    /// The commit a witness saw (for `confirmed`).
    pub commit: Option<Commit>,
}

/// The newest stored event of an object that the store believes exists (its last event is not
/// a DELETE), for [`EventStore::live_objects`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// Object uid.
    pub uid: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// Its newest event.
    pub last: EventId,
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

/// Durable, queryable storage of change events: the contract every engine keeps (the sled engine,
/// the in-memory reference engine, and the conformance suite that holds both to it).
///
/// **Ids.** [`append`](EventStore::append) gives each new event the id
/// `max(receipt time in µs, last id + 1)`: ids are unique, increase in commit order (also across
/// a restart, whatever the clock does) and are never reused, and an id range is a time range to
/// within a few µs. Every ordering the store offers (pages, chains) is id order.
///
/// **Dedupe and linking.** An event is one change, named by its dedupe key
/// ([`Captured::dedupe`]: the request uid's digest unless the pipeline gives a fingerprint that
/// every webhook call of one request shares). When a dedupe key was stored within the dedupe
/// window ([`DEDUPE_WINDOW`], measured back from the newest id; an engine may remember a little
/// longer, never shorter, and the window survives a restart) a new event with it is not stored again: if every one of its policies is already on the stored
/// event it is a [`Duplicate`](AppendOutcome::Duplicate) of it (an apiserver retry); otherwise
/// its new policies are added to the stored event (in order, after the existing ones) and it is
/// [`Linked`](AppendOutcome::Linked) to it (another webhook of the same request). Both outcomes
/// carry the stored event's id; a request whose event retention already removed is a
/// `Duplicate`. This holds inside one batch too.
///
/// **What is kept.** An event reads back as it was appended (its `state`, `commit` and
/// `inferred` too, until [`resolve`](EventStore::resolve) changes the first two), except that `object` is rebuilt
/// (below) and the user's `extra` is dropped (it names the credential and pod of a token, so it
/// would grow the store with every pod, and nothing reads it).
///
/// **Queries.** [`query`](EventStore::query) returns matching events newest first, `object`
/// left `None`. Every set field of [`Query`] must match: namespace, name, uid, user name,
/// operation and state exactly; `since` inclusive and `until` exclusive, compared as ids. `kind` matches
/// through aliases learnt from stored events other than subresource ones: for kind `Deployment`
/// of `deployments.apps`, any case of `deployment`, `deployments`, `deployments.apps`,
/// `deployment.apps` and `apps/deployment` (core kinds: `configmap`, `configmaps`); an unknown
/// alias is taken as a `resource.group` literally. A subresource event (`deployments/scale`)
/// matches its parent's kind, never the subresource's own (`Scale`).
///
/// **Paging.** A page holds at most [`Query::limit`] events (0 means 100, more than [`MAX_PAGE`]
/// means [`MAX_PAGE`]). `next` is `Some` only when at least one more event matches; it is the
/// id of the page's last (oldest) event, and passing it as [`Query::after`] continues with the
/// events older than it (exclusive). Events appended meanwhile are newer and do not shift pages.
///
/// **States.** The store keeps each object's history so that [`state_after`](EventStore::state_after)
/// of any stored event is exactly the object the event carried (the cleaned state after the
/// change; for a DELETE the last state; for a subresource change such as `scale`, the parent's
/// state with the change applied, since the subresource object itself is not kept), and
/// [`state_before`](EventStore::state_before) is the state after the object's previous stored
/// event, with any change the store never saw (the pipeline's `before` differed) applied. Either
/// is `None` when the store cannot know it: a subresource change to an object whose state it did
/// not have, an object's first event (`state_before`), an unseen change that no delta
/// reproduces, and an event whose predecessor retention removed (`state_before`). Objects are
/// keyed by uid, or without one by resource, namespace and name.
///
/// **Retention.** [`enforce_retention`](EventStore::enforce_retention) removes an event when it
/// is older than the `max_age` of every one of its policies, or when, counting the object's
/// events newest first, it is outside the newest `max_events_per_object` of every one of its
/// policies (each policy counts only the events it is on). A policy the `rule` function does not
/// know, and an event without policies, use `default`. What is kept still rebuilds exactly. An
/// object whose last event goes is reported in [`RetentionReport::objects_emptied`]. A pass
/// removes at most [`MAX_REMOVALS_PER_PASS`] events (then `incomplete`); an engine may also defer
/// count checks of objects that did not grow for up to a minute, so callers run passes
/// regularly and repeated passes converge.
///
/// **Blocking.** Methods block on I/O. Async code calls them through
/// `tokio::task::spawn_blocking` (the store is `Send + Sync + 'static` and shared as an `Arc`),
/// never on a runtime thread.
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

    /// Stores events copied from another store (`histor store copy`), under their own ids and
    /// as they were there: each pair is an event's id in the source and a [`Captured`] whose
    /// event is the source's [`get`](EventStore::get) of it (policies complete, `object` the
    /// state after it) and whose `before` is the source's
    /// [`state_before`](EventStore::state_before). Copied oldest first into a store that holds
    /// no object's later events, every copied event then reads back here as it did there:
    /// `get`, `state_after` and `state_before` (also `None` where retention removed its
    /// predecessor there), and query pages.
    ///
    /// Plain [`append`](EventStore::append) cannot do this: it assigns ids by receipt time
    /// (an id the source bumped past an event retention later removed comes out different),
    /// links policies instead of taking them, and has no way to say that the state before an
    /// event is unknown, nor to anchor a subresource change on a state it did not see.
    ///
    /// Ids must increase and be greater than every id this store has given (else
    /// [`Error::Usage`](crate::Error::Usage), nothing of the batch written); no dedupe happens,
    /// but each request uid enters the dedupe window as if appended. Durable once a later
    /// [`sync`](EventStore::sync) returns, like [`append_buffered`](EventStore::append_buffered).
    /// Every engine implements it; the default serves test doubles that never take copies.
    fn append_copied(&self, batch: &[(EventId, Captured)]) -> Result<()> {
        let _ = batch;
        Err(crate::Error::Usage(
            "this store does not take copied events".into(),
        ))
    }

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

    /// Sets the state of received events, as a witness decided: only an event still
    /// `received` changes (the first witness decides; a later verdict is not applied), its
    /// `commit` set with it. Returns, for each resolution, whether it was applied; an id the
    /// store does not hold (retention removed it) is `false`. Durable when it returns. On a
    /// shared store every replica reads the new state.
    fn resolve(&self, resolutions: &[Resolution]) -> Result<Vec<bool>>;

    /// The objects of `resource` (`deployments.apps`, `configmaps`) the store believes exist,
    /// with their newest event: those whose newest event is not a DELETE, keyed by uid
    /// (events without an object uid are left out). Subresource events count as the parent's.
    /// A relist compares them with what the apiserver holds.
    fn live_objects(&self, resource: &str) -> Result<Vec<ObjectHead>>;

    /// A small durable value by key, such as a watch's resourceVersion; `None` when never set.
    /// Shared by replicas on a shared store.
    fn cursor(&self, key: &str) -> Result<Option<String>>;

    /// Sets [`cursor`](EventStore::cursor) `key` (durable when it returns).
    fn set_cursor(&self, key: &str, value: &str) -> Result<()>;

    /// Adds the audit log's account of a change to events that have none yet (the first account
    /// stays: an audit event delivered twice changes nothing). Returns, for each note, whether it
    /// was applied; an id the store does not hold is `false`. Leaves the state alone (that is
    /// [`resolve`](EventStore::resolve)'s). Durable when it returns; every replica of a shared
    /// store reads it, in [`get`](EventStore::get) and in query pages alike.
    fn annotate(&self, notes: &[(EventId, AuditInfo)]) -> Result<Vec<bool>>;
}

/// Checks a batch for [`EventStore::append_copied`]: ids increasing and past `last`, the
/// store's last id.
pub(crate) fn check_copied_ids(
    last: EventId,
    ids: impl IntoIterator<Item = EventId>,
) -> Result<()> {
    let mut floor = last;
    for id in ids {
        if id <= floor {
            return Err(crate::Error::Usage(format!(
                "copied event {id} is not newer than event {floor} already in the store: \
                 events are copied oldest first into a store whose events are all older"
            )));
        }
        floor = id;
    }
    Ok(())
}

impl Default for RetentionRule {
    fn default() -> Self {
        RetentionRule {
            max_events_per_object: 100,
            max_age: SignedDuration::from_hours(720),
        }
    }
}
