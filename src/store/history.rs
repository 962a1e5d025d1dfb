//! Object histories as delta chains: how an append extends an object's chain (delta, gap or
//! snapshot), and how any version is rebuilt from the nearest snapshot and the deltas after it,
//! over whatever holds the records ([`RecordSource`]). Pure apart from the source's reads; every
//! engine that keeps deltas shares it, so `state_after`/`state_before` mean the same everywhere.

use super::EventId;
use crate::Result;
use crate::crd::Operation;
use crate::pipeline::{ChangeEvent, FieldChange, diff};
use serde_json::Value;

/// A full snapshot at least every this many events of an object, so rebuilding any version
/// applies at most this many deltas.
pub const SNAPSHOT_EVERY: u64 = 16;

/// What rebuilding needs of one stored event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Link {
    /// The object's previous stored event.
    pub prev: Option<EventId>,
    /// The change between the state after `prev` and the state before this event (an unseen
    /// change), empty when there was none or it could not be kept.
    pub gap: Vec<FieldChange>,
    /// The event's own changes.
    pub changes: Vec<FieldChange>,
    /// The state after this event is not known.
    pub unknown_state: bool,
    /// The state before this event is not the state after `prev`; with an empty `gap` it is
    /// unknown.
    pub chain_break: bool,
}

/// Where the records live: an engine's tables, trees or maps.
pub trait RecordSource {
    /// The full state stored after event `id`, if the event carries a snapshot.
    fn snapshot(&self, id: EventId) -> Result<Option<Value>>;
    /// The event's link, `None` when the event is not stored.
    fn link(&self, id: EventId) -> Result<Option<Link>>;
}

/// The object's state right after event `id`: its snapshot, or the nearest older snapshot of
/// the object with the gaps and deltas in between applied. `None` when unknown.
pub fn state_after(src: &impl RecordSource, id: EventId) -> Result<Option<Value>> {
    if let Some(s) = src.snapshot(id)? {
        return Ok(Some(s));
    }
    let Some(link) = src.link(id)? else {
        return Ok(None);
    };
    if link.unknown_state {
        return Ok(None);
    }
    let mut next = link.prev;
    let mut chain = vec![(link.gap, link.changes)];
    let mut base = None;
    while let Some(prev) = next {
        if let Some(s) = src.snapshot(prev)? {
            base = Some(s);
            break;
        }
        let Some(link) = src.link(prev)? else {
            break;
        };
        if link.unknown_state {
            return Ok(None);
        }
        next = link.prev;
        chain.push((link.gap, link.changes));
    }
    let Some(mut state) = base else {
        return Ok(None);
    };
    for (gap, changes) in chain.iter().rev() {
        apply_changes(&mut state, gap);
        apply_changes(&mut state, changes);
    }
    Ok(Some(state))
}

/// The state before event `id`: the state after the object's previous event with the unseen
/// change applied. `None` for a first event and when the unseen change is not known.
pub fn state_before(src: &impl RecordSource, id: EventId) -> Result<Option<Value>> {
    let Some(link) = src.link(id)? else {
        return Ok(None);
    };
    if link.chain_break && link.gap.is_empty() {
        return Ok(None);
    }
    let Some(prev) = link.prev else {
        return Ok(None);
    };
    let mut state = state_after(src, prev)?;
    if let Some(s) = &mut state {
        apply_changes(s, &link.gap);
    }
    Ok(state)
}

/// Applies the diff op by op; false when any op did not apply (the rest still are).
pub fn apply_changes(state: &mut Value, changes: &[FieldChange]) -> bool {
    let mut ok = true;
    for c in changes {
        let applied = c
            .patch_operation()
            .is_some_and(|op| json_patch::patch(state, &[op]).is_ok());
        ok &= applied;
    }
    ok
}

/// Where an object's chain stands before an append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainPos {
    /// Events since the object's last snapshot.
    pub since_snapshot: u64,
    /// The state after the object's newest event is not known.
    pub broken: bool,
}

