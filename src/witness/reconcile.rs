//! Reconciliation of the witnesses, pure: changes announced by reviews (`received`) against
//! commits a watch saw. Decides, for each received change, `confirmed` (its state was
//! committed), `notApplied` (not seen within the window while the watch was healthy) or
//! `unconfirmed` (the watch could not tell), and hands back every commit no review announced
//! (`observed`). No I/O and no clock: times come in, verdicts go out.
//!
//! Either side may come first: a commit can reach the watch before its review's event has been
//! handed over, so a commit without a match waits `grace` for one before it counts as
//! unannounced. Memory is bounded: at most [`MAX_PENDING`] received changes and
//! [`MAX_UNMATCHED`] commits are held (beyond, the oldest are let go as `unconfirmed` /
//! left to the store comparison), and nothing holds whole objects longer than `grace`.

use crate::crd::Operation;
use crate::pipeline::{ChangeState, Commit, Witness};
use crate::store::{EventId, Resolution};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Most received changes awaiting a verdict.
pub const MAX_PENDING: usize = 100_000;
/// Most unannounced commits held while they wait for their review.
pub const MAX_UNMATCHED: usize = 2_000;

/// A digest of a cleaned state, to compare without keeping objects. In memory only (it is
/// recomputed from stored objects after a restart), so std's hasher is enough.
pub fn state_digest(state: &Value) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// A change a review announced, awaiting its witness.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The stored event.
    pub id: EventId,
    /// Object uid.
    pub uid: String,
    /// `deployments.apps`: which watch can tell.
    pub resource: String,
    /// The policy whose cleaning the digest used.
    pub policy: String,
    /// The operation.
    pub operation: Operation,
    /// Digest of the cleaned state after the change under `policy` (the parent's state for a
    /// subresource change); `None` when unknown, and then any commit of the object after the
    /// review confirms it.
    pub digest: Option<u64>,
    /// When the review came.
    pub received_at: Timestamp,
}

/// A commit the watch saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// Object uid.
    pub uid: String,
    /// `deployments.apps`.
    pub resource: String,
    /// The committed resourceVersion.
    pub resource_version: String,
    /// The object is gone (a DELETED event).
    pub deleted: bool,
    /// Digest of the committed object cleaned under each policy that covers it.
    pub digests: Vec<(String, u64)>,
    /// When the watch delivered it.
    pub seen_at: Timestamp,
    /// The committed object as the watch gave it (held at most `grace`, to record it as
    /// observed).
    pub object: Value,
    /// From the first list of the resource: an object the store does not know is the baseline,
    /// not a change.
    pub baseline: bool,
}

impl Seen {
    fn digest_for(&self, policy: &str) -> Option<u64> {
        self.digests
            .iter()
            .find(|(p, _)| p == policy)
            .map(|(_, d)| *d)
    }

    fn terminating(&self) -> bool {
        self.object.pointer("/metadata/deletionTimestamp").is_some()
    }

    fn commit(&self) -> Commit {
        Commit {
            resource_version: self.resource_version.clone(),
            seen_at: self.seen_at,
            witness: Witness::Watch,
        }
    }

    fn confirms(&self, r: &Received) -> bool {
        if self.uid != r.uid || self.seen_at < r.received_at {
            return false;
        }
        match r.operation {
            // A deletion is accepted once the object is gone or being deleted (finalizers).
            Operation::Delete => self.deleted || self.terminating(),
            _ if self.deleted => false,
            _ => match r.digest {
                Some(d) => self.digest_for(&r.policy) == Some(d),
                None => true,
            },
        }
    }
}

/// What the reconciler decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Set a received change's state.
    Resolve(Resolution),
    /// A commit no review announced within `grace`: record it as observed, unless the store
    /// already holds that state (a change only noise fields saw, or one recorded before).
    Unannounced(Seen),
}

/// How long to wait, for each side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Windows {
    /// A received change not seen committed within this is `notApplied` (or `unconfirmed`).
    pub confirm: SignedDuration,
    /// A commit waits this long for the review that announced it.
    pub grace: SignedDuration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            confirm: SignedDuration::from_secs(30),
            // A review read back from the store (another replica's, polled each second) may
            // come a second or two after its commit.
            grace: SignedDuration::from_secs(5),
        }
    }
}

/// The reconciler's state.
#[derive(Debug, Default)]
pub struct Reconciler {
    windows: Windows,
    /// Received changes by object uid, oldest first.
    pending: HashMap<String, Vec<Received>>,
    /// Ids in `pending`, with their deadlines, oldest first.
    deadlines: VecDeque<(Timestamp, EventId, String)>,
    pending_len: usize,
    pending_ids: std::collections::HashSet<EventId>,
    /// Per resource: until when its reopened watch may still be replaying.
    settling: HashMap<String, Timestamp>,
    /// Commits awaiting their review, oldest first.
    unmatched: VecDeque<Seen>,
    /// Per resource: since when its watch has seen every commit (`None`: not healthy now).
    healthy_since: HashMap<String, Timestamp>,
}

impl Reconciler {
    /// A reconciler with these windows.
    pub fn new(windows: Windows) -> Self {
        Reconciler {
            windows,
            ..Default::default()
        }
    }

    /// Received changes awaiting a verdict.
    pub fn pending(&self) -> usize {
        self.pending_len
    }

