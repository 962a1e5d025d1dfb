//! [`MemStore`]: the reference [`EventStore`], in memory. It keeps the contract with as little
//! machinery as possible (one lock, ordered maps, full scans) and the same shared parts as every
//! engine ([`history`], [`retention`](super::retention), [`query`], the dedupe window), so the
//! conformance suite can hold a real engine to it and tests of other components run against the
//! real semantics.
//! Nothing is durable: `sync` and `recover` have nothing to do.

use super::history::{self, ChainPos, Link, RecordSource};
use super::outbox::{MemOutbox, OutboxStore};
use super::query::{self, KindAliases, PageBuilder};
use super::recent::Recent;
use super::retention::{CountWalk, MAX_REMOVALS_PER_PASS, Rules};
use super::{
    AppendOutcome, DEDUPE_WINDOW, EmptiedObject, EventId, EventStore, ObjectHead, Page, Query,
    Resolution, RetentionReport, RetentionRule, StoreStats, StoredEvent,
};
use crate::Result;
use crate::crd::Operation;
use crate::pipeline::{AuditInfo, Captured, ChangeEvent, ChangeState};
use jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The in-memory store. Share it behind an `Arc`; every call takes its one lock.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    outbox: Arc<MemOutbox>,
}

/// What names an object: its uid, or without one its resource, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ObjectKey {
    Uid(String),
    Target(String, Option<String>, String),
}

impl ObjectKey {
    fn of(e: &ChangeEvent) -> ObjectKey {
        match &e.object_uid {
            Some(uid) => ObjectKey::Uid(uid.clone()),
            None => ObjectKey::Target(
                e.resource.group_resource(),
                e.namespace.clone(),
                e.name.clone(),
            ),
        }
    }
}

/// One stored event: the event as queries return it, and its place in the object's chain.
struct Entry {
    event: ChangeEvent,
    link: Link,
}

/// An object's newest event and how its chain stands.
#[derive(Clone, Copy)]
struct Head {
    last: EventId,
    count: u64,
    pos: ChainPos,
}

#[derive(Default)]
struct Inner {
    last_id: EventId,
    events: BTreeMap<EventId, Entry>,
    snaps: HashMap<EventId, Value>,
    heads: HashMap<ObjectKey, Head>,
    recent: Recent,
    kinds: KindAliases,
    /// Every policy an event was ever stored under (retention resolves their rules).
    policies: BTreeSet<String>,
    /// [`EventStore::cursor`]s.
    cursors: HashMap<String, String>,
}

impl RecordSource for Inner {
    fn snapshot(&self, id: EventId) -> Result<Option<Value>> {
        Ok(self.snaps.get(&id).cloned())
    }

    fn link(&self, id: EventId) -> Result<Option<Link>> {
        Ok(self.events.get(&id).map(|e| e.link.clone()))
    }
}

/// A captured event's dedupe key as the dedupe window keys it.
fn request_key(captured: &Captured) -> u128 {
    u128::from_be_bytes(captured.dedupe)
}

impl Inner {
    /// Appends one event; `copied`: as [`EventStore::append_copied`] does (under `id`, no
    /// dedupe, its states as the source had them).
    fn append_one(
        &mut self,
        captured: &Captured,
        id: Option<EventId>,
        copied: bool,
    ) -> Result<AppendOutcome> {
        let event = &captured.event;
        let request = request_key(captured);
        if !copied && let Some(id) = self.recent.get(request) {
            return Ok(self.link_policies(id, &event.policies));
        }
        let received_us = event.received_at.as_microsecond().max(0) as u64;
        let id = id.unwrap_or_else(|| received_us.max(self.last_id + 1));
        self.last_id = self.last_id.max(id);

        let object = ObjectKey::of(event);
        let prior = self.heads.get(&object).copied();
        if event.resource.subresource.is_none() {
            self.kinds.learn(&event.resource, &event.kind);
        }
        let previous = match prior {
            Some(h) if !h.pos.broken => history::state_after(self, h.last)?,
            _ => None,
        };
        let pos = prior.map_or(ChainPos::default(), |h| h.pos);
        let before = captured.before.as_ref();
        let step = if copied {
            history::extend_copied(pos, previous, prior.is_some(), before, event)
        } else {
            history::extend(pos, previous, before, event)
        };
        if step.snapshot {
            let snapshot = match (&event.resource.subresource, &event.object) {
                (None, Some(object)) => Some(object.clone()),
                _ => step.state,
            };
            if let Some(s) = snapshot {
                self.snaps.insert(id, s);
            }
        }
        let mut stored = event.clone();
        stored.object = None;
        // Only the identity is kept: `extra` names the credential and pod (see the contract).
        stored.user.extra.clear();
        self.events.insert(
            id,
            Entry {
                event: stored,
                link: Link {
                    prev: prior.map(|h| h.last),
                    gap: step.gap,
                    changes: event.changes.clone(),
                    unknown_state: step.unknown_state,
                    chain_break: step.chain_break,
                },
            },
        );
        self.heads.insert(
            object,
            Head {
                last: id,
                count: prior.map_or(0, |h| h.count) + 1,
                pos: step.pos,
            },
        );
        self.policies.extend(event.policies.iter().cloned());
        self.recent.insert(request, id);
        self.recent
            .expire(self.last_id.saturating_sub(DEDUPE_WINDOW));
        Ok(AppendOutcome::Recorded(id))
    }

