//! The contract for Kubernetes Events, [`KubeEventStore`]: one record per Event (by uid) with
//! its count and when each count was seen, so that a series update, a `count` bump, a heartbeat
//! or a relist changes the record instead of adding one, and a restart adds nothing it had. Kept
//! apart from changes, with a retention of its own (they are far more numerous).
//!
//! Each engine implements it next to its events; the in-memory reference is [`mem`]; one
//! conformance suite holds every engine to it.

use crate::Result;
use crate::events::{KubeEvent, Seen};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[cfg(test)]
pub(crate) mod conformance;
pub mod mem;

pub use self::mem::MemKubeEvents;

/// Most sightings a record keeps (the oldest go first): enough to place an Event's
/// occurrences around a change.
pub const MAX_SIGHTINGS: usize = 64;

/// Most records one [`KubeEventStore::regarding`] call returns.
pub const MAX_REGARDING: usize = 10_000;

/// One Event as kept: its newest form and when its count grew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptEvent {
    /// The newest form.
    pub event: KubeEvent,
    /// `(when, count then)`, oldest first: each form that added something (at most
    /// [`MAX_SIGHTINGS`]).
    pub sightings: Vec<Sighting>,
}

/// A count seen at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The form's last-seen time.
    pub at: Timestamp,
    /// Its count.
    pub count: u64,
}

impl KeptEvent {
    /// A record of a first form.
    pub fn first(event: KubeEvent) -> KeptEvent {
        let sighting = Sighting {
            at: event.last_seen,
            count: event.count,
        };
        KeptEvent {
            event,
            sightings: vec![sighting],
        }
    }

    /// Takes a newer form: what it added, and the record updated when it added anything.
    pub fn take(&mut self, event: &KubeEvent) -> Seen {
        let seen = crate::events::observe(Some(crate::events::Known::of(&self.event)), event);
        if matches!(seen, Seen::Again { .. } | Seen::Later) {
            self.sightings.push(Sighting {
                at: event.last_seen,
                count: event.count,
            });
            if self.sightings.len() > MAX_SIGHTINGS {
                self.sightings.remove(0);
            }
            let first_seen = self.event.first_seen.min(event.first_seen);
            self.event = event.clone();
            self.event.first_seen = first_seen;
        }
        seen
    }
}

/// Takes `events` into `records` (kept by uid), in order: what each added. Every engine reads
/// the stored records of a call's uids, runs this, and writes back those that changed.
pub fn take_into(records: &mut HashMap<String, KeptEvent>, events: &[KubeEvent]) -> Vec<Seen> {
    events
        .iter()
        .map(|e| match records.get_mut(&e.uid) {
            Some(kept) => kept.take(e),
            None => {
                records.insert(e.uid.clone(), KeptEvent::first(e.clone()));
                Seen::New { count: e.count }
            }
        })
        .collect()
}

/// An object Events are about: its namespace (empty for cluster-scoped ones), kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Regarding {
    /// Namespace; empty at the cluster scope.
    pub namespace: String,
    /// Kind, as Events name it (`Pod`, `Deployment`).
    pub kind: String,
    /// Name.
    pub name: String,
}

impl Regarding {
    /// What `event` is about.
    pub fn of(event: &KubeEvent) -> Regarding {
        Regarding {
            namespace: event.regarding.namespace.clone().unwrap_or_default(),
            kind: event.regarding.kind.clone(),
            name: event.regarding.name.clone(),
        }
    }
}

/// Durable storage of Kubernetes Events: the contract each engine keeps.
///
/// **One record per Event.** [`record`](KubeEventStore::record) takes forms of Events (from a
/// watch or a relist, in any order) and for each says what it added to the stored record
/// ([`Seen`]): a new Event is stored, a form that grew the count or moved the last-seen time
/// replaces the stored form (keeping the earliest first-seen time and adding a [`Sighting`]),
/// anything else changes nothing. Within one call, forms of one Event count in order.
///
/// **Durable on return**, each call whole or not at all. **Blocking**, like
/// [`EventStore`](super::EventStore)'s methods.
pub trait KubeEventStore: Send + Sync + 'static {
    /// Takes forms of Events; returns, for each, what it added.
    fn record(&self, events: &[KubeEvent]) -> Result<Vec<Seen>>;

    /// The records of Events about any of `objects`, last seen at or after `since`, newest
    /// last-seen first, at most `limit` (capped at [`MAX_REGARDING`]).
    fn regarding(
        &self,
        objects: &[Regarding],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeptEvent>>;

    /// The record of one Event, by uid.
    fn get(&self, uid: &str) -> Result<Option<KeptEvent>>;

    /// Drops up to `limit` records last seen before `before`; returns how many.
    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize>;

    /// Records held.
    fn count(&self) -> Result<u64>;
}