    /// Tells that `resource`'s watch has seen every commit since `since` (`None`: it has
    /// stopped, or relisted and so may have missed intermediate commits).
    pub fn set_health(&mut self, resource: &str, since: Option<Timestamp>) {
        match since {
            Some(t) => {
                self.healthy_since.insert(resource.to_owned(), t);
            }
            None => {
                self.healthy_since.remove(resource);
            }
        }
    }

    /// Tells that `resource`'s watch (re)opened at `at`: what it replays from its resume point
    /// arrives over the next moments, so no change of it is given up on before `at + grace`.
    pub fn resumed(&mut self, resource: &str, at: Timestamp) {
        self.settling
            .insert(resource.to_owned(), at + self.windows.grace);
    }

    /// Whether received change `id` awaits its commit.
    pub fn is_pending(&self, id: EventId) -> bool {
        self.pending_ids.contains(&id)
    }

    /// Whether a received change of object `uid` awaits its commit.
    pub fn has_pending(&self, uid: &str) -> bool {
        self.pending.contains_key(uid)
    }

    /// A review's change, now durable. Confirmed at once when its commit already came.
    pub fn received(&mut self, r: Received) -> Vec<Verdict> {
        if self
            .pending
            .get(&r.uid)
            .is_some_and(|v| v.iter().any(|p| p.id == r.id))
        {
            return Vec::new(); // the same event again (a linked policy)
        }
        if let Some(i) = self.unmatched.iter().rposition(|s| s.confirms(&r)) {
            let seen = self.unmatched.remove(i).expect("index from rposition");
            return vec![confirm(r.id, &seen)];
        }
        let mut out = Vec::new();
        if self.pending_len >= MAX_PENDING {
            out.extend(self.evict_oldest());
        }
        let deadline = r.received_at + self.windows.confirm;
        self.deadlines.push_back((deadline, r.id, r.uid.clone()));
        self.pending_ids.insert(r.id);
        self.pending.entry(r.uid.clone()).or_default().push(r);
        self.pending_len += 1;
        out
    }

    /// A commit the watch saw. Confirms the newest received change it matches (a conflict
    /// retry's last attempt is the one committed); without one it waits `grace`.
    pub fn committed(&mut self, seen: Seen) -> Vec<Verdict> {
        if let Some(list) = self.pending.get_mut(&seen.uid)
            && let Some(i) = list.iter().rposition(|r| seen.confirms(r))
        {
            let r = list.remove(i);
            if list.is_empty() {
                self.pending.remove(&seen.uid);
            }
            self.pending_len -= 1;
            self.pending_ids.remove(&r.id);
            return vec![confirm(r.id, &seen)];
        }
        let mut out = Vec::new();
        if self.unmatched.len() >= MAX_UNMATCHED
            && let Some(old) = self.unmatched.pop_front()
        {
            out.push(Verdict::Unannounced(old));
        }
        self.unmatched.push_back(seen);
        out
    }

    /// Verdicts due at `now`: received changes past the window, commits past `grace`.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Verdict> {
        let mut out = Vec::new();
        while let Some(s) = self.unmatched.front() {
            if s.seen_at + self.windows.grace > now {
                break;
            }
            let s = self.unmatched.pop_front().expect("front exists");
            out.push(Verdict::Unannounced(s));
        }
        while let Some((deadline, id, uid)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let settling = self
                .pending
                .get(uid)
                .and_then(|l| l.iter().find(|r| r.id == *id))
                .and_then(|r| self.settling.get(&r.resource))
                .is_some_and(|until| *until > now);
            if settling {
                break; // the next tick, once the replay is in
            }
            let (_, id, uid) = self.deadlines.pop_front().expect("front exists");
            if let Some(r) = self.take(&uid, id) {
                let state = if self.saw_everything_since(&r.resource, r.received_at) {
                    ChangeState::NotApplied
                } else {
                    ChangeState::Unconfirmed
                };
                out.push(resolve(r.id, state));
            }
        }
        out
    }

    fn saw_everything_since(&self, resource: &str, t: Timestamp) -> bool {
        self.healthy_since.get(resource).is_some_and(|s| *s <= t)
    }

    fn take(&mut self, uid: &str, id: EventId) -> Option<Received> {
        let list = self.pending.get_mut(uid)?;
        let i = list.iter().position(|r| r.id == id)?;
        let r = list.remove(i);
        if list.is_empty() {
            self.pending.remove(uid);
        }
        self.pending_len -= 1;
        self.pending_ids.remove(&r.id);
        Some(r)
    }

    fn evict_oldest(&mut self) -> Option<Verdict> {
        while let Some((_, id, uid)) = self.deadlines.pop_front() {
            if let Some(r) = self.take(&uid, id) {
                return Some(resolve(r.id, ChangeState::Unconfirmed));
            }
        }
        None
    }
}

fn confirm(id: EventId, seen: &Seen) -> Verdict {
    Verdict::Resolve(Resolution {
        id,
        state: ChangeState::Confirmed,
        commit: Some(seen.commit()),
    })
}

fn resolve(id: EventId, state: ChangeState) -> Verdict {
    Verdict::Resolve(Resolution {
        id,
        state,
        commit: None,
    })
}

#[cfg(test)]
mod tests;