    /// The request is already stored as `id`: link the new policies to it, if any.
    fn link_policies(&mut self, id: EventId, policies: &[String]) -> AppendOutcome {
        let Some(entry) = self.events.get_mut(&id) else {
            // Recorded, then removed by retention: nothing to link to.
            return AppendOutcome::Duplicate(id);
        };
        let mut added = false;
        for p in policies {
            if !entry.event.policies.contains(p) {
                entry.event.policies.push(p.clone());
                self.policies.insert(p.clone());
                added = true;
            }
        }
        if added {
            AppendOutcome::Linked(id)
        } else {
            AppendOutcome::Duplicate(id)
        }
    }

    /// An object's event ids, oldest first, along its chain.
    fn chain_of(&self, head: &Head) -> Vec<EventId> {
        let mut ids = Vec::new();
        let mut next = Some(head.last);
        while let Some(id) = next {
            let Some(e) = self.events.get(&id) else { break };
            ids.push(id);
            next = e.link.prev;
        }
        ids.reverse();
        ids
    }

    /// Removes `remove` (events of `object`, chain `ids` oldest first), keeping what stays
    /// rebuildable: the first kept event after removed ones gets a snapshot and a link past them.
    fn prune(
        &mut self,
        object: &ObjectKey,
        ids: &[EventId],
        remove: &BTreeSet<EventId>,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let Some(mut head) = self.heads.get(object).copied() else {
            return Ok(());
        };
        let mut prev_kept = None;
        let mut after_removed = false;
        for &id in ids {
            if remove.contains(&id) {
                after_removed = true;
                continue;
            }
            if after_removed {
                let mut unknown = false;
                if !self.snaps.contains_key(&id) {
                    match history::state_after(self, id)? {
                        Some(state) => {
                            self.snaps.insert(id, state);
                        }
                        None => unknown = true,
                    }
                }
                if let Some(e) = self.events.get_mut(&id) {
                    e.link.unknown_state |= unknown;
                    // What came just before it is gone, and so is what a gap was relative to.
                    e.link.chain_break |= prev_kept.is_some();
                    e.link.prev = prev_kept;
                    e.link.gap.clear();
                }
            }
            after_removed = false;
            prev_kept = Some(id);
        }
        let mut last_removed = None;
        for id in remove {
            self.snaps.remove(id);
            if let Some(e) = self.events.remove(id) {
                report.removed += 1;
                head.count = head.count.saturating_sub(1);
                last_removed = Some(e.event);
            }
        }
        match prev_kept {
            None => {
                self.heads.remove(object);
                if let Some(e) = last_removed {
                    report.objects_emptied.push(EmptiedObject {
                        resource: e.resource.group_resource(),
                        namespace: e.namespace,
                        name: e.name,
                        uid: e.object_uid,
                    });
                }
            }
            Some(newest) => {
                if remove.contains(&head.last) {
                    // The next full object starts a new chain.
                    head.last = newest;
                    head.pos.broken = true;
                }
                self.heads.insert(object.clone(), head);
            }
        }
        Ok(())
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The notification outbox kept beside the events (the same one on every call).
    pub fn outbox(&self) -> Arc<dyn OutboxStore> {
        self.outbox.clone()
    }

    /// Tests: stores `events` as they are, under their own ids (as a store that recorded them
    /// would hold them), so a component's test can seed history without building captures.
    #[cfg(test)]
    pub(crate) fn add(&self, events: &[StoredEvent]) {
        let mut inner = self.inner.lock();
        for e in events {
            let captured = Captured::new(e.event.clone(), None);
            inner
                .append_one(&captured, Some(e.id), false)
                .expect("an in-memory append does not fail");
        }
    }

    /// Tests: forgets every event (ids still never go back).
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        let last_id = inner.last_id;
        *inner = Inner {
            last_id,
            ..Inner::default()
        };
    }
}