/// How an append extends an object's chain: see [`extend`].
#[derive(Debug, PartialEq)]
pub struct Step {
    /// The object's state after the event, when known: cache it, and store it as the event's
    /// snapshot when `snapshot` is set.
    pub state: Option<Value>,
    /// The event carries a full snapshot.
    pub snapshot: bool,
    /// The unseen change before the event, as a delta (empty: none, or none reproduces it).
    pub gap: Vec<FieldChange>,
    /// The pipeline's `before` was not the stored state.
    pub chain_break: bool,
    /// The state after the event is not known.
    pub unknown_state: bool,
    /// The chain's position after the event.
    pub pos: ChainPos,
}

/// Decides how event `event` (whose pipeline `before` is `before`) extends its object's chain,
/// given `previous`, the state after the object's previous stored event when known.
///
/// A full object is kept as its delta when `previous`, the unseen change and the event's
/// changes rebuild it exactly, and as a snapshot on a CREATE, when they do not, and every
/// [`SNAPSHOT_EVERY`] events. A subresource change (or an event without object) is applied to
/// the parent's state; its own object (a Scale, say) is not kept.
pub fn extend(
    pos: ChainPos,
    previous: Option<Value>,
    before: Option<&Value>,
    event: &ChangeEvent,
) -> Step {
    let mut step = Step {
        state: None,
        snapshot: false,
        gap: Vec::new(),
        chain_break: false,
        unknown_state: false,
        pos,
    };
    match (&event.resource.subresource, &event.object) {
        (None, Some(state)) => {
            let (chained, unseen) = chain(previous, before, event, state);
            if let Some(unseen) = unseen {
                step.chain_break = true;
                step.gap = unseen;
            }
            step.snapshot = chained.is_none()
                || event.operation == Operation::Create
                || pos.since_snapshot + 1 >= SNAPSHOT_EVERY;
            step.pos.since_snapshot = if step.snapshot {
                0
            } else {
                pos.since_snapshot + 1
            };
            step.pos.broken = false;
            // The rebuilt state equals the event's object; keeping it spares a copy.
            step.state = Some(chained.unwrap_or_else(|| state.clone()));
        }
        _ => match previous {
            Some(mut state) => {
                if !apply_changes(&mut state, &event.changes) {
                    // Best effort for this event; the next full object re-anchors.
                    step.pos.broken = true;
                }
                if pos.since_snapshot + 1 >= SNAPSHOT_EVERY && !step.pos.broken {
                    step.snapshot = true;
                    step.pos.since_snapshot = 0;
                } else {
                    step.pos.since_snapshot = pos.since_snapshot + 1;
                }
                if !step.pos.broken {
                    step.state = Some(state);
                }
            }
            None => {
                step.unknown_state = true;
                step.pos.broken = true;
                step.pos.since_snapshot = pos.since_snapshot + 1;
            }
        },
    }
    step
}

