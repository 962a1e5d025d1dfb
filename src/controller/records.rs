//! ChangeRecord writer: keeps one small ChangeRecord per tracked object in step with the store.
//!
//! The capture writer reports every durable batch ([`ChangeRecordWriter::on_recorded`]); that only
//! marks records dirty. A loop flushes due records: at most one write per record per interval, so a
//! burst of changes (a rollout, a `kubectl apply` of many objects) costs one write per object, not one
//! per change. Each flush reads the object's retained events back from the store and summarises them
//! with the pure [`summarise`], so the record always agrees with the store, retention included. When
//! retention empties an object, its record is deleted. etcd only ever holds the summary.
//!
//! Memory is bounded, whatever the churn of objects. Only the leader tracks dirty records; a
//! follower (or a leader whose dirty set is full, [`MAX_DIRTY`] = 10,000 records) remembers only
//! the id of the oldest event it did not track, and once leading it catches up from the store:
//! it pages through the events from that id on and marks their objects dirty, a few pages a tick,
//! pausing while the dirty set is full. Records of objects emptied by retention are marked dirty
//! on every replica (up to the same bound), since the store cannot find them again. What the
//! leader remembers of records it wrote (when, and the spec it applied) is a cache of at most
//! [`MAX_WRITTEN`] = 10,000 records; the least recently written go first, and losing one costs
//! at most one extra spec patch and one write sooner than the interval. Losing leadership clears
//! that cache: another replica may write the records meanwhile.

use super::{Error, FIELD_MANAGER, Result};
use crate::crd::{
    ChangeRecord, ChangeRecordSpec, ChangeRecordStatus, ChangeSummary, Contributor, RecentChange,
    TargetRef,
};
use crate::pipeline::{ChangeEvent, display_path, summarize};
use crate::store::{EventId, EventStore, Query, RetentionReport, StoredEvent};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Changes listed in `status.recent`.
pub const RECENT: usize = 5;
/// Paths listed per recent change.
pub const PATHS_PER_CHANGE: usize = 10;
/// Contributors listed.
pub const CONTRIBUTORS: usize = 5;
/// Longest summary or path kept; longer ones are cut with `…` so a record stays small.
const MAX_TEXT: usize = 200;
/// Most events read back per record flush; `changeCount` saturates here.
const MAX_SCAN: usize = 10_000;
/// Page size when reading events back.
const PAGE: usize = 500;
/// Longest object name Kubernetes accepts for a DNS-subdomain name.
const MAX_NAME: usize = 253;
/// Most records waiting to be written; events beyond it are found again in the store.
pub const MAX_DIRTY: usize = 10_000;
/// Most written records remembered (time and spec of their last write).
pub const MAX_WRITTEN: usize = 10_000;
/// Store pages read per tick while catching up.
const CATCH_UP_PAGES: usize = 4;

/// Which record an event belongs to, and how to find its events again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// Namespace of the ChangeRecord.
    pub namespace: String,
    /// Name of the ChangeRecord.
    pub name: String,
}

/// The tracked object behind a record (subresources fold into their parent).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    namespace: Option<String>,
    group: String,
    resource: String,
    name: String,
    uid: Option<String>,
}

impl Target {
    fn of(event: &ChangeEvent) -> Target {
        Target {
            namespace: event.namespace.clone(),
            group: event.resource.group.clone(),
            resource: event.resource.resource.clone(),
            name: event.name.clone(),
            uid: event.object_uid.clone(),
        }
    }

    fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// The object an emptied-object report names (`deployments.apps`: resource, then group).
    fn emptied(o: &crate::store::EmptiedObject) -> Target {
        let (resource, group) = o.resource.split_once('.').unwrap_or((&o.resource, ""));
        Target {
            namespace: o.namespace.clone(),
            group: group.to_string(),
            resource: resource.to_string(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        }
    }

    fn matches(&self, event: &ChangeEvent) -> bool {
        event.namespace == self.namespace
            && event.resource.group == self.group
            && event.resource.resource == self.resource
            && event.name == self.name
    }
}

/// Name of the ChangeRecord of an object: `<resource>.<group>-<name>` (`<resource>-<name>` for
/// the core group), lowercased. Names that are not valid DNS subdomains as they stand, or are too
/// long, are cleaned up, cut, and given a hash suffix of the original so two objects never share
/// a record.
pub fn record_name(group: &str, resource: &str, name: &str) -> String {
    let raw = if group.is_empty() {
        format!("{resource}-{name}")
    } else {
        format!("{resource}.{group}-{name}")
    }
    .to_lowercase();
    let clean = dns_subdomain(&raw);
    if clean == raw && raw.len() <= MAX_NAME {
        return raw;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_NAME - hash.len() - 1;
    let mut cut: String = clean.chars().take(keep).collect();
    while cut.ends_with(['-', '.']) {
        cut.pop();
    }
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

/// Lowercase alphanumerics, `-` and `.`, each dot-separated label starting and ending with an
/// alphanumeric.
fn dns_subdomain(s: &str) -> String {
    s.split('.')
        .map(|label| {
            let mapped: String = label
                .chars()
                .map(|c| {
                    if c.is_ascii_lowercase() || c.is_ascii_digit() {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            mapped.trim_matches('-').to_string()
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// Summarises an object's retained events, newest first, into the record's status.
pub fn summarise(events: &[StoredEvent]) -> ChangeRecordStatus {
    let Some(newest) = events.first() else {
        return ChangeRecordStatus::default();
    };
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        *counts.entry(e.event.user.username.as_str()).or_default() += 1;
    }
    let mut contributors: Vec<Contributor> = counts
        .into_iter()
        .map(|(user, changes)| Contributor {
            user: user.to_string(),
            changes,
        })
        .collect();
    contributors.sort_by(|a, b| b.changes.cmp(&a.changes).then_with(|| a.user.cmp(&b.user)));
    contributors.truncate(CONTRIBUTORS);

    let recent = events
        .iter()
        .take(RECENT)
        .map(|e| {
            let mut paths: Vec<String> = Vec::new();
            for change in &e.event.changes {
                let p = crate::render::shorten(&display_path(&change.path), MAX_TEXT);
                if !paths.contains(&p) {
                    paths.push(p);
                }
                if paths.len() == PATHS_PER_CHANGE {
                    break;
                }
            }
            RecentChange {
                time: Time(e.event.received_at),
                user: e.event.user.username.clone(),
                operation: e.event.operation,
                paths,
            }
        })
        .collect();

    ChangeRecordStatus {
        change_count: events.len() as u64,
        first_seen: events.last().map(|e| Time(e.event.received_at)),
        last_change: Some(ChangeSummary {
            time: Time(newest.event.received_at),
            user: newest.event.user.username.clone(),
            operation: newest.event.operation,
            summary: crate::render::shorten(&summarize(&newest.event), MAX_TEXT),
        }),
        recent,
        contributors,
    }
}

/// The record's spec from its events (newest first): the kind comes from the newest request on
/// the object itself, since a subresource request names the subresource's kind (a `Scale`).
fn spec_of(target: &Target, events: &[StoredEvent]) -> ChangeRecordSpec {
    let main = events
        .iter()
        .find(|e| e.event.resource.subresource.is_none())
        .or_else(|| events.first());
    let (api_version, kind) = main.map_or_else(
        || (String::new(), String::new()),
        |e| (e.event.kind.api_version(), e.event.kind.kind.clone()),
    );
    let uid = events
        .iter()
        .find_map(|e| e.event.object_uid.clone())
        .or_else(|| target.uid.clone());
    let display_kind = if target.group.is_empty() {
        kind.to_lowercase()
    } else {
        format!("{}.{}", kind.to_lowercase(), target.group)
    };
    ChangeRecordSpec {
        target: format!("{display_kind}/{}", target.name),
        target_ref: TargetRef {
            api_version,
            kind,
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            uid,
        },
    }
}

/// A record to write: its object, and when it first became dirty since its last write.
struct Dirty {
    since: Instant,
    target: Target,
}

/// What the leader remembers of a record it wrote.
struct Written {
    at: Instant,
    spec: ChangeRecordSpec,
}

/// A catch-up pass over the store: events from `since` on, newest first, continuing below
/// `after`.
#[derive(Clone, Copy, Debug)]
struct Scan {
    since: EventId,
    after: Option<EventId>,
    marked: usize,
}

#[derive(Default)]
struct State {
    /// Records to write; at most `max_dirty` (plus the failed writes of one flush).
    dirty: HashMap<RecordKey, Dirty>,
    /// Records written, at most `max_written`.
    written: HashMap<RecordKey, Written>,
    /// Oldest event not tracked in `dirty` (not leading, or `dirty` was full).
    behind: Option<EventId>,
    /// The catch-up pass under way.
    scan: Option<Scan>,
}

impl State {
    fn fell_behind(&mut self, id: EventId) {
        self.behind = Some(self.behind.map_or(id, |b| b.min(id)));
    }

    /// Forgets the least recently written records beyond `max`, a tenth more at once so that
    /// the sort is rare.
    fn evict_written(&mut self, max: usize) {
        if self.written.len() <= max {
            return;
        }
        let mut by_age: Vec<(Instant, RecordKey)> = self
            .written
            .iter()
            .map(|(k, w)| (w.at, k.clone()))
            .collect();
        by_age.sort();
        let excess = self.written.len() - max + max / 10;
        for (_, key) in by_age.into_iter().take(excess) {
            self.written.remove(&key);
        }
    }
}

/// Writes ChangeRecords. Implements the shape of the capture writer's `RecordObserver`.
pub struct ChangeRecordWriter {
    client: Client,
    store: Arc<dyn EventStore>,
    operator_namespace: String,
    interval: Duration,
    max_dirty: usize,
    max_written: usize,
    leading: AtomicBool,
    state: Mutex<State>,
    /// Other replicas write the store too ([`ChangeRecordWriter::follow_shared_store`]).
    shared: AtomicBool,
    /// The newest event the leader has taken from a shared store.
    followed: Mutex<Option<EventId>>,
}

impl ChangeRecordWriter {
    /// A writer whose cluster-scoped records go to `operator_namespace` and which writes each
    /// record at most once per `interval`.
    pub fn new(
        client: Client,
        store: Arc<dyn EventStore>,
        operator_namespace: String,
        interval: Duration,
    ) -> ChangeRecordWriter {
        ChangeRecordWriter {
            client,
            store,
            operator_namespace,
            interval,
            max_dirty: MAX_DIRTY,
            max_written: MAX_WRITTEN,
            leading: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            shared: AtomicBool::new(false),
            followed: Mutex::new(None),
        }
    }

    /// The store is shared with other replicas, whose writers report their batches only to
    /// themselves: the leader also takes every new event from the store, each tick.
    pub fn follow_shared_store(&self) {
        self.shared.store(true, Ordering::SeqCst);
    }

    /// One step of following a shared store: marks the records of events stored since the last
    /// step (by any replica) dirty. The first step after taking over starts at the newest event
    /// (events of this replica's own writer it did not track are caught up from `behind`; those
    /// of others before the takeover were the previous leader's). More new events than
    /// [`CATCH_UP_PAGES`] pages go to the catch-up pass. Returns how many records it marked.
    pub async fn follow_step(&self) -> Result<usize> {
        if !self.leading.load(Ordering::SeqCst) || !self.shared.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let from = *self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let query = |since: Option<EventId>, after: Option<EventId>, limit: usize| {
            let store = self.store.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    store.query(&Query {
                        since: since.and_then(|s| {
                            jiff::Timestamp::from_microsecond(i64::try_from(s).unwrap_or(i64::MAX))
                                .ok()
                        }),
                        limit,
                        after,
                        ..Query::default()
                    })
                })
                .await
                .map_err(|e| Error::Usage(format!("store reader task failed: {e}")))?
            }
        };
        let Some(from) = from else {
            let newest = query(None, None, 1)
                .await?
                .events
                .first()
                .map_or(0, |e| e.id);
            *self.followed.lock().unwrap_or_else(|e| e.into_inner()) = Some(newest);
            return Ok(0);
        };
        let since = from + 1;
        let mut newest = from;
        let mut after = None;
        let mut marked = 0;
        for page_number in 0..CATCH_UP_PAGES {
            let page = query(Some(since), after, PAGE).await?;
            let now = Instant::now();
            let mut state = self.state();
            let dirty_before = state.dirty.len();
            for stored in &page.events {
                newest = newest.max(stored.id);
                self.mark(&mut state, Target::of(&stored.event), now, stored.id);
            }
            marked += state.dirty.len().saturating_sub(dirty_before);
            match page.next {
                Some(next) if Some(next) != after => {
                    if page_number + 1 == CATCH_UP_PAGES {
                        // More than a step takes: the catch-up pass reads the rest.
                        state.fell_behind(since);
                    }
                    after = Some(next);
                }
                _ => break,
            }
        }
        *self.followed.lock().unwrap_or_else(|e| e.into_inner()) = Some(newest);
        Ok(marked)
    }

    /// The same writer with other bounds than [`MAX_DIRTY`] and [`MAX_WRITTEN`].
    pub fn with_bounds(mut self, max_dirty: usize, max_written: usize) -> ChangeRecordWriter {
        self.max_dirty = max_dirty.max(1);
        self.max_written = max_written.max(1);
        self
    }

    /// Tells the writer whether this replica leads ([`ChangeRecordWriter::run`] does, from the
    /// election). Taking over starts a catch-up from the oldest event not tracked; losing the
    /// lead forgets what was written, since another replica writes the records meanwhile, and an
    /// unfinished catch-up pass starts again at the next takeover.
    pub fn set_leading(&self, leading: bool) {
        if self.leading.swap(leading, Ordering::SeqCst) == leading {
            return;
        }
        // A new term follows a shared store from its newest event on.
        *self.followed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut state = self.state();
        if !leading {
            state.written.clear();
            // An unfinished pass starts again at the next takeover.
            if let Some(scan) = state.scan.take() {
                state.fell_behind(scan.since);
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind; they stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key_of(&self, target: &Target) -> RecordKey {
        RecordKey {
            namespace: target
                .namespace
                .clone()
                .unwrap_or_else(|| self.operator_namespace.clone()),
            name: record_name(&target.group, &target.resource, &target.name),
        }
    }

    /// Called after each durable batch: marks the touched objects' records dirty (on a follower,
    /// or with the dirty set full, only remembers the oldest event to catch up from). Cheap; no
    /// I/O.
    pub fn on_recorded(&self, events: &[StoredEvent]) {
        let now = Instant::now();
        let leading = self.leading.load(Ordering::SeqCst);
        let mut state = self.state();
        for stored in events {
            if !leading {
                state.fell_behind(stored.id);
                continue;
            }
            let target = Target::of(&stored.event);
            self.mark(&mut state, target, now, stored.id);
        }
    }

    /// Marks `target`'s record dirty if there is room; else remembers event `id` for catch-up.
    fn mark(&self, state: &mut State, target: Target, now: Instant, id: EventId) -> bool {
        let key = self.key_of(&target);
        if let Some(d) = state.dirty.get_mut(&key) {
            d.target = target;
            return true;
        }
        if state.dirty.len() >= self.max_dirty {
            state.fell_behind(id);
            return false;
        }
        state.dirty.insert(key, Dirty { since: now, target });
        true
    }

    /// Called after a retention pass (on every replica): records of emptied objects are flushed,
    /// which deletes them unless the store still holds events of the object. The store cannot
    /// name these objects again, so they are kept even on a follower, up to the dirty bound;
    /// beyond it a warning says how many records are left behind.
    pub fn on_retention(&self, report: &RetentionReport) {
        if report.objects_emptied.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        let mut left = 0;
        for object in &report.objects_emptied {
            let target = Target::emptied(object);
            let key = self.key_of(&target);
            if !state.dirty.contains_key(&key) && state.dirty.len() >= self.max_dirty {
                left += 1;
                continue;
            }
            // Deletion waits for the coalescing window since the report, not the last write.
            state
                .dirty
                .insert(key.clone(), Dirty { since: now, target });
            state.written.remove(&key);
        }
        if left > 0 {
            warn!(
                records = left,
                max = self.max_dirty,
                "too many ChangeRecords to write: records of objects emptied by retention are left in place"
            );
        }
    }

    /// One step of the catch-up pass, if one is under way: reads up to [`CATCH_UP_PAGES`] pages
    /// of the store and marks their objects dirty, pausing while the dirty set is full. Returns
    /// how many records it marked.
    pub async fn catch_up(&self) -> Result<usize> {
        let mut marked = 0;
        if !self.leading.load(Ordering::SeqCst) {
            return Ok(0);
        }
        {
            let mut state = self.state();
            if state.scan.is_none()
                && let Some(since) = state.behind.take()
            {
                info!(since, "catching up ChangeRecords from the store");
                state.scan = Some(Scan {
                    since,
                    after: None,
                    marked: 0,
                });
            }
        }
        for _ in 0..CATCH_UP_PAGES {
            let Some(scan) = self.state().scan else {
                break;
            };
            let asked = scan.after;
            let store = self.store.clone();
            let page = tokio::task::spawn_blocking(move || {
                store.query(&Query {
                    since: jiff::Timestamp::from_microsecond(
                        i64::try_from(scan.since).unwrap_or(i64::MAX),
                    )
                    .ok(),
                    limit: PAGE,
                    after: scan.after,
                    ..Query::default()
                })
            })
            .await
            .map_err(|e| Error::Usage(format!("store reader task failed: {e}")))??;
            let now = Instant::now();
            let mut state = self.state();
            // Leadership may have gone while the page was read.
            let Some(mut scan) = state.scan else {
                break;
            };
            let mut full = false;
            for stored in &page.events {
                if stored.id < scan.since {
                    continue;
                }
                let target = Target::of(&stored.event);
                let key = self.key_of(&target);
                if !state.dirty.contains_key(&key) && state.dirty.len() >= self.max_dirty {
                    full = true;
                    break;
                }
                if !state.dirty.contains_key(&key) {
                    marked += 1;
                    scan.marked += 1;
                }
                state
                    .dirty
                    .entry(key)
                    .or_insert(Dirty { since: now, target });
                scan.after = Some(stored.id);
            }
            if full {
                state.scan = Some(scan);
                debug!(marked = scan.marked, "ChangeRecord catch-up waits for room");
                break;
            }
            match page.next {
                // A store that hands the same page again would keep the pass going for ever.
                Some(next) if Some(next) != asked => {
                    scan.after = Some(next);
                    state.scan = Some(scan);
                }
                _ => {
                    info!(records = scan.marked, "ChangeRecord catch-up done");
                    // Events not tracked meanwhile start the next pass at once.
                    state.scan = state.behind.take().map(|since| Scan {
                        since,
                        after: None,
                        marked: 0,
                    });
                    break;
                }
            }
        }
        Ok(marked)
    }

    /// Writes every record that is due at `now`; returns how many were written or deleted.
    pub async fn flush_due(&self, now: Instant) -> usize {
        let due: Vec<(RecordKey, Target)> = {
            let mut state = self.state();
            let interval = self.interval;
            let keys: Vec<RecordKey> = state
                .dirty
                .iter()
                .filter(|(key, d)| {
                    now >= d.since + interval
                        && state
                            .written
                            .get(*key)
                            .is_none_or(|w| now >= w.at + interval)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| state.dirty.remove(&k).map(|d| (k, d.target)))
                .collect()
        };
        let mut written = 0;
        for (key, target) in due {
            match self.write(&key, &target, now).await {
                Ok(()) => written += 1,
                Err(error) => {
                    warn!(%error, namespace = %key.namespace, record = %key.name, "ChangeRecord write failed; will retry");
                    self.state()
                        .dirty
                        .entry(key)
                        .or_insert(Dirty { since: now, target });
                }
            }
        }
        self.state().evict_written(self.max_written);
        written
    }

    /// Reads the object's retained events back, newest first: those that may have happened (a
    /// change the witness found `notApplied` is not counted or shown; an object with only
    /// those has no record).
    async fn events_of(&self, target: &Target) -> Result<Vec<StoredEvent>> {
        let store = self.store.clone();
        let t = target.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = store.query(&Query {
                    namespace: t.namespace.clone(),
                    kind: Some(t.group_resource()),
                    name: Some(t.name.clone()),
                    limit: PAGE,
                    after,
                    ..Query::default()
                })?;
                out.extend(
                    page.events
                        .into_iter()
                        .filter(|e| t.matches(&e.event) && e.event.state.may_have_happened()),
                );
                match page.next {
                    Some(next) if out.len() < MAX_SCAN => after = Some(next),
                    _ => break,
                }
            }
            out.truncate(MAX_SCAN);
            Ok(out)
        })
        .await
        .map_err(|e| Error::Usage(format!("store reader task failed: {e}")))?
    }

    async fn write(&self, key: &RecordKey, target: &Target, now: Instant) -> Result<()> {
        let api: Api<ChangeRecord> = Api::namespaced(self.client.clone(), &key.namespace);
        let events = self.events_of(target).await?;
        if events.is_empty() {
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(namespace = %key.namespace, record = %key.name, "ChangeRecord deleted: history expired")
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            self.state().written.remove(key);
            return Ok(());
        }

        let params = PatchParams::apply(FIELD_MANAGER).force();
        let spec = spec_of(target, &events);
        let spec_known = self.state().written.get(key).map(|w| &w.spec) == Some(&spec);
        if !spec_known {
            let mut record = ChangeRecord::new(&key.name, spec.clone());
            record.metadata.namespace = Some(key.namespace.clone());
            record.metadata.labels = Some(BTreeMap::from([(
                super::webhook::MANAGED_BY_LABEL.to_string(),
                super::webhook::MANAGED_BY.to_string(),
            )]));
            api.patch(&key.name, &params, &Patch::Apply(&record))
                .await?;
        }
        let status = summarise(&events);
        let patch = serde_json::json!({
            "apiVersion": ChangeRecord::api_version(&()),
            "kind": ChangeRecord::kind(&()),
            "status": status,
        });
        api.patch_status(&key.name, &params, &Patch::Apply(patch))
            .await?;
        debug!(namespace = %key.namespace, record = %key.name, changes = status.change_count, "ChangeRecord written");
        self.state()
            .written
            .insert(key.clone(), Written { at: now, spec });
        Ok(())
    }

    /// Flushes due records while this replica leads, until the leadership channel closes.
    pub async fn run(self: Arc<Self>, leading: watch::Receiver<bool>) {
        // Ticks finer than the interval keep the write latency close to the interval itself.
        let tick = (self.interval / 5).max(Duration::from_millis(200));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if leading.has_changed().is_err() {
                return;
            }
            let is_leader = *leading.borrow();
            self.set_leading(is_leader);
            if is_leader {
                if let Err(error) = self.follow_step().await {
                    warn!(%error, "taking new events from the shared store failed; will retry");
                }
                if let Err(error) = self.catch_up().await {
                    warn!(%error, "ChangeRecord catch-up failed; will retry");
                }
                self.flush_due(Instant::now()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, MemStore};
    use crate::crd::Operation;
    use crate::pipeline::ChangeOp;
    use crate::pipeline::{Actor, FieldChange, KindId, ResourceId};
    use http::{Request, Response};
    use jiff::Timestamp;
    use kube::client::Body;
    use serde_json::json;

    fn event(id: u64, op: Operation, user: &str, changes: &[(&str, i64, i64)]) -> StoredEvent {
        StoredEvent {
            id,
            event: ChangeEvent {
                request_uid: format!("req-{id}"),
                received_at: Timestamp::from_second(1_767_225_600 + id as i64).expect("time"),
                policies: vec!["prod-apps".into()],
                operation: op,
                user: Actor {
                    username: user.into(),
                    ..Actor::default()
                },
                resource: crate::pipeline::testdata::deployments(),
                kind: crate::pipeline::testdata::deployment_kind(),
                namespace: Some("prod".into()),
                name: "api".into(),
                object_uid: Some("uid-api".into()),
                changes: changes
                    .iter()
                    .map(|(path, old, new)| FieldChange {
                        op: ChangeOp::Replace,
                        path: (*path).into(),
                        old: Some(json!(old)),
                        new: Some(json!(new)),
                    })
                    .collect(),
                object: None,
                redacted: false,
                state: Default::default(),
                commit: None,
                inferred: None,
                audit: None,
            },
        }
    }

    #[test]
    fn names_follow_resource_group_name_and_stay_valid() {
        assert_eq!(
            record_name("apps", "deployments", "api"),
            "deployments.apps-api"
        );
        assert_eq!(
            record_name("", "configmaps", "Settings"),
            "configmaps-settings"
        );
        let odd = record_name(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "system:controller:x",
        );
        assert!(odd.starts_with("clusterroles.rbac.authorization.k8s.io-system-controller-x-"));
        assert_eq!(dns_subdomain(&odd), odd);
        let long = record_name("apps", "deployments", &"a".repeat(300));
        assert_eq!(long.len(), MAX_NAME);
        assert_eq!(dns_subdomain(&long), long);
        assert_ne!(long, record_name("apps", "deployments", &"a".repeat(301)));
    }

    #[test]
    fn summary_is_small_and_newest_first() {
        let paths: Vec<(String, i64, i64)> = (0..30)
            .map(|i| (format!("/spec/template/metadata/labels/l{i}"), i, i + 1))
            .collect();
        let path_refs: Vec<(&str, i64, i64)> =
            paths.iter().map(|(p, a, b)| (p.as_str(), *a, *b)).collect();
        let mut events: Vec<StoredEvent> = (1..=40)
            .map(|i| {
                let user = format!("user-{}", i % 7);
                event(i, Operation::Update, &user, &path_refs)
            })
            .collect();
        events.push(event(
            41,
            Operation::Update,
            "alice",
            &[("/spec/replicas", 1, 3)],
        ));
        events.push(event(42, Operation::Delete, "bob", &[]));
        events.reverse();

        let status = summarise(&events);
        assert_eq!(status.change_count, 42);
        let last = status.last_change.clone().expect("last change");
        assert_eq!(
            (last.user.as_str(), last.operation),
            ("bob", Operation::Delete)
        );
        assert_eq!(status.recent.len(), RECENT);
        assert_eq!(status.recent[1].paths, vec!["spec.replicas".to_string()]);
        assert_eq!(status.recent[2].paths.len(), PATHS_PER_CHANGE);
        assert_eq!(status.contributors.len(), CONTRIBUTORS);
        assert!(status.contributors[0].changes >= status.contributors[1].changes);
        assert_eq!(
            status.first_seen,
            Some(Time(events.last().expect("event").event.received_at))
        );
        let size = serde_json::to_vec(&status).expect("json").len();
        assert!(size < 8 * 1024, "status is {size} bytes");
    }

    fn writer() -> (
        Arc<ChangeRecordWriter>,
        Arc<MemStore>,
        tokio::task::JoinHandle<Vec<fixtures::Call>>,
    ) {
        bounded_writer(MAX_DIRTY, MAX_WRITTEN, true)
    }

    fn bounded_writer(
        max_dirty: usize,
        max_written: usize,
        leading: bool,
    ) -> (
        Arc<ChangeRecordWriter>,
        Arc<MemStore>,
        tokio::task::JoinHandle<Vec<fixtures::Call>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let store = Arc::new(MemStore::default());
        let writer = ChangeRecordWriter::new(
            client,
            store.clone(),
            "histor-system".into(),
            Duration::from_secs(5),
        )
        .with_bounds(max_dirty, max_written);
        writer.set_leading(leading);
        (Arc::new(writer), store, fixtures::serve(handle, Vec::new()))
    }

    /// An event on Deployment `prod/<name>`, stored and reported to `writer`.
    fn record(writer: &ChangeRecordWriter, store: &MemStore, id: u64, name: &str) {
        let mut e = event(id, Operation::Update, "alice", &[("/spec/replicas", 1, 2)]);
        e.event.name = name.into();
        e.event.object_uid = Some(format!("uid-{name}"));
        store.add(std::slice::from_ref(&e));
        writer.on_recorded(&[e]);
    }

    fn path(name: &str) -> String {
        format!("/apis/histor.dev/v1alpha1/namespaces/prod/changerecords/deployments.apps-{name}")
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_shared_store_the_leader_takes_other_replicas_events_from_it() {
        let (writer, store, server) = writer();
        writer.follow_shared_store();
        // Another replica's event, before this one took over: the previous leader's.
        let other = |id: u64, name: &str| {
            let mut e = event(id, Operation::Update, "bob", &[("/spec/replicas", 1, 2)]);
            e.event.name = name.into();
            e.event.object_uid = Some(format!("uid-{name}"));
            store.add(std::slice::from_ref(&e));
        };
        other(5, "before");
        assert_eq!(
            writer.follow_step().await.expect("follow"),
            0,
            "starts at the newest"
        );
        other(10, "api");
        other(11, "web");
        other(12, "api");
        assert_eq!(writer.follow_step().await.expect("follow"), 2);
        assert_eq!(
            writer.follow_step().await.expect("follow"),
            0,
            "each event once"
        );
        assert_eq!(
            writer
                .flush_due(Instant::now() + Duration::from_secs(5))
                .await,
            2
        );
        // A store this replica alone writes is not followed: its writer reports every batch.
        let (alone, alone_store, alone_server) = self::writer();
        let mut e = event(20, Operation::Update, "bob", &[("/spec/replicas", 1, 2)]);
        e.event.object_uid = Some("uid-x".into());
        alone_store.add(std::slice::from_ref(&e));
        assert_eq!(alone.follow_step().await.expect("follow"), 0);
        drop((writer, alone));
        let mut writes = fixtures::summary(&server.await.expect("server"));
        writes.sort();
        let mut want = Vec::new();
        for name in ["api", "web"] {
            want.push(format!("PATCH {}", path(name)));
            want.push(format!("PATCH {}/status", path(name)));
        }
        assert_eq!(writes, want);
        assert!(fixtures::summary(&alone_server.await.expect("server")).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_keeps_nothing_and_catches_up_from_the_store_once_leading() {
        let (writer, store, server) = writer();
        record(&writer, &store, 1, "old");
        assert_eq!(
            writer
                .flush_due(Instant::now() + Duration::from_secs(5))
                .await,
            1
        );
        writer.set_leading(false);
        assert!(
            writer.state().written.is_empty(),
            "another leader writes now"
        );
        for (id, name) in [(10, "api"), (11, "web"), (12, "api")] {
            record(&writer, &store, id, name);
        }
        {
            let state = writer.state();
            assert!(state.dirty.is_empty() && state.written.is_empty());
            assert_eq!(state.behind, Some(10));
        }
        // Not leading: no catch-up, no writes.
        assert_eq!(writer.catch_up().await.expect("catch up"), 0);
        writer.set_leading(true);
        // Only the objects changed since this replica stopped tracking; `old` is not rewritten.
        assert_eq!(writer.catch_up().await.expect("catch up"), 2);
        assert!(writer.state().scan.is_none());
        assert_eq!(
            writer
                .flush_due(Instant::now() + Duration::from_secs(5))
                .await,
            2
        );
        drop(writer);
        let calls = server.await.expect("server");
        let mut writes = fixtures::summary(&calls);
        writes.sort();
        let mut want = Vec::new();
        for name in ["api", "old", "web"] {
            want.push(format!("PATCH {}", path(name)));
            want.push(format!("PATCH {}/status", path(name)));
        }
        assert_eq!(writes, want);
        let api = calls
            .iter()
            .find(|c| c.path == format!("{}/status", path("api")))
            .expect("api status");
        assert_eq!(api.body["status"]["changeCount"], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_dirty_set_is_bounded_and_the_rest_is_found_again_in_the_store() {
        let (writer, store, server) = bounded_writer(2, MAX_WRITTEN, true);
        for (id, name) in [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")] {
            record(&writer, &store, id, name);
            assert!(writer.state().dirty.len() <= 2);
        }
        assert_eq!(writer.state().behind, Some(3));
        let mut written = 0;
        for round in 1..=4 {
            writer.catch_up().await.expect("catch up");
            assert!(writer.state().dirty.len() <= 2, "round {round}");
            tokio::time::advance(Duration::from_secs(5)).await;
            written += writer.flush_due(Instant::now()).await;
        }
        assert_eq!(written, 5);
        assert!(writer.state().scan.is_none() && writer.state().behind.is_none());
        drop(writer);
        let calls = server.await.expect("server");
        let mut records: Vec<String> = fixtures::summary(&calls)
            .into_iter()
            .filter(|c| c.ends_with("/status"))
            .collect();
        records.sort();
        let want: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| format!("PATCH {}/status", path(n)))
            .collect();
        assert_eq!(records, want);
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_written_is_a_bounded_cache_rebuilt_from_the_store() {
        let (writer, store, server) = bounded_writer(MAX_DIRTY, 2, true);
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            record(&writer, &store, id, name);
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(writer.flush_due(Instant::now()).await, 1);
        }
        // `a`, written longest ago, was forgotten.
        {
            let state = writer.state();
            assert_eq!(state.written.len(), 2);
            assert!(!state.written.keys().any(|k| k.name.ends_with("-a")));
        }
        // A change to `c` (remembered) is a status write; to `a` (forgotten) its spec is applied
        // again from the store first.
        record(&writer, &store, 4, "c");
        record(&writer, &store, 5, "a");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(writer.flush_due(Instant::now()).await, 2);
        assert!(writer.state().written.len() <= 2);
        drop(writer);
        let calls = server.await.expect("server");
        let tail: Vec<String> = fixtures::summary(&calls).split_off(6);
        let mut tail_sorted = tail.clone();
        tail_sorted.sort();
        assert_eq!(
            tail_sorted,
            vec![
                format!("PATCH {}", path("a")),
                format!("PATCH {}/status", path("a")),
                format!("PATCH {}/status", path("c")),
            ],
            "{tail:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn emptied_objects_lose_their_record_even_when_this_process_never_wrote_it() {
        // A follower (or a fresh process) hears of an emptied object it never tracked.
        let (writer, _store, server) = bounded_writer(MAX_DIRTY, MAX_WRITTEN, false);
        writer.on_retention(&RetentionReport {
            removed: 1,
            objects_emptied: vec![crate::store::EmptiedObject {
                resource: "deployments.apps".into(),
                namespace: Some("prod".into()),
                name: "api".into(),
                uid: Some("uid-api".into()),
            }],
            incomplete: false,
        });
        assert_eq!(writer.state().dirty.len(), 1);
        writer.set_leading(true);
        assert_eq!(
            writer
                .flush_due(Instant::now() + Duration::from_secs(5))
                .await,
            1
        );
        drop(writer);
        let calls = server.await.expect("server");
        assert_eq!(fixtures::summary(&calls), vec![format!("DELETE {RECORD}")]);
    }

    const RECORD: &str =
        "/apis/histor.dev/v1alpha1/namespaces/prod/changerecords/deployments.apps-api";

    #[tokio::test(start_paused = true)]
    async fn bursts_coalesce_into_one_write_per_window() {
        let (writer, store, server) = writer();
        let start = Instant::now();
        for i in 1..=10 {
            let e = event(
                i,
                Operation::Update,
                "alice",
                &[("/spec/replicas", 1, i as i64)],
            );
            store.add(std::slice::from_ref(&e));
            writer.on_recorded(&[e]);
            tokio::time::advance(Duration::from_millis(300)).await;
        }
        // inside the window: nothing yet
        assert_eq!(writer.flush_due(start + Duration::from_secs(4)).await, 0);
        // window over: one write (spec once, then status)
        assert_eq!(writer.flush_due(start + Duration::from_secs(5)).await, 1);
        assert_eq!(writer.flush_due(start + Duration::from_secs(6)).await, 0);

        // a change in the next window: one more status write, not before 5 s after the last write
        tokio::time::advance(Duration::from_secs(4)).await; // t ≈ 7 s
        let e = event(11, Operation::Delete, "bob", &[]);
        store.add(std::slice::from_ref(&e));
        writer.on_recorded(&[e]);
        assert_eq!(writer.flush_due(start + Duration::from_secs(9)).await, 0);
        assert_eq!(writer.flush_due(start + Duration::from_secs(12)).await, 1);

        drop(writer);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("PATCH {RECORD}"),
                format!("PATCH {RECORD}/status"),
                format!("PATCH {RECORD}/status"),
            ]
        );
        assert!(calls[0].query.contains("fieldManager=histor"));
        assert_eq!(calls[0].body["spec"]["target"], "deployment.apps/api");
        assert_eq!(
            calls[0].body["spec"]["targetRef"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "prod", "name": "api", "uid": "uid-api"})
        );
        assert_eq!(calls[1].body["kind"], "ChangeRecord");
        assert_eq!(calls[1].body["status"]["changeCount"], 10);
        assert_eq!(
            calls[1].body["status"]["lastChange"]["summary"],
            "spec.replicas: 1 → 10"
        );
        // the deleted object's record stays and shows who deleted it
        assert_eq!(calls[2].body["status"]["changeCount"], 11);
        assert_eq!(calls[2].body["status"]["lastChange"]["operation"], "DELETE");
        assert_eq!(calls[2].body["status"]["lastChange"]["user"], "bob");
    }

    #[tokio::test(start_paused = true)]
    async fn emptied_objects_lose_their_record() {
        let (writer, store, server) = writer();
        let e = event(1, Operation::Create, "alice", &[]);
        store.add(std::slice::from_ref(&e));
        writer.on_recorded(&[e]);
        let start = Instant::now();
        assert_eq!(writer.flush_due(start + Duration::from_secs(5)).await, 1);

        store.clear();
        writer.on_retention(&RetentionReport {
            removed: 1,
            objects_emptied: vec![crate::store::EmptiedObject {
                resource: "deployments.apps".into(),
                namespace: Some("prod".into()),
                name: "api".into(),
                uid: Some("uid-api".into()),
            }],
            incomplete: false,
        });
        // deletion waits for the window since the report, not since the last write
        assert_eq!(writer.flush_due(start + Duration::from_secs(4)).await, 0);
        assert_eq!(writer.flush_due(start + Duration::from_secs(6)).await, 1);
        drop(writer);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("PATCH {RECORD}"),
                format!("PATCH {RECORD}/status"),
                format!("DELETE {RECORD}"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cluster_scoped_targets_go_to_the_operator_namespace() {
        let (writer, store, server) = writer();
        let mut e = event(1, Operation::Create, "alice", &[]);
        e.event.namespace = None;
        e.event.resource = ResourceId {
            group: "".into(),
            version: "v1".into(),
            resource: "namespaces".into(),
            subresource: None,
        };
        e.event.kind = KindId {
            group: "".into(),
            version: "v1".into(),
            kind: "Namespace".into(),
        };
        e.event.name = "team-a".into();
        store.add(std::slice::from_ref(&e));
        writer.on_recorded(&[e]);
        assert_eq!(
            writer
                .flush_due(Instant::now() + Duration::from_secs(5))
                .await,
            1
        );
        drop(writer);
        let calls = server.await.expect("server");
        assert_eq!(
            calls[0].path,
            "/apis/histor.dev/v1alpha1/namespaces/histor-system/changerecords/namespaces-team-a"
        );
        assert_eq!(calls[0].body["spec"]["target"], "namespace/team-a");
    }
}