impl EventStore for MemStore {
    fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
        let mut inner = self.inner.lock();
        batch
            .iter()
            .map(|c| inner.append_one(c, None, false))
            .collect()
    }

    fn append_copied(&self, batch: &[(EventId, Captured)]) -> Result<()> {
        let mut inner = self.inner.lock();
        super::check_copied_ids(inner.last_id, batch.iter().map(|(id, _)| *id))?;
        for (id, captured) in batch {
            inner.append_one(captured, Some(*id), true)?;
        }
        Ok(())
    }

    fn query(&self, q: &Query) -> Result<Page> {
        let Some((lo, hi)) = query::id_range(q) else {
            return Ok(Page::default());
        };
        let inner = self.inner.lock();
        let kinds = q.kind.as_deref().map(|k| inner.kinds.resolve(k));
        let mut page = PageBuilder::new(q.limit);
        for (&id, entry) in inner.events.range(lo..hi).rev() {
            if !query::matches(q, kinds.as_ref(), &entry.event) {
                continue;
            }
            page.push(StoredEvent {
                id,
                event: entry.event.clone(),
            });
            if page.done() {
                break;
            }
        }
        Ok(page.finish())
    }

    fn get(&self, id: EventId) -> Result<Option<StoredEvent>> {
        let inner = self.inner.lock();
        let Some(entry) = inner.events.get(&id) else {
            return Ok(None);
        };
        let mut event = entry.event.clone();
        event.object = history::state_after(&*inner, id)?;
        Ok(Some(StoredEvent { id, event }))
    }

    fn state_after(&self, id: EventId) -> Result<Option<Value>> {
        history::state_after(&*self.inner.lock(), id)
    }

    fn state_before(&self, id: EventId) -> Result<Option<Value>> {
        history::state_before(&*self.inner.lock(), id)
    }

    fn enforce_retention(
        &self,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport> {
        let mut inner = self.inner.lock();
        let rules = Rules::new(now, inner.policies.iter().cloned(), rule, default);
        let mut budget = MAX_REMOVALS_PER_PASS;
        // Every object, every pass: the reference does not defer.
        let mut objects: Vec<(ObjectKey, Head)> =
            inner.heads.iter().map(|(k, h)| (k.clone(), *h)).collect();
        objects.sort_by_key(|(_, h)| h.last);
        let mut plan = Vec::new();
        for (object, head) in objects {
            let ids = inner.chain_of(&head);
            let mut walk = CountWalk::default();
            let mut due = BTreeSet::new();
            for &id in ids.iter().rev() {
                let policies = &inner.events[&id].event.policies;
                if rules.due(&mut walk, id, policies) && budget > 0 {
                    due.insert(id);
                    budget -= 1;
                }
            }
            if !due.is_empty() {
                plan.push((object, ids, due));
            }
        }
        let mut report = RetentionReport {
            incomplete: budget == 0,
            ..RetentionReport::default()
        };
        for (object, ids, due) in plan {
            inner.prune(&object, &ids, &due, &mut report)?;
        }
        Ok(report)
    }

    fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            events: self.inner.lock().events.len() as u64,
            bytes_on_disk: 0,
        })
    }

    fn resolve(&self, resolutions: &[Resolution]) -> Result<Vec<bool>> {
        let mut inner = self.inner.lock();
        Ok(resolutions
            .iter()
            .map(|r| match inner.events.get_mut(&r.id) {
                Some(e) if e.event.state == ChangeState::Received => {
                    e.event.state = r.state;
                    e.event.commit.clone_from(&r.commit);
                    true
                }
                _ => false,
            })
            .collect())
    }

    fn annotate(&self, notes: &[(EventId, AuditInfo)]) -> Result<Vec<bool>> {
        let mut inner = self.inner.lock();
        Ok(notes
            .iter()
            .map(|(id, note)| match inner.events.get_mut(id) {
                Some(e) if e.event.audit.is_none() => {
                    e.event.audit = Some(note.clone());
                    true
                }
                _ => false,
            })
            .collect())
    }

    fn live_objects(&self, resource: &str) -> Result<Vec<ObjectHead>> {
        let inner = self.inner.lock();
        let mut live: Vec<ObjectHead> = inner
            .heads
            .iter()
            .filter_map(|(key, head)| {
                let ObjectKey::Uid(uid) = key else {
                    return None;
                };
                let e = &inner.events.get(&head.last)?.event;
                (e.operation != Operation::Delete && e.resource.group_resource() == resource).then(
                    || ObjectHead {
                        uid: uid.clone(),
                        namespace: e.namespace.clone(),
                        name: e.name.clone(),
                        last: head.last,
                    },
                )
            })
            .collect();
        live.sort_by_key(|h| h.last);
        Ok(live)
    }

    fn cursor(&self, key: &str) -> Result<Option<String>> {
        Ok(self.inner.lock().cursors.get(key).cloned())
    }

    fn set_cursor(&self, key: &str, value: &str) -> Result<()> {
        self.inner
            .lock()
            .cursors
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's tests ([`conformance`](crate::store::conformance)) on the reference.
    mod contract {
        crate::store::conformance::conformance_suite!(|| ((), super::MemStore::new()));
    }
}