/// Decides how an event copied from another store (see `EventStore::append_copied`) extends its
/// object's chain so that the copy rebuilds what the source did. `event.object` is the source's
/// state after the event (its `get`), `before` the source's state before it, `previous` the
/// state after the object's previous event here (`has_prior`: there is one).
///
/// A full object chains like a live append ([`extend`]); what a live append cannot say is that
/// the state before is unknown although the object has an earlier event (retention removed the
/// one in between), so a `before` of `None` then breaks the chain. A subresource change keeps
/// its changes as the delta when they rebuild the source's state, and otherwise takes that state
/// as a snapshot (or, when the source did not know it either, stays unknown).
pub fn extend_copied(
    pos: ChainPos,
    previous: Option<Value>,
    has_prior: bool,
    before: Option<&Value>,
    event: &ChangeEvent,
) -> Step {
    if event.resource.subresource.is_none() && event.object.is_some() {
        let mut step = extend(pos, previous, before, event);
        if before.is_none() && has_prior {
            step.chain_break = true;
            step.gap.clear();
        }
        return step;
    }
    let mut step = Step {
        state: None,
        snapshot: false,
        gap: Vec::new(),
        chain_break: false,
        unknown_state: false,
        pos,
    };
    step.pos.since_snapshot = pos.since_snapshot + 1;
    // Where the source's chain stood before the event, relative to ours.
    let start = match (previous, before) {
        (Some(previous), Some(before)) if previous == *before => Some(previous),
        (Some(mut previous), Some(before)) => {
            step.chain_break = true;
            let gap = diff(&previous, before);
            if apply_changes(&mut previous, &gap) && previous == *before {
                step.gap = gap;
                Some(previous)
            } else {
                None
            }
        }
        (_, None) => {
            step.chain_break = has_prior;
            None
        }
        (None, Some(_)) => None,
    };
    let Some(after) = &event.object else {
        step.unknown_state = true;
        step.pos.broken = true;
        return step;
    };
    let rebuilt = start.and_then(|mut s| {
        let _ = apply_changes(&mut s, &event.changes);
        (s == *after).then_some(s)
    });
    if rebuilt.is_none() || step.pos.since_snapshot >= SNAPSHOT_EVERY {
        step.snapshot = true;
        step.pos.since_snapshot = 0;
    }
    step.pos.broken = false;
    step.state = Some(rebuilt.unwrap_or_else(|| after.clone()));
    step
}

/// Continues an object's chain of deltas to `state`, its object after `event`: from `previous`
/// (the state after the object's previous stored event) through `before` (the state the
/// apiserver saw before this change) and the event's changes.
///
/// Returns the rebuilt state when the deltas reproduce `state` exactly (`None`: a snapshot is
/// needed), and, when `before` is not `previous`, the unseen change between them: somebody
/// changed the object while this store was not looking (downtime, a dropped event, another
/// replica). The gap is empty when no delta reproduces it.
fn chain(
    previous: Option<Value>,
    before: Option<&Value>,
    event: &ChangeEvent,
    state: &Value,
) -> (Option<Value>, Option<Vec<FieldChange>>) {
    let (Some(mut current), Some(before)) = (previous, before) else {
        return (None, None);
    };
    let mut unseen = None;
    if current != *before {
        let gap = diff(&current, before);
        if !(apply_changes(&mut current, &gap) && current == *before) {
            return (None, Some(Vec::new()));
        }
        unseen = Some(gap);
    }
    let rebuilt = apply_changes(&mut current, &event.changes) && current == *state;
    (rebuilt.then_some(current), unseen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Actor, ChangeOp, KindId, ResourceId};
    use serde_json::json;
    use std::collections::HashMap;

    /// Records in a map: the simplest source.
    #[derive(Default)]
    struct Map {
        snaps: HashMap<EventId, Value>,
        links: HashMap<EventId, Link>,
    }

    impl RecordSource for Map {
        fn snapshot(&self, id: EventId) -> Result<Option<Value>> {
            Ok(self.snaps.get(&id).cloned())
        }
        fn link(&self, id: EventId) -> Result<Option<Link>> {
            Ok(self.links.get(&id).cloned())
        }
    }

    fn replicas(old: u64, new: u64) -> Vec<FieldChange> {
        vec![FieldChange {
            op: ChangeOp::Replace,
            path: "/spec/replicas".into(),
            old: Some(json!(old)),
            new: Some(json!(new)),
        }]
    }

    fn event(op: Operation, object: Option<Value>, changes: Vec<FieldChange>) -> ChangeEvent {
        ChangeEvent {
            request_uid: "r".into(),
            received_at: jiff::Timestamp::UNIX_EPOCH,
            policies: vec![],
            operation: op,
            user: Actor::default(),
            resource: ResourceId {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                subresource: None,
            },
            kind: KindId::default(),
            namespace: None,
            name: "api".into(),
            object_uid: None,
            changes,
            object,
            redacted: false,
            state: Default::default(),
            commit: None,
            inferred: None,
            audit: None,
        }
    }

    #[test]
    fn versions_rebuild_from_the_nearest_snapshot_through_gaps() {
        let mut src = Map::default();
        src.snaps.insert(1, json!({"spec": {"replicas": 1}}));
        src.links.insert(1, Link::default());
        src.links.insert(
            2,
            Link {
                prev: Some(1),
                changes: replicas(1, 2),
                ..Link::default()
            },
        );
        // 3: somebody set replicas to 5 unseen, then 5 → 6.
        src.links.insert(
            3,
            Link {
                prev: Some(2),
                gap: replicas(2, 5),
                changes: replicas(5, 6),
                chain_break: true,
                ..Link::default()
            },
        );
        let r = |v: Option<Value>| v.map(|v| v["spec"]["replicas"].clone());
        assert_eq!(r(state_after(&src, 3).unwrap()), Some(json!(6)));
        assert_eq!(r(state_before(&src, 3).unwrap()), Some(json!(5)));
        assert_eq!(r(state_before(&src, 2).unwrap()), Some(json!(1)));
        assert_eq!(state_before(&src, 1).unwrap(), None, "first event");
        // An unknown unseen change: the state before is unknown, the state after is not.
        src.links.get_mut(&3).unwrap().gap.clear();
        assert_eq!(state_before(&src, 3).unwrap(), None);
        // A link into unknown state ends the rebuild.
        src.links.get_mut(&2).unwrap().unknown_state = true;
        assert_eq!(state_after(&src, 3).unwrap(), None);
        assert_eq!(state_after(&src, 9).unwrap(), None, "not stored");
    }

    #[test]
    fn appends_keep_deltas_and_snapshot_when_they_must() {
        let v1 = json!({"spec": {"replicas": 1}});
        let v2 = json!({"spec": {"replicas": 2}});
        let create = extend(
            ChainPos::default(),
            None,
            None,
            &event(Operation::Create, Some(v1.clone()), vec![]),
        );
        assert!(create.snapshot && !create.chain_break);
        assert_eq!(create.state.as_ref(), Some(&v1));
        let update = event(Operation::Update, Some(v2.clone()), replicas(1, 2));
        let delta = extend(create.pos, Some(v1.clone()), Some(&v1), &update);
        assert!(!delta.snapshot, "a delta reproduces it");
        assert_eq!(delta.pos.since_snapshot, 1);
        assert_eq!(delta.state.as_ref(), Some(&v2));
        // The stored state was 3 replicas: the 3 → 1 the store never saw becomes a gap.
        let v3 = json!({"spec": {"replicas": 3}});
        let gap = extend(delta.pos, Some(v3), Some(&v1), &update);
        assert!(gap.chain_break && !gap.snapshot);
        assert_eq!(gap.gap, replicas(3, 1));
        // Without a known previous state, a snapshot.
        let lost = extend(delta.pos, None, Some(&v1), &update);
        assert!(lost.snapshot && !lost.chain_break);
        // Every SNAPSHOT_EVERY events, a snapshot anyway.
        let due = ChainPos {
            since_snapshot: SNAPSHOT_EVERY - 1,
            broken: false,
        };
        assert!(extend(due, Some(v1.clone()), Some(&v1), &update).snapshot);
    }

    #[test]
    fn subresource_changes_apply_to_the_parent_or_leave_it_unknown() {
        let mut scale = event(
            Operation::Update,
            Some(json!({"kind": "Scale"})),
            replicas(1, 4),
        );
        scale.resource.subresource = Some("scale".into());
        let parent = json!({"spec": {"replicas": 1}, "kind": "Deployment"});
        let step = extend(ChainPos::default(), Some(parent), None, &scale);
        assert_eq!(step.state.unwrap()["spec"]["replicas"], 4);
        assert!(!step.unknown_state && !step.snapshot);
        let unknown = extend(ChainPos::default(), None, None, &scale);
        assert!(unknown.unknown_state && unknown.pos.broken && unknown.state.is_none());
    }
}
